"""The JSON document pushed to the scheduler extender and served at /report (pure).

Contract: DESIGN.md §3 and schemas/node-report.schema.json. The seed extender's fields stay
flat at the top level under their original names; a signal whose probe is down is null and
flagged false in ``availability`` — never reported as 0.
"""

from __future__ import annotations

from typing import Any

from agent.model import NodeReport, ProbeStateKind


def _r(v: float | None, nd: int = 6) -> float | None:
    return None if v is None else round(float(v), nd)


def build_payload(r: NodeReport) -> dict[str, Any]:
    probes = {
        name: {"state": st.state.value, **({"reason": st.reason} if st.reason else {})}
        for name, st in sorted(r.probes.items())
    }

    def up(name: str) -> bool:
        st = r.probes.get(name)
        return st is not None and st.state is ProbeStateKind.UP

    return {
        # the seed extender's fields (names and units fixed)
        "node_name": r.node_name,
        "cpu_allocatable": _r(r.cpu_allocatable),
        "cpu_used": _r(r.cpu_used),
        "memory_allocatable": r.memory_allocatable,
        "memory_used": r.memory_used,
        "tail_latency_p99": _r(r.tail_latency_p99),
        "slo_violation_rate": _r(r.slo_violation_rate),
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
        # network and scheduling
        "rtt_p50_ms": _r(r.rtt_p50_ms),
        "rtt_p90_ms": _r(r.rtt_p90_ms),
        "rtt_p99_ms": _r(r.rtt_p99_ms),
        "rtt_samples": r.rtt_samples,
        "retrans_rate": _r(r.retrans_rate, 8),
        "retrans_segments": r.retrans_segments,
        "sent_segments": r.sent_segments,
        "retrans_events": r.retrans_events,
        "network_namespaces": r.network_namespaces,
        "drop_rate": _r(r.drop_rate),
        "drop_rate_weighted": _r(r.drop_rate_weighted),
        "drop_reason_rates": {k: _r(v) for k, v in r.drop_reason_rates.items()},
        "runqlat_p50_ms": _r(r.runqlat_p50_ms),
        "runqlat_p95_ms": _r(r.runqlat_p95_ms),
        "runqlat_p99_ms": _r(r.runqlat_p99_ms),
        "cpu_utilization": _r(r.cpu_utilization),
        "node_score": _r(r.score, 3),
        "score_inputs": {k: _r(v) for k, v in r.score_inputs.items()},
        "availability": {
            "rtt": up("tcp_rtt"),
            "retrans": r.retrans_rate is not None,
            "retrans_events": up("tcp_retrans"),
            "drops": up("skb_drop"),
            "runqlat": up("runqlat"),
            "cpu": r.cpu_utilization is not None,
            "memory": r.memory_used is not None,
        },
        "probes": probes,
        "pod_uids": sorted(p.uid for p in r.pods),
        "pods": [
            {
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
                "rtt_samples": p.rtt_samples,
                "rtt_p50_ms": _r(p.rtt_p50_ms),
                "rtt_p99_ms": _r(p.rtt_p99_ms),
                "slo_violation_rate": _r(p.slo_violation_rate),
                "retrans_events": p.retrans_events,
                "qos": p.qos,
                "cpu_throttled_ratio": _r(p.cpu_throttled_ratio),
                "cpu_pressure": _r(p.cpu_pressure),
                "memory_pressure": _r(p.memory_pressure),
                "net_rx_bytes": p.net_rx_bytes,
                "net_tx_bytes": p.net_tx_bytes,
            }
            for p in r.pods
        ],
    }
