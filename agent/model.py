"""Shared value types passed between layers. No IO, no BCC."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from agent.stats.histogram import SlotLayout, diff_counts


class ProbeStateKind(str, enum.Enum):
    UP = "up"
    DOWN = "down"  # tried and failed (compile, attach, permission, read error)
    UNSUPPORTED = "unsupported"  # this kernel lacks what the probe needs


@dataclass(frozen=True)
class ProbeState:
    probe: str
    state: ProbeStateKind
    reason: str = ""
    detail: Mapping[str, str] = field(default_factory=dict)  # e.g. {"reason_source": "format"}


@dataclass(frozen=True)
class Histogram:
    """Cumulative (or windowed) log-linear histogram: ``{slot: count}`` plus the sum of values."""

    layout: SlotLayout
    counts: Mapping[int, int]
    total: int  # sum of the recorded values, in the probe's unit

    @property
    def count(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ProbeSnapshot:
    """What one probe's maps held at one instant (cumulative since the probe started).

    ``hists`` and ``counts`` are keyed by the probe's kernel-side key rendered as text: the
    local address for the TCP probes, the drop reason name for ``skb_drop``, ``""`` for a
    node-wide figure. ``lost`` counts events the kernel could not record (a bounded map was
    full); it is never hidden.

    ``since`` is when what the snapshot holds began to accumulate: for a window, the moment
    of the snapshot it is the difference from; for a cumulative snapshot, the probe's start
    when known. A rate divides by ``seconds``, the time between the two moments its counts
    were read, never by a window measured elsewhere.
    """

    probe: str
    unit: str  # unit of histogram values: "us", "ns"; "" when there are none
    taken_at: float  # time.monotonic()
    hists: Mapping[str, Histogram] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    lost: int = 0
    since: float | None = None  # same clock as taken_at

    @property
    def events(self) -> int:
        return sum(h.count for h in self.hists.values()) + sum(self.counts.values())

    @property
    def seconds(self) -> float | None:
        """Length of the interval the counts cover; None when its start is unknown."""
        if self.since is None or not self.taken_at > self.since:
            return None
        return self.taken_at - self.since


def window(prev: ProbeSnapshot | None, cur: ProbeSnapshot) -> tuple[ProbeSnapshot, bool]:
    """The difference ``cur - prev`` of two cumulative snapshots of one probe.

    Returns ``(window, reset)``; on a reset (a counter went backwards) the window is what
    accumulated since the reset (its start unknown: ``since`` is None). Without ``prev`` the
    window is everything since the start (``cur`` as it is).
    """
    if prev is None:
        return cur, False
    if prev.probe != cur.probe:
        raise ValueError(f"cannot difference snapshots of {prev.probe!r} and {cur.probe!r}")
    reset = False
    hists = {}
    for key, h in cur.hists.items():
        p = prev.hists.get(key)
        if p is None:
            hists[key] = h
            continue
        counts, r = diff_counts(p.counts, h.counts)
        if r or h.total < p.total:
            reset = True
            hists[key] = h
        elif counts:
            hists[key] = Histogram(h.layout, counts, h.total - p.total)
    counts, r = diff_counts(prev.counts, cur.counts)
    reset = reset or r or cur.lost < prev.lost or any(k not in cur.hists for k in prev.hists)
    if reset:
        return replace(cur, since=None), True
    return (
        ProbeSnapshot(cur.probe, cur.unit, cur.taken_at, hists, counts, cur.lost - prev.lost,
                      since=prev.taken_at),
        False,
    )


def merge_histograms(hists) -> Histogram | None:
    """Sum histograms of one layout (e.g. all local addresses -> node). None if there are none."""
    hists = list(hists)
    if not hists:
        return None
    layout = hists[0].layout
    counts: dict[int, int] = {}
    total = 0
    for h in hists:
        if h.layout != layout:
            raise ValueError(f"cannot merge histograms of layouts {layout} and {h.layout}")
        for s, c in h.counts.items():
            counts[s] = counts.get(s, 0) + c
        total += h.total
    return Histogram(layout, counts, total)


@dataclass(frozen=True)
class ProbeFigures:
    """One probe's figures for one report (its spec's ``summarize``): node-wide and per pod
    uid, in base units (seconds, per second, counts; a cumulative Histogram for an exported
    histogram). A figure that cannot be known is None, never 0."""

    node: Mapping[str, Any] = field(default_factory=dict)
    pods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# inputs from the node and pod readers, and the report built from them


@dataclass(frozen=True)
class NodeResources:
    cpu_allocatable: float | None  # cores
    memory_allocatable: int | None  # bytes
    cpu_utilization: float | None  # busy share of all CPUs over the window, 0..1
    cpu_used: float | None  # cores
    memory_used: int | None  # bytes


@dataclass(frozen=True)
class PodSample:
    """One pod as the pod readers see it for a window."""

    uid: str
    namespace: str
    pod: str
    tenant: str
    cpu_used: float | None = None  # cores over the window
    cpu_limit: float | None = None  # cores; None when unlimited
    memory_used: int | None = None  # bytes (working set)
    memory_limit: int | None = None  # bytes; None when unlimited
    addresses: tuple[str, ...] = ()
    host_network: bool = False
    rtt_slo_ms: float | None = None  # from the pod's annotation
    qos: str = ""
    cpu_throttled_ratio: float | None = None  # throttled / elapsed CFS periods in the window
    cpu_pressure: float | None = None  # cpu.pressure "some": share of the window stalled
    memory_pressure: float | None = None  # memory.pressure "some"
    net_rx_bytes: int | None = None  # received over the window, the pod's network namespace
    net_tx_bytes: int | None = None  # sent over the window; None: host network or unknown
    net_seconds: float | None = None  # time between the two reads the byte counts come from
    # cumulative counters as the kernel keeps them (Prometheus counters; reset when the pod's
    # cgroup or network namespace is made anew)
    cpu_seconds_total: float | None = None  # cpu.stat usage_usec
    cpu_throttled_seconds_total: float | None = None  # cpu.stat throttled_usec
    net_rx_bytes_total: int | None = None  # the pod's network namespace, all interfaces
    net_tx_bytes_total: int | None = None
    # cgroup ids of the pod's cgroup and its containers' (agent.cgroups CgroupSample.cgroup_ids)
    cgroup_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PodReport:
    uid: str
    namespace: str
    pod: str
    tenant: str
    cpu_used: float | None
    cpu_limit: float | None
    memory_used: int | None
    memory_limit: int | None
    host_network: bool
    rtt_slo_ms: float
    # probe -> that probe's figures for this pod (only probes that are up and attribute to
    # pods; a host-network pod gets no address-attributed figures)
    figures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    qos: str = ""
    cpu_throttled_ratio: float | None = None
    cpu_pressure: float | None = None
    memory_pressure: float | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    net_seconds: float | None = None
    cpu_seconds_total: float | None = None
    cpu_throttled_seconds_total: float | None = None
    net_rx_bytes_total: int | None = None
    net_tx_bytes_total: int | None = None


@dataclass(frozen=True)
class NodeReport:
    schema_version: str
    agent_version: str
    agent_instance: str  # random per process start: a restart is told from a late report
    push_interval_seconds: float
    node_name: str
    sequence: int
    timestamp: str  # RFC 3339, UTC
    window_seconds: float
    probes: Mapping[str, ProbeState]
    # probe -> its figures (only probes that are up); what each holds is in its spec
    figures: Mapping[str, ProbeFigures]
    # network (node readers)
    retrans_rate: float | None  # RetransSegs / (OutSegs + RetransSegs), SNMP, all namespaces
    sent_segments: int | None
    retrans_segments: int | None
    network_namespaces: int | None  # namespaces whose SNMP counters were summed
    # resources
    cpu_utilization: float | None
    cpu_allocatable: float | None
    cpu_used: float | None
    memory_allocatable: int | None
    memory_used: int | None
    dominant_share: float | None
    per_task_fairness: float
    score: float | None
    score_inputs: Mapping[str, float | None]
    pods: tuple[PodReport, ...]
    # cumulative state for counters and histograms, and the agent's own health
    cumulative: Mapping[str, ProbeSnapshot]
    program_stats: Mapping[str, Mapping[str, tuple[int, int]]]
    sample_duration_seconds: float

    def figure(self, probe: str, name: str) -> Any:
        """A node figure of a probe; None when the probe is not up or has no such figure."""
        f = self.figures.get(probe)
        return None if f is None else f.node.get(name)
