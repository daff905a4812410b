"""The real agent: Prometheus scrapes it in the network lab, the extender gets the same numbers,
a misbehaving extender never disturbs it, SIGTERM stops it within 2 s."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from agent.probes import registry
from tests.e2e.agent_proc import Agent, Prometheus, http_get
from tests.extender_stub import ExtenderStub

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("the agent loads BPF: needs root", allow_module_level=True)

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" /
                     "node-report.schema.json").read_text())
SEED_GAUGES = ["ebpf_rtt_p50_milliseconds", "ebpf_rtt_p99_milliseconds", "ebpf_tcp_retrans_rate",
               "ebpf_drop_rate", "ebpf_drop_reason_rate", "ebpf_runqlat_p95_milliseconds",
               "ebpf_cpu_utilization"]
PORT = 5201


def scrape_value(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def consecutive_reports(prom) -> tuple[str, str]:
    """Timestamps of two scrapes whose reports are consecutive (sequence N-1, then N) and whose
    window N had RTT samples: the newest such pair Prometheus holds."""
    (series,) = prom.query("ebpf_report_sequence[60s]")
    samples = [(ts, int(float(v))) for ts, v in series["values"]]
    first_at: dict[int, float] = {}
    for ts, seq in samples:
        first_at.setdefault(seq, ts)
    for seq in sorted(first_at, reverse=True):
        if seq - 1 in first_at:
            ta, tb = f"{first_at[seq - 1]:.3f}", f"{first_at[seq]:.3f}"
            p50 = prom.query(f"ebpf_rtt_p50_milliseconds @ {tb}")
            if p50 and float(p50[0]["value"][1]) > 0:
                return ta, tb
    raise AssertionError(f"no two scrapes of consecutive reports with RTT samples: {samples}")


def test_prometheus_scrapes_and_extender_gets_the_same_numbers():
    from tests.bpf.netlab import NetLab

    ext = ExtenderStub()
    with NetLab() as lab:
        lab.a.limit_rate("5mbit")
        lab.b.drop_randomly(PORT, 0.03)
        lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT), "60")
        time.sleep(0.5)
        lab.spawn(lab.a, "send", lab.b.ip4, str(PORT), "50")
        with Agent("--sample-interval", "2", "--extender-url", ext.url, "--push-interval", "2",
                   "--push-timeout", "1") as agent, Prometheus(f"127.0.0.1:{agent.port}") as prom:
            agent.wait_ready()
            prom.wait_for("ebpf_rtt_p50_milliseconds > 0")
            time.sleep(8)  # a few windows with RTT in Prometheus
            for name in SEED_GAUGES:
                assert prom.query(name), f"Prometheus has no {name}"
            assert prom.query('ebpf_drop_reason_rate{reason="NETFILTER_DROP"} > 0')
            assert prom.query('ebpf_probe_up == 1') and len(prom.query('ebpf_probe_up == 1')) == len(registry.names())
            # PromQL over the exported histogram agrees with the agent's own percentile for the
            # same window: two scrapes that carry reports N-1 and N; the difference of their
            # cumulative buckets is exactly window N (the exported buckets are 4 per power of
            # two, so within one coarse bucket of the agent's finer estimate)
            ta, tb = consecutive_reports(prom)
            promql = float(prom.query(
                f"histogram_quantile(0.5, ebpf_tcp_rtt_seconds_bucket @ {tb} "
                f"- ebpf_tcp_rtt_seconds_bucket @ {ta})")[0]["value"][1])
            agent_p50 = float(prom.query(f"ebpf_rtt_p50_milliseconds @ {tb}")[0]["value"][1])
            print(f"window ending at {tb}: PromQL p50 {promql * 1000:.2f} ms, agent {agent_p50:.2f} ms")
            assert abs(promql * 1000 - agent_p50) / agent_p50 < 0.25, (promql * 1000, agent_p50)
            rq = float(prom.query(
                "histogram_quantile(0.95, rate(ebpf_runqlat_seconds_bucket[10s]))")[0]["value"][1])
            assert rq > 0
            # one window, two outputs: the scrape and the push carry the same numbers
            for _ in range(20):
                rep = agent.report()
                _, text = http_get(agent.base + "/metrics")
                if scrape_value(text, "ebpf_report_sequence") == rep["sequence"]:
                    break
            else:
                pytest.fail("could not catch a scrape and a report of the same window")
            assert scrape_value(text, "ebpf_rtt_p50_milliseconds") == pytest.approx(rep["rtt_p50_ms"], abs=1e-6)
            assert scrape_value(text, "ebpf_tcp_retrans_rate") == pytest.approx(rep["retrans_rate"], abs=1e-8)
            assert scrape_value(text, "ebpf_runqlat_p95_milliseconds") == pytest.approx(rep["runqlat_p95_ms"], abs=1e-6)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                    p["sequence"] >= rep["sequence"] for p in ext.received):
                time.sleep(0.2)
            pushed = {p["sequence"]: p for p in ext.received}
            if rep["sequence"] in pushed:
                assert pushed[rep["sequence"]] == rep
            for p in ext.received:
                jsonschema.validate(p, SCHEMA)
            assert any(p["rtt_p50_ms"] for p in ext.received)
            # promtool's own lint of the exposition: the only findings allowed are the three
            # millisecond gauges whose names the seed design fixed
            promtool = shutil.which("promtool")
            chk = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                                 capture_output=True)
            findings = {ln.split()[0] for ln in (chk.stdout + chk.stderr).splitlines() if ln.strip()}
            assert findings <= {"ebpf_rtt_p50_milliseconds", "ebpf_rtt_p99_milliseconds",
                                "ebpf_runqlat_p95_milliseconds"}, chk.stdout + chk.stderr
    ext.close()


def test_misbehaving_extender_never_disturbs_the_agent():
    ext = ExtenderStub()
    with Agent("--sample-interval", "0.5", "--extender-url", ext.url, "--push-interval", "1",
               "--push-timeout", "0.5") as agent:
        agent.wait_ready()
        deadline = time.monotonic() + 10
        while not ext.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ext.received, agent.output()
        rss0 = agent.rss_bytes()
        worst = 0.0
        for mode in ("down", "error", "garbage", "hang"):
            if mode == "down":
                ext.down()
            else:
                ext.up()
            ext.mode = mode
            t_end = time.monotonic() + 3
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                code, _ = http_get(agent.base + "/metrics")
                worst = max(worst, time.monotonic() - t0)
                assert code == 200
                assert agent.proc.poll() is None, agent.output()
                time.sleep(0.2)
        _, text = http_get(agent.base + "/metrics")
        for cause in ("connection", "http_5xx", "invalid_response", "timeout"):
            v = re.search(rf'ebpf_push_failures_total{{[^}}]*cause="{cause}"[^}}]*}} (\S+)', text)
            assert v and float(v.group(1)) >= 1, (cause, text[-3000:])
        before = agent.report()["sequence"]
        n = len(ext.received)
        ext.mode = "ok"
        deadline = time.monotonic() + 10
        while len(ext.received) == n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ext.received) > n, "no push after recovery"
        first = ext.received[n]
        assert first["sequence"] >= before, (first["sequence"], before)
        for p in ext.received:
            jsonschema.validate(p, SCHEMA)
        rss1 = agent.rss_bytes()
        assert worst < 1.0, f"/metrics took {worst:.2f}s while the extender misbehaved"
        assert rss1 - rss0 < 20 * 1024 * 1024, (rss0, rss1)
        took = agent.stop()
        assert agent.proc.returncode == 0 and took < 2.0, (took, agent.output())
        assert "probes detached" in agent.output()
    ext.close()


def test_a_restarted_agent_is_a_new_instance_counting_from_one():
    """What lets an extender tell a restart from a late report: a new agent_instance whose
    sequence starts again at 1 (the old instance's higher numbers must not win)."""
    ext = ExtenderStub()
    try:
        runs = []
        for _ in range(2):
            n = len(ext.received)
            with Agent("--kubernetes", "off", "--probes", "runqlat", "--sample-interval", "0.5",
                       "--extender-url", ext.url, "--push-interval", "1", "--push-timeout", "0.5") as agent:
                agent.wait_ready()
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and len(ext.received) < n + 3:
                    time.sleep(0.1)
            runs.append(ext.received[n:])
        first, second = runs
        assert len(first) >= 3 and second, (len(first), len(second))
        ids = [{p["agent_instance"] for p in run} for run in runs]
        assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]
        assert second[0]["sequence"] <= 2 < first[-1]["sequence"]  # counting anew
        for run in runs:
            seqs = [p["sequence"] for p in run]
            assert seqs == sorted(seqs) and all(p["push_interval_seconds"] == 1.0 for p in run)
            for p in run:
                jsonschema.validate(p, SCHEMA)
    finally:
        ext.close()
