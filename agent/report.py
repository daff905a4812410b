"""Turn one window of probe snapshots and reader values into an immutable NodeReport.

Pure: no IO. Units are converted here, once (µs/ns -> ms for the seed gauges).
"""

from __future__ import annotations

import uuid

from typing import Mapping, Sequence

from agent import __version__
from agent.config import Config
from agent.model import (Histogram, NodeReport, NodeResources, PodReport, PodSample,
                         ProbeSnapshot, ProbeState, ProbeStateKind, merge_histograms)
from agent.stats.histogram import percentile
from agent.stats.scoring import (count_above, dominant_share, jain_index, node_score, normalize,
                                 weighted_drop_rate)

# MAJOR.MINOR. Within a major version fields are only ever added (never removed, renamed or
# changed in meaning): an extender accepts every report of its major version and ignores the
# fields it does not know. 1.1 added agent_instance and push_interval_seconds.
SCHEMA_VERSION = "1.1"
AGENT_INSTANCE = uuid.uuid4().hex  # this process's instance id
_TO_MS = {"us": 1e-3, "ns": 1e-6}


def _pct_ms(h: Histogram | None, q: float, unit: str) -> float | None:
    if h is None or h.count == 0:
        return None
    v = percentile(h.layout, h.counts, q)
    return None if v is None else round(v * _TO_MS[unit], 6)


def _up(states: Mapping[str, ProbeState], name: str) -> bool:
    st = states.get(name)
    return st is not None and st.state is ProbeStateKind.UP


