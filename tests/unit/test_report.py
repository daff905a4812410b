"""The report, its payload and its /metrics rendering from a hand-built window."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from agent.export.payload import build_payload
from agent.export.prometheus import ReportCollector, render_report
from agent.model import ProbeSnapshot
from tests.unit import report_fixture as F

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "node-report.schema.json").read_text())
GOLDEN = ROOT / "tests" / "fixtures" / "golden"


def test_node_figures_by_hand():
    r = F.report()
    assert r.retrans_rate == pytest.approx(50 / 10_050)  # OutSegs excludes retransmissions
    drops = r.figures["skb_drop"].node
    assert drops["drop_rate"] == pytest.approx(6.0)  # 60 drops / 10 s
    assert drops["drop_reason_rates"] == {"NO_SOCKET": 5.0, "QDISC_DROP": 1.0}
    assert drops["drop_rate_weighted"] == pytest.approx(1.0)  # NO_SOCKET weighs 0, QDISC_DROP 1
    assert r.dominant_share == pytest.approx(0.5)
    # tenants' dominant shares: team-a 0.125, kube-system 0.0625, team-b 0.25
    assert r.per_task_fairness == pytest.approx(0.4375 ** 2 / (3 * (0.125**2 + 0.0625**2 + 0.25**2)))
    # pod a: 10 of 100 samples above its 100 ms SLO; host traffic: 0 of 100 above the default
    rtt = r.figures["tcp_rtt"].node
    assert rtt["slo_violation_rate"] == pytest.approx(10 / 200)
    assert 0.290 <= rtt["rtt_p99"] <= 0.310 and rtt["rtt_samples"] == 200  # seconds
    assert 1.99e-3 <= r.figure("runqlat", "runqlat_p95") <= 2.07e-3
    assert r.figure("tcp_retrans", "retrans_events") == 4


def test_score_by_hand():
    r = F.report()
    inp = r.score_inputs
    assert inp["rtt_p99"] == 1.0 and inp["cpu_util"] == 0.0
    assert inp["retrans_rate"] == pytest.approx(50 / 10_050 / 0.05)
    assert inp["drop_rate"] == pytest.approx(1.0 / 200)
    rq = (r.figure("runqlat", "runqlat_p95") * 1000 - 0.1) / 19.9  # bounds in ms
    assert r.score == pytest.approx(100 * (1 - (0.3 + 0.2 * inp["retrans_rate"] + 0.001 + 0.15 * rq)),
                                    abs=1e-3)


def test_pods_attribution_by_address_and_host_network_not_guessed():
    pods = {p.uid: p for p in F.report().pods}
    a, b, c = pods["uid-a"], pods["uid-b"], pods["uid-c"]
    rtt, rt = a.figures["tcp_rtt"], a.figures["tcp_retrans"]
    assert rtt["rtt_samples"] == 100 and rtt["slo_violation_rate"] == pytest.approx(0.1)
    assert rt["retrans_events"] == 3 and 1.9e-3 < rtt["rtt_p50"] < 2.1e-3
    assert b.host_network and "tcp_rtt" not in b.figures and "tcp_retrans" not in b.figures
    assert c.figures["tcp_rtt"]["rtt_samples"] == 0 and c.figures["tcp_rtt"]["rtt_p50"] is None
    assert c.figures["tcp_retrans"]["retrans_events"] == 0
    assert c.rtt_slo_ms == 100.0  # default
    p = {e["uid"]: e for e in build_payload(F.report())["pods"]}
    assert p["uid-b"]["rtt_samples"] is None and p["uid-b"]["retrans_events"] is None
    assert p["uid-a"]["rtt_samples"] == 100 and 1.9 < p["uid-a"]["rtt_p50_ms"] < 2.1


def test_down_probe_signals_are_absent_not_zero():
    r = F.report(st=F.states(tcp_rtt="start failed: x", skb_drop="read failed: y"))
    assert "tcp_rtt" not in r.figures and "skb_drop" not in r.figures
    assert r.figure("tcp_rtt", "rtt_p99") is None and r.figure("skb_drop", "drop_rate") is None
    assert r.score_inputs["rtt_p99"] is None and r.score_inputs["drop_rate"] is None
    assert r.score is not None  # the others still count
    p = build_payload(r)
    assert p["tail_latency_p99"] is None and p["drop_rate"] is None
    assert p["slo_violation_rate"] is None and p["rtt_samples"] is None
    assert p["availability"]["rtt"] is False and p["availability"]["drops"] is False
    assert p["probes"]["tcp_rtt"] == {"state": "down", "reason": "start failed: x"}
    jsonschema.validate(p, SCHEMA)
    text = "".join(generate_latest(_registry(r)).decode())
    assert "ebpf_rtt_p99_milliseconds " not in text and "ebpf_drop_rate " not in text
    assert 'ebpf_probe_up{probe="tcp_rtt"} 0.0' in text


def test_payload_validates_and_keeps_seed_names_flat():
    p = build_payload(F.report())
    jsonschema.validate(p, SCHEMA)
    for k in ("node_name", "cpu_allocatable", "cpu_used", "memory_allocatable", "memory_used",
              "tail_latency_p99", "slo_violation_rate", "dominant_share", "per_task_fairness",
              "timestamp"):
        assert k in p
    assert p["pod_uids"] == ["uid-a", "uid-b", "uid-c"]
    assert p["sequence"] == 7 and p["window_seconds"] == 10.0


def test_schema_rejects_a_broken_payload():
    p = build_payload(F.report())
    p["dominant_share"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(p, SCHEMA)
    p = build_payload(F.report())
    del p["node_name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(p, SCHEMA)


def _registry(r):
    reg = CollectorRegistry()
    reg.register(ReportCollector(lambda: r))
    return reg


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"


def test_golden_metrics_and_payload():
    r = F.report()
    _golden("metrics.txt", generate_latest(_registry(r)).decode())
    _golden("payload.json", json.dumps(build_payload(r), indent=1, sort_keys=True) + "\n")


def test_metrics_contents():
    text = generate_latest(_registry(F.report())).decode()
    for line in (
        "ebpf_tcp_retrans_rate 0.004975124378109453",
        'ebpf_drop_reason_rate{reason="NO_SOCKET"} 5.0',
        'ebpf_skb_drops_total{reason="NO_SOCKET"} 120.0',
        'ebpf_pod_tcp_retransmit_skbs_total{namespace="team-a",pod="web-0"} 7.0',
        'ebpf_probe_program_runs_total{probe="runqlat",program="tracepoint__sched__sched_switch"} 40000.0',
        'ebpf_tcp_rtt_seconds_count 200.0',
    ):
        assert line in text, line
    # host-network pods get no network series of their own
    assert 'pod="proxy"' not in text.split("ebpf_pod_cpu_used_cores")[0]
    assert 'ebpf_pod_cpu_used_cores{namespace="kube-system",pod="proxy"} 0.25' in text


def test_histogram_buckets_are_cumulative_and_end_with_count():
    fams = {m.name: m for m in render_report(F.report())}
    h = fams["ebpf_tcp_rtt_seconds"]
    buckets = [(s.labels["le"], s.value) for s in h.samples if s.name.endswith("_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1] == ("+Inf", 200)
    les = [float(le) for le, _ in buckets[:-1]]
    assert les == sorted(les) and len(les) == 4 * 23 + 1
    # 100 samples of 500 us: all below the 0.000512 s bound, none below 0.000448
    assert dict(buckets)["0.000512"] == 100 and dict(buckets)["0.000448"] == 0


def test_a_raising_report_never_fails_the_scrape():
    def boom():
        raise RuntimeError("broken")

    reg = CollectorRegistry()
    reg.register(ReportCollector(boom))
    text = generate_latest(reg).decode()
    assert "ebpf_agent_render_errors_total 1.0" in text


def test_pods_that_are_gone_stop_appearing():
    r1 = F.report()
    r2 = F.report(pods=F.PODS[:1])
    assert 'pod="batch-0"' in generate_latest(_registry(r1)).decode()
    assert 'pod="batch-0"' not in generate_latest(_registry(r2)).decode()


def test_window_must_be_positive():
    from agent.report import build_report
    from agent.config import Config

    with pytest.raises(ValueError, match="window_seconds"):
        build_report(Config(), node_name="n", sequence=1, timestamp="t", window_seconds=0,
                     states={}, windows={}, cumulative={}, tcp_segments=None,
                     resources=F.RESOURCES, pods=[])
