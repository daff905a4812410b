"""The JSON document pushed to the scheduler extender and served at /report (pure).

Contract: DESIGN.md §3 and schemas/node-report.schema.json. The seed extender's fields stay
flat at the top level under their original names; a signal whose probe is down is null and
flagged false in ``availability`` — never reported as 0. Each probe's fields come from its
spec (``payload``, ``pod_payload``, ``availability``); this module names no probe.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from agent.model import NodeReport, ProbeStateKind
from agent.probes import registry
from agent.probes.spec import Field, ProbeSpec


def _r(v: float | None, nd: int = 6) -> float | None:
    return None if v is None else round(float(v), nd)


def _value(f: Field, figures: Mapping[str, Any] | None) -> Any:
    """A payload value from a figure: None when the probe is not up (or the figure unknown)."""
    v = None if figures is None else figures.get(f.figure)
    if v is None:
        return {} if f.mapping else None
    if isinstance(v, Mapping):
        return {k: _r(x * f.scale, f.digits) if f.digits is not None else x for k, x in v.items()}
    if f.digits is None:
        return v
    return _r(v * f.scale, f.digits)


def build_payload(r: NodeReport, specs: Sequence[ProbeSpec] | None = None) -> dict[str, Any]:
    specs = tuple(specs) if specs is not None else registry.specs()
    probes = {
        name: {"state": st.state.value, **({"reason": st.reason} if st.reason else {})}
        for name, st in sorted(r.probes.items())
    }

    def up(name: str) -> bool:
        st = r.probes.get(name)
        return st is not None and st.state is ProbeStateKind.UP

    doc: dict[str, Any] = {
        # the seed extender's fields (names and units fixed; the RTT ones come from tcp_rtt)
        "node_name": r.node_name,
        "cpu_allocatable": _r(r.cpu_allocatable),
        "cpu_used": _r(r.cpu_used),
        "memory_allocatable": r.memory_allocatable,
        "memory_used": r.memory_used,
        "dominant_share": _r(r.dominant_share),
        "per_task_fairness": _r(r.per_task_fairness),
        "timestamp": r.timestamp,
        # freshness
        "schema_version": r.schema_version,
        "agent_version": r.agent_version,
        "agent_instance": r.agent_instance,
        "sequence": r.sequence,
        "window_seconds": r.window_seconds,
        "push_interval_seconds": r.push_interval_seconds,
        # node readers
        "retrans_rate": _r(r.retrans_rate, 8),
        "retrans_segments": r.retrans_segments,
        "sent_segments": r.sent_segments,
        "network_namespaces": r.network_namespaces,
        "cpu_utilization": _r(r.cpu_utilization),
        "node_score": _r(r.score, 3),
        "score_inputs": {k: _r(v) for k, v in r.score_inputs.items()},
    }
    availability = {}
    for spec in specs:
        figs = r.figures.get(spec.name)
        for f in spec.payload:
            doc[f.key] = _value(f, figs.node if figs is not None else None)
        if spec.availability:
            availability[spec.availability] = up(spec.name)
    availability.update({
        "retrans": r.retrans_rate is not None,
        "cpu": r.cpu_utilization is not None,
        "memory": r.memory_used is not None,
    })
    doc["availability"] = availability
    doc["probes"] = probes
    doc["pod_uids"] = sorted(p.uid for p in r.pods)
    pods = []
    for p in r.pods:
        entry: dict[str, Any] = {
            "uid": p.uid,
            "namespace": p.namespace,
            "pod": p.pod,
            "tenant": p.tenant,
            "cpu_used": _r(p.cpu_used),
            "cpu_limit": _r(p.cpu_limit),
            "memory_used": p.memory_used,
            "memory_limit": p.memory_limit,
            "host_network": p.host_network,
            "rtt_slo_ms": _r(p.rtt_slo_ms),
            "qos": p.qos,
            "cpu_throttled_ratio": _r(p.cpu_throttled_ratio),
            "cpu_pressure": _r(p.cpu_pressure),
            "memory_pressure": _r(p.memory_pressure),
            "net_rx_bytes": p.net_rx_bytes,
            "net_tx_bytes": p.net_tx_bytes,
            "net_seconds": _r(p.net_seconds),
        }
        for spec in specs:
            for f in spec.pod_payload:
                entry[f.key] = _value(f, p.figures.get(spec.name))
        pods.append(entry)
    doc["pods"] = pods
    return doc
