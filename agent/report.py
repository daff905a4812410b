"""Turn one window of probe snapshots and reader values into an immutable NodeReport.

Pure: no IO. Each probe's window becomes figures through its own spec (``summarize``); this
module knows no probe by name. Figures are in base units (seconds, per second); the exporters
convert once, to the contract's unit (the payload's milliseconds, the seed's ``*_ms`` gauges).
"""

from __future__ import annotations

import uuid
from typing import Mapping, Sequence

from agent import __version__
from agent.config import Config
from agent.model import (NodeReport, NodeResources, PodReport, PodSample, ProbeFigures,
                         ProbeSnapshot, ProbeState, ProbeStateKind)
from agent.probes import registry
from agent.probes.spec import Context, PodView, ProbeSpec
from agent.stats.scoring import dominant_share, jain_index, node_score, normalize

# MAJOR.MINOR. Within a major version fields are only ever added (never removed, renamed or
# changed in meaning): an extender accepts every report of its major version and ignores the
# fields it does not know. 1.1 added agent_instance and push_interval_seconds; 1.2 the connect
# probe's fields (connect_*, connects, passive_opens, node and per pod).
SCHEMA_VERSION = "1.2"
AGENT_INSTANCE = uuid.uuid4().hex  # this process's instance id


def _up(states: Mapping[str, ProbeState], name: str) -> bool:
    st = states.get(name)
    return st is not None and st.state is ProbeStateKind.UP


def probe_figures(specs: Sequence[ProbeSpec], states: Mapping[str, ProbeState],
                  windows: Mapping[str, ProbeSnapshot], cumulative: Mapping[str, ProbeSnapshot],
                  ctx: Context) -> dict[str, ProbeFigures]:
    """Every up probe's figures from its window (and its cumulative snapshot)."""
    out = {}
    for spec in specs:
        win = windows.get(spec.name)
        if spec.summarize is None or win is None or not _up(states, spec.name):
            continue
        out[spec.name] = spec.summarize(win, cumulative.get(spec.name, win), ctx)
    return out


def score_inputs(config: Config, specs: Sequence[ProbeSpec], figures: Mapping[str, ProbeFigures],
                 readers: Mapping[str, float | None]) -> dict[str, float | None]:
    """Every signal normalised to 0..1 by its bounds; None when its source is unavailable.
    Ordered as the configured weights (the seed's order), then the rest."""
    raw: dict[str, float | None] = dict(readers)
    for spec in specs:
        f = figures.get(spec.name)
        for sig in spec.signals:
            v = None if f is None else f.node.get(sig.figure)
            raw[sig.name] = None if v is None else v * sig.scale
    order = [k for k in config.score.weights if k in raw] + [k for k in raw if k not in config.score.weights]
    out = {}
    for k in order:
        b = registry.signal_bounds(config, k)
        out[k] = None if b is None else normalize(raw[k], *b)
    return out


def snmp_retrans(tcp_segments: tuple[int, int] | None) -> tuple[float | None, int | None, int | None]:
    """(rate, sent, retransmitted) from the kernel's SNMP counters over the window (a reader,
    not a probe). Linux's OutSegs excludes retransmitted segments, so the sent are both."""
    if tcp_segments is None:
        return None, None, None
    sent, retrans = tcp_segments
    total = sent + retrans
    return (retrans / total if total else 0.0), sent, retrans


def pod_report(p: PodSample, rtt_slo_ms: float, figures: Mapping[str, ProbeFigures]) -> PodReport:
    """One pod: what its readers measured, and each up probe's figures for it."""
    return PodReport(
        uid=p.uid, namespace=p.namespace, pod=p.pod, tenant=p.tenant,
        cpu_used=p.cpu_used, cpu_limit=p.cpu_limit, memory_used=p.memory_used,
        memory_limit=p.memory_limit, host_network=p.host_network, rtt_slo_ms=rtt_slo_ms,
        figures={name: f.pods[p.uid] for name, f in figures.items() if p.uid in f.pods},
        addresses=tuple(p.addresses),
        qos=p.qos, cpu_throttled_ratio=p.cpu_throttled_ratio, cpu_pressure=p.cpu_pressure,
        memory_pressure=p.memory_pressure, net_rx_bytes=p.net_rx_bytes,
        net_tx_bytes=p.net_tx_bytes, net_seconds=p.net_seconds,
        cpu_seconds_total=p.cpu_seconds_total,
        cpu_throttled_seconds_total=p.cpu_throttled_seconds_total,
        net_rx_bytes_total=p.net_rx_bytes_total, net_tx_bytes_total=p.net_tx_bytes_total,
    )


