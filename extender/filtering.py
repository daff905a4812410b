"""The opt-in bandwidth headroom filter (pure), DepCon2's idea (seed 002).

Only what the scheduler cannot know itself: NodeResourcesFit already handles requested extended
resources, so this filter compares *measured* headroom — the node's advertised capacity minus
the throughput its last report measured — with the bandwidth the pod asks for in an annotation
(``ebpf-edge-agent.io/bandwidth``: bit/s, a plain number or a quantity such as ``50M``,
``1G``, ``100Mi``). No pod informer: the annotation comes with the Pod in ExtenderArgs.

- A pod without the annotation: every node passes (filtering is opt-in).
- A node without a fresh report passes (seed 004's fallback: missing metrics never remove a
  node). A node whose capacity is unknown passes too.
- Capacity: the Node's ``status.allocatable`` (else ``capacity``) of ``capacity_resource``
  (``example.com/SLO``, what the agent's ``advertise_capacity`` publishes, bit/s) when the
  scheduler sends full Nodes; else ``default_node_capacity_bps`` when set.
- Measured throughput: the busier direction, max(sum of pods' received, sum of pods' sent
  bytes) x 8 / ``window_seconds`` (links are full duplex). Host-network traffic is not
  attributed to pods by the agent and is not counted.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

_SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "m": Decimal("0.001")}
_QTY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]{0,2})\s*$")


def parse_quantity(text: str) -> float:
    """A Kubernetes-style quantity ("50M", "1.5G", "100Mi", "2e9", "1000") -> a number."""
    m = _QTY.match(text if isinstance(text, str) else "")
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"{text!r} is not a quantity (e.g. 50M, 1G, 100Mi or a plain number)")
    try:
        v = Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a quantity") from None
    return float(v)


def measured_bps(summary: Mapping[str, Any]) -> float:
    """The busier direction in bit/s, from a stored summary (extender.store.summarize)."""
    w = summary.get("window_seconds")
    if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
        return 0.0
    return max(summary.get("pod_net_rx_bytes", 0), summary.get("pod_net_tx_bytes", 0)) * 8 / w


def headroom_check(request_bps: float, capacity_bps: float | None,
                   report: Mapping[str, Any] | None) -> tuple[bool, str]:
    """(passes, why) for one node."""
    if report is None:
        return True, "no fresh report: passes (fallback)"
    if capacity_bps is None or capacity_bps <= 0:
        return True, "capacity unknown: passes"
    used = measured_bps(report)
    free = capacity_bps - used
    if free >= request_bps:
        return True, f"headroom {free:.0f} bit/s >= requested {request_bps:.0f}"
    return False, (f"network headroom {max(free, 0):.0f} bit/s (capacity {capacity_bps:.0f} - "
                   f"measured {used:.0f}) is below the pod's requested {request_bps:.0f} bit/s")
