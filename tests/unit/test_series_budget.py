"""The /metrics series budget: 110 pods with every per-pod signal filled in fit in 3,000 series
with the defaults; a cap, an overflow count and a switch bound the rest; the new per-pod counters
pass promtool's lint."""

import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from agent.config import Config
from agent.export.prometheus import ExportOptions, ReportCollector
from agent.model import PodSample, ProbeSnapshot, ProbeState, ProbeStateKind
from agent.probes import connect, runqlat
from agent.probes.spec import cgroup_key
from agent.report import build_report
from tests.unit import report_fixture as F

SEED_MS_NAMES = {"ebpf_rtt_p50_milliseconds", "ebpf_rtt_p99_milliseconds",
                 "ebpf_runqlat_p95_milliseconds"}


def full_report(n_pods: int, config: Config = Config()):
    """A node with ``n_pods`` pods, each with every per-pod figure the agent can export, and
    every node-level series (all five probes, drop reasons, the three histograms)."""
    pods, rtt, conn, tally = [], {}, [], []
    runq = {"": F.hist(F.RQ, [(2_000_000, 100)])}
    for i in range(n_pods):
        addr = f"10.1.{i // 250}.{i % 250 + 1}"
        pods.append(PodSample(
            f"uid-{i}", f"ns-{i % 7}", f"pod-{i}", f"ns-{i % 7}", cpu_used=0.01 * i,
            cpu_limit=1.0, memory_used=(i + 1) << 20, memory_limit=1 << 30, addresses=(addr,),
            rtt_slo_ms=50.0, qos="burstable", cpu_throttled_ratio=0.1, cpu_pressure=0.01,
            memory_pressure=0.02, net_rx_bytes=1000, net_tx_bytes=2000, net_seconds=10.0,
            cpu_seconds_total=100.0 + i, cpu_throttled_seconds_total=1.5, net_rx_bytes_total=10**6,
            net_tx_bytes_total=2 * 10**6, cgroup_ids=(5000 + 2 * i, 5001 + 2 * i)))
        rtt[addr] = F.hist(F.RTT, [(800 + i, 50), (200_000, 1)])
        # connect latency over the whole exported range, failures and passive opens
        conn += [(addr, F.RTT.slot_of(v), 1, v) for v in (40, 900 + i, 30_000, 3_000_000, 40_000_000)]
        tally.append((addr, 1, 2))
        runq[cgroup_key(5001 + 2 * i)] = F.hist(runqlat.CGROUP_LAYOUT, [(20_000 + i, 30)])
    win = F.windows()
    win["runqlat"] = ProbeSnapshot("runqlat", "ns", 10.0, since=0.0, hists=runq)
    win["tcp_rtt"] = ProbeSnapshot("tcp_rtt", "us", 0.0, hists=rtt)
    win["tcp_retrans"] = ProbeSnapshot("tcp_retrans", "", 0.0, counts={a: 2 for a in rtt})
    win["connect"] = connect.decode(F.RTT, conn, tally, lost=0, taken_at=0.0)
    cum = dict(win)
    states = {**F.states(), "connect": ProbeState("connect", ProbeStateKind.UP)}
    return build_report(
        config, node_name="node-1", sequence=3, timestamp="2026-12-01T00:00:00.000000Z",
        window_seconds=10.0, states=states, windows=win, cumulative=cum,
        tcp_segments=(10_000, 20), resources=F.RESOURCES, pods=pods,
        program_stats={"runqlat": {"tracepoint__sched__sched_switch": (5_000_000, 40_000)}})


def exposition(r, options=ExportOptions()) -> str:
    reg = CollectorRegistry()
    reg.register(ReportCollector(lambda: r, options=options))
    return generate_latest(reg).decode()


def series(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def pod_series(text: str) -> list[str]:
    return [ln for ln in series(text) if ln.startswith("ebpf_pod_")]


def test_110_pods_with_every_signal_fit_the_budget_with_the_defaults():
    text = exposition(full_report(110), ExportOptions.from_config(Config()))
    n = len(series(text))
    per_pod = len(pod_series(text)) / 110
    print(f"\n110 pods, every signal: {n} series ({per_pod:.0f} per pod, "
          f"{n - len(pod_series(text))} node-level)")
    assert {ln.split("{")[0] for ln in pod_series(text) if 'pod="pod-7"' in ln} >= {
        "ebpf_pod_rtt_p99_seconds", "ebpf_pod_cpu_seconds_total",
        "ebpf_pod_cpu_throttled_seconds_total", "ebpf_pod_network_receive_bytes_total",
        "ebpf_pod_network_transmit_bytes_total", "ebpf_pod_tcp_retransmit_skbs_total",
        "ebpf_pod_cpu_throttled_ratio", "ebpf_pod_memory_pressure_ratio",
        "ebpf_pod_tcp_connect_p99_seconds", "ebpf_pod_tcp_connect_failures_total",
        "ebpf_pod_runqlat_p50_seconds", "ebpf_pod_runqlat_p99_seconds",
        "ebpf_pod_runqlat_wait_seconds_per_second"}
    assert any(ln.startswith("ebpf_tcp_connect_seconds_bucket") for ln in series(text))
    assert "ebpf_pods_not_exported 0.0" in text
    # 2,118 with four probes; connect added 306 (its node histogram and two per-pod series),
    # per-pod runqlat 330 (three gauges per pod): 2,754, so the budget went from 2,500 to 3,000
    assert n <= 3000


def test_pods_beyond_the_cap_are_counted_and_the_busiest_kept():
    r = full_report(150)
    text = exposition(r, ExportOptions(max_pods=110))
    pods = {ln.split('pod="')[1].split('"')[0] for ln in pod_series(text)}
    assert len(pods) == 110
    assert "pod-149" in pods and "pod-0" not in pods  # cpu_used grows with the index
    assert "ebpf_pods 150.0" in text and "ebpf_pods_not_exported 40.0" in text
    assert len(r.pods) == 150  # the report (and so the push) keeps every pod


def test_per_pod_series_can_be_switched_off():
    text = exposition(full_report(20), ExportOptions(pod_series=False))
    assert pod_series(text) == []
    assert "ebpf_pods_not_exported 20.0" in text
    assert "ebpf_node_score" in text


def test_exported_histogram_resolution_is_a_setting():
    r = full_report(1)

    def buckets(per_octave):
        return sum(1 for ln in series(exposition(r, ExportOptions(buckets_per_octave=per_octave)))
                   if ln.startswith("ebpf_tcp_rtt_seconds_bucket"))

    four, two, one = buckets(4), buckets(2), buckets(1)
    assert four > two > one and two - 1 == pytest.approx((four - 1) / 2, abs=1)


def test_budget_keys_are_validated():
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="export_buckets_per_octave"):
        Config(export_buckets_per_octave=3)
    with pytest.raises(ConfigError, match="max_exported_pods"):
        Config(max_exported_pods=-1)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with make dev-setup")
def test_promtool_lint_is_clean_but_for_the_seed_names():
    text = exposition(full_report(3))
    chk = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                         capture_output=True)
    findings = {ln.split()[0] for ln in (chk.stdout + chk.stderr).splitlines() if ln.strip()}
    assert findings <= SEED_MS_NAMES, chk.stdout + chk.stderr