def tenant_fairness(pods: Sequence[PodSample], resources: NodeResources) -> float:
    """Jain's index over the tenants' dominant shares of the node."""
    cpu: dict[str, float] = {}
    mem: dict[str, float] = {}
    for p in pods:
        cpu[p.tenant] = cpu.get(p.tenant, 0.0) + (p.cpu_used or 0.0)
        mem[p.tenant] = mem.get(p.tenant, 0.0) + (p.memory_used or 0.0)
    shares = [dominant_share(cpu.get(t), resources.cpu_allocatable, mem.get(t),
                             resources.memory_allocatable) or 0.0
              for t in sorted(set(cpu) | set(mem))]
    return jain_index(shares)


def build_report(
    config: Config,
    *,
    node_name: str,
    sequence: int,
    timestamp: str,
    window_seconds: float,
    states: Mapping[str, ProbeState],
    windows: Mapping[str, ProbeSnapshot],
    cumulative: Mapping[str, ProbeSnapshot],
    tcp_segments: tuple[int, int] | None,
    resources: NodeResources,
    network_namespaces: int | None = None,
    pods: Sequence[PodSample],
    program_stats: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
    sample_duration_seconds: float = 0.0,
    agent_instance: str = "",
    specs: Sequence[ProbeSpec] | None = None,
) -> NodeReport:
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
    specs = tuple(specs) if specs is not None else registry.specs()
    ordered = sorted(pods, key=lambda p: (p.namespace, p.pod, p.uid))
    slo = {p.uid: p.rtt_slo_ms if p.rtt_slo_ms is not None else config.default_rtt_slo_ms
           for p in ordered}
    ctx = Context(pods=tuple(PodView(p.uid, tuple(p.addresses), p.host_network, slo[p.uid],
                                     tuple(p.cgroup_ids))
                             for p in ordered),
                  default_rtt_slo_ms=config.default_rtt_slo_ms, window_seconds=window_seconds,
                  score=config.score)
    figures = probe_figures(specs, states, windows, cumulative, ctx)

    retrans_rate, sent, retrans_segs = snmp_retrans(tcp_segments)
    pod_reports = tuple(pod_report(p, slo[p.uid], figures) for p in ordered)
    fairness = tenant_fairness(ordered, resources)
    inputs = score_inputs(config, specs, figures, {"retrans_rate": retrans_rate,
                                                    "cpu_util": resources.cpu_utilization})
    return NodeReport(
        schema_version=SCHEMA_VERSION,
        agent_instance=agent_instance or AGENT_INSTANCE,
        push_interval_seconds=config.push_interval,
        agent_version=__version__,
        node_name=node_name,
        sequence=sequence,
        timestamp=timestamp,
        window_seconds=round(window_seconds, 3),
        probes=dict(states),
        figures=figures,
        retrans_rate=retrans_rate,
        sent_segments=sent,
        retrans_segments=retrans_segs,
        network_namespaces=network_namespaces,
        cpu_utilization=resources.cpu_utilization,
        cpu_allocatable=resources.cpu_allocatable,
        cpu_used=resources.cpu_used,
        memory_allocatable=resources.memory_allocatable,
        memory_used=resources.memory_used,
        dominant_share=dominant_share(resources.cpu_used, resources.cpu_allocatable,
                                      resources.memory_used, resources.memory_allocatable),
        per_task_fairness=fairness,
        score=node_score(inputs, config.score.weights),
        score_inputs=inputs,
        pods=pod_reports,
        cumulative=dict(cumulative),
        program_stats=dict(program_stats or {}),
        sample_duration_seconds=sample_duration_seconds,
    )