def pod_addresses(pods: Sequence[PodSample]) -> dict[str, str]:
    """address -> pod uid, for pods with their own network (hostNetwork pods share the node's
    addresses: their traffic is the host's, never guessed to be theirs)."""
    out = {}
    for p in pods:
        if p.host_network:
            continue
        for a in p.addresses:
            out[a] = p.uid
    return out


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
) -> NodeReport:
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
    score_cfg = config.score
    addr_pod = pod_addresses(pods)

    # --- RTT --------------------------------------------------------------------------------
    rtt_win = windows.get("tcp_rtt") if _up(states, "tcp_rtt") else None
    rtt_node = merge_histograms(rtt_win.hists.values()) if rtt_win else None
    pod_rtt: dict[str, Histogram] = {}
    if rtt_win:
        by_pod: dict[str, list[Histogram]] = {}
        for addr, h in rtt_win.hists.items():
            uid = addr_pod.get(addr)
            if uid:
                by_pod.setdefault(uid, []).append(h)
        pod_rtt = {uid: merge_histograms(hs) for uid, hs in by_pod.items()}

    # --- retransmits ----------------------------------------------------------------------------
    retrans_rate = sent = retrans_segs = None
    if tcp_segments is not None:
        # Linux's OutSegs excludes retransmitted segments, so the segments sent are both
        sent, retrans_segs = tcp_segments
        total = sent + retrans_segs
        retrans_rate = retrans_segs / total if total else 0.0
    rt_win = windows.get("tcp_retrans") if _up(states, "tcp_retrans") else None
    pod_retrans: dict[str, int] = {}
    if rt_win:
        for addr, n in rt_win.counts.items():
            uid = addr_pod.get(addr)
            if uid:
                pod_retrans[uid] = pod_retrans.get(uid, 0) + n

    # --- drops ----------------------------------------------------------------------------------
    drop_win = windows.get("skb_drop") if _up(states, "skb_drop") else None
    reason_rates: dict[str, float] = {}
    drop_rate = weighted = None
    if drop_win is not None:
        # divided by the time between the two reads the counts are the difference of
        drop_seconds = drop_win.seconds or window_seconds
        reason_rates = {r: n / drop_seconds for r, n in sorted(drop_win.counts.items())}
        drop_rate = sum(drop_win.counts.values()) / drop_seconds
        weighted = weighted_drop_rate(reason_rates, score_cfg.drop_reason_weights,
                                      score_cfg.default_drop_weight)

    # --- run queue ------------------------------------------------------------------------------
    rq_win = windows.get("runqlat") if _up(states, "runqlat") else None
    rq = merge_histograms(rq_win.hists.values()) if rq_win else None

    # --- pods, SLO, fairness --------------------------------------------------------------------
    pod_reports = []
    slo_above = 0.0
    slo_total = 0
    tenant_cpu: dict[str, float] = {}
    tenant_mem: dict[str, float] = {}
    for p in sorted(pods, key=lambda p: (p.namespace, p.pod, p.uid)):
        slo = p.rtt_slo_ms if p.rtt_slo_ms is not None else config.default_rtt_slo_ms
        h = pod_rtt.get(p.uid)
        samples = viol = p50 = p99 = None
        if rtt_win is not None and not p.host_network:
            samples = h.count if h else 0
            if h is not None and h.count:
                above = count_above(h.layout, h.counts, slo * 1000.0)  # µs
                viol = above / h.count
                slo_above += above
                slo_total += h.count
                p50, p99 = _pct_ms(h, 0.5, "us"), _pct_ms(h, 0.99, "us")
        pod_reports.append(PodReport(
            uid=p.uid, namespace=p.namespace, pod=p.pod, tenant=p.tenant,
            cpu_used=p.cpu_used, cpu_limit=p.cpu_limit, memory_used=p.memory_used,
            memory_limit=p.memory_limit, host_network=p.host_network, rtt_slo_ms=slo,
            rtt_samples=samples, rtt_p50_ms=p50, rtt_p99_ms=p99, slo_violation_rate=viol,
            retrans_events=(pod_retrans.get(p.uid, 0) if rt_win is not None and not p.host_network
                            else None),
            addresses=tuple(p.addresses),
            qos=p.qos, cpu_throttled_ratio=p.cpu_throttled_ratio, cpu_pressure=p.cpu_pressure,
            memory_pressure=p.memory_pressure, net_rx_bytes=p.net_rx_bytes,
            net_tx_bytes=p.net_tx_bytes, net_seconds=p.net_seconds,
            cpu_seconds_total=p.cpu_seconds_total,
            cpu_throttled_seconds_total=p.cpu_throttled_seconds_total,
            net_rx_bytes_total=p.net_rx_bytes_total, net_tx_bytes_total=p.net_tx_bytes_total,
        ))
        tenant_cpu[p.tenant] = tenant_cpu.get(p.tenant, 0.0) + (p.cpu_used or 0.0)
        tenant_mem[p.tenant] = tenant_mem.get(p.tenant, 0.0) + (p.memory_used or 0.0)
    # node-level SLO share: every RTT sample, pods' against their own SLO, the rest (host and
    # unattributed addresses) against the default SLO
    slo_rate = None
    if rtt_node is not None and rtt_node.count:
        pod_counts = sum(h.count for h in pod_rtt.values())
        rest = {}
        for addr, h in rtt_win.hists.items():
            if addr not in addr_pod:
                for s, c in h.counts.items():
                    rest[s] = rest.get(s, 0) + c
        slo_above += count_above(rtt_node.layout, rest, config.default_rtt_slo_ms * 1000.0)
        slo_total = pod_counts + sum(rest.values())
        slo_rate = slo_above / slo_total if slo_total else None
    tenant_shares = []
    for t in sorted(set(tenant_cpu) | set(tenant_mem)):
        s = dominant_share(tenant_cpu.get(t), resources.cpu_allocatable,
                           tenant_mem.get(t), resources.memory_allocatable)
        tenant_shares.append(s or 0.0)
    fairness = jain_index(tenant_shares)

    rtt_p99 = _pct_ms(rtt_node, 0.99, "us")
    rq_p95 = _pct_ms(rq, 0.95, "ns")
    b = score_cfg.bounds
    inputs = {
        "rtt_p99": normalize(rtt_p99, *b["rtt_p99"]),
        "retrans_rate": normalize(retrans_rate, *b["retrans_rate"]),
        "drop_rate": normalize(weighted, *b["drop_rate"]),
        "runqlat_p95": normalize(rq_p95, *b["runqlat_p95"]),
        "cpu_util": normalize(resources.cpu_utilization, *b["cpu_util"]),
    }
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
        rtt_p50_ms=_pct_ms(rtt_node, 0.5, "us"),
        rtt_p90_ms=_pct_ms(rtt_node, 0.9, "us"),
        rtt_p99_ms=rtt_p99,
        rtt_samples=rtt_node.count if rtt_node else (0 if rtt_win is not None else None),
        retrans_rate=retrans_rate,
        sent_segments=sent,
        retrans_segments=retrans_segs,
        retrans_events=sum(rt_win.counts.values()) if rt_win is not None else None,
        network_namespaces=network_namespaces,
        drop_rate=drop_rate,
        drop_reason_rates=reason_rates,
        drop_rate_weighted=weighted,
        runqlat_p50_ms=_pct_ms(rq, 0.5, "ns"),
        runqlat_p95_ms=rq_p95,
        runqlat_p99_ms=_pct_ms(rq, 0.99, "ns"),
        cpu_utilization=resources.cpu_utilization,
        cpu_allocatable=resources.cpu_allocatable,
        cpu_used=resources.cpu_used,
        memory_allocatable=resources.memory_allocatable,
        memory_used=resources.memory_used,
        dominant_share=dominant_share(resources.cpu_used, resources.cpu_allocatable,
                                      resources.memory_used, resources.memory_allocatable),
        per_task_fairness=fairness,
        slo_violation_rate=slo_rate,
        score=node_score(inputs, score_cfg.weights),
        score_inputs=inputs,
        pods=tuple(pod_reports),
        cumulative=dict(cumulative),
        program_stats=dict(program_stats or {}),
        sample_duration_seconds=sample_duration_seconds,
    )
