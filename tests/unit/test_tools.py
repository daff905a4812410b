"""The operator tools' pure parts (issue 23): status verdicts, record rows and gaps, measure's
statistics and states, top's table. No kernel, no network."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from agent.cgroups.model import CgroupSample, CpuStat
from agent.config import Config
from agent.export.extender import Pusher, push_metrics
from agent.tools import client, measure, record, status, top

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "golden" / "payload.json").read_text())
CGROUPS = ROOT / "tests" / "fixtures" / "cgroup"
NOW = 1_800_000_000.0


def report(**changes):
    r = copy.deepcopy(GOLDEN)
    r.update(changes)
    return r


# --- client ------------------------------------------------------------------------------------

def test_base_url_reaches_a_wildcard_listen_address_on_loopback():
    assert client.base_url("0.0.0.0:9810") == "http://127.0.0.1:9810"
    assert client.base_url("[::]:9810") == "http://[::1]:9810"
    assert client.base_url("10.1.2.3:80") == "http://10.1.2.3:80"
    assert client.normalize_url("127.0.0.1:9810/") == "http://127.0.0.1:9810"
    with pytest.raises(ValueError, match="ftp"):
        client.normalize_url("ftp://x")
    with pytest.raises(ValueError, match="not JSON"):
        client.parse_report(b"<html>", "/report")


# --- status ------------------------------------------------------------------------------------

class _Collector:
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return iter(self.fams)

    def describe(self):
        return []


def metrics_text(pushers=(), rss=50 << 20, started=NOW - 3600):
    """/metrics as the agent renders it: the real push families, and the process series."""
    from prometheus_client.core import GaugeMetricFamily

    fams = list(push_metrics(list(pushers))) if pushers else []
    g = GaugeMetricFamily("process_resident_memory_bytes", "rss")
    g.add_metric([], rss)
    s = GaugeMetricFamily("process_start_time_seconds", "start")
    s.add_metric([], started)
    reg = CollectorRegistry()
    reg.register(_Collector(fams + [g, s]))
    return client.parse_metrics(generate_latest(reg).decode())


def pusher(last_success=None, delivered=0, failures=None):
    p = Pusher("http://extender:8888", 5.0, interval=30.0)
    p.last_success = last_success
    p.delivered = delivered
    p.attempts = delivered + sum((failures or {}).values())
    for k, v in (failures or {}).items():
        p.failures[k] = v
    return p


READY = (200, "ready: newest report 2.5s old\nreport sequence=7\n")


def test_status_healthy_shows_probes_age_pods_and_rss():
    st = status.assess("http://x", report(), READY, metrics_text(), NOW)
    assert st.healthy
    assert st.report_age_seconds == 2.5
    assert st.pods_covered == 3
    assert st.rss_bytes == 50 << 20
    assert st.push == []
    text = status.render(st)
    assert "HEALTHY" in text and "push       not configured" in text and "RSS 50.0 MiB" in text


def test_status_a_down_probe_is_unhealthy_with_its_reason_and_unsupported_is_not():
    probes = {"tcp_rtt": {"state": "down", "reason": "attach failed: EPERM"},
              "runqlat": {"state": "unsupported", "reason": "no sched_wakeup"},
              "skb_drop": {"state": "up"}}
    st = status.assess("http://x", report(probes=probes), READY, metrics_text(), NOW)
    assert not st.healthy
    bad = [c for c in st.checks if not c.ok]
    assert [c.name for c in bad] == ["probe tcp_rtt"]
    assert "EPERM" in bad[0].detail
    assert "UNHEALTHY: probe tcp_rtt" in status.render(st)
    st2 = status.assess("http://x", report(probes={"runqlat": probes["runqlat"]}), READY, metrics_text(), NOW)
    assert st2.healthy and "no sched_wakeup" in status.render(st2)


def test_status_stale_report_or_none_is_unhealthy():
    st = status.assess("http://x", report(), (503, "not ready: newest report 95.0s old, stale after 30s\n"),
                       metrics_text(), NOW)
    assert not st.healthy and st.report_age_seconds == 95.0
    st = status.assess("http://x", None, (503, "not ready: no full window collected yet\n"), metrics_text(), NOW)
    assert not st.healthy and any(c.name == "report" and not c.ok for c in st.checks)


def test_status_push_fresh_stale_and_first_delivery_pending():
    ok = status.assess("http://x", report(), READY, metrics_text([pusher(NOW - 40, 5)]), NOW)
    assert ok.healthy and ok.push[0].endpoint == "http://extender:8888/metrics/report"
    assert ok.push[0].last_success_age == pytest.approx(40)
    stale = status.assess("http://x", report(), READY,
                          metrics_text([pusher(NOW - 91, 5, {"timeout": 4})]), NOW)  # > 3 x 30 s
    assert not stale.healthy
    assert "timeout=4" in stale.push[0].detail
    young = status.assess("http://x", report(), READY, metrics_text([pusher()], started=NOW - 20), NOW)
    assert young.healthy and "no delivery yet" in young.push[0].detail
    never = status.assess("http://x", report(), READY, metrics_text([pusher()], started=NOW - 500), NOW)
    assert not never.healthy and "never delivered" in never.push[0].detail


def test_status_unreachable_exits_2():
    lines = []
    assert status.run("http://127.0.0.1:1", timeout=1, out=lines.append) == status.EXIT_UNREACHABLE
    assert lines[0].startswith("UNREACHABLE: http://127.0.0.1:1/report")


# --- record ------------------------------------------------------------------------------------

def test_record_rows_one_per_pod_with_rates_from_the_window_seconds():
    pods = copy.deepcopy(GOLDEN["pods"])
    pods[1].update(net_tx_bytes=5000, net_rx_bytes=1000, net_seconds=2.0, cpu_throttled_ratio=0.25)
    rows = record.rows_for(report(pods=pods))
    assert [r["pod"] for r in rows] == ["proxy", "web-0", "batch-0"]
    web = rows[1]
    assert web["tx_bytes_per_second"] == 2500 and web["rx_bytes_per_second"] == 500
    assert web["cpu_quota_cores"] == 1.0 and web["rtt_p99_ms"] == pytest.approx(302.2848)
    assert rows[0]["tx_bytes_per_second"] is None  # host network: unknown, never 0
    text = record.render(rows)
    parsed = list(csv.reader(text.splitlines()))
    assert all(len(r) == len(record.COLUMNS) for r in parsed)
    assert parsed[0][record.COLUMNS.index("tx_bytes_per_second")] == ""


def test_record_gaps_are_marked():
    p = record.Position("aaa", 7)
    assert record.gap_for(p, {"agent_instance": "aaa", "sequence": 8}) is None
    assert "2 windows not recorded" in record.gap_for(p, {"agent_instance": "aaa", "sequence": 10})
    assert "new agent instance bbb" in record.gap_for(p, {"agent_instance": "bbb", "sequence": 1})
    assert not record.is_new(p, {"agent_instance": "aaa", "sequence": 7})
    block = record.block_for(p, report(agent_instance="aaa", sequence=9))
    first = next(csv.reader([block.splitlines()[0]]))
    assert first[0] == "gap" and "1 window not recorded" in first[-1]
    assert len(block.splitlines()) == 1 + len(GOLDEN["pods"])


def _fake_fetch(reports):
    it = iter(reports)

    def fetch(url, timeout):
        try:
            return next(it)
        except StopIteration:
            raise client.AgentUnreachable("gone") from None
    return fetch


def test_record_run_appends_continues_after_restart_and_rotates(tmp_path):
    out = tmp_path / "rows.csv"
    reps = [report(agent_instance="aaa", sequence=s) for s in (1, 1, 2, 4)]
    rc = record.run("http://x", str(out), rotate_bytes=1 << 20, keep=2, poll=0, max_windows=3,
                    fetch=_fake_fetch(reps), log=lambda m: None, sleep=lambda s: None)
    assert rc == 0
    lines = out.read_text().splitlines()
    assert lines[0] == record.HEADER.strip()
    kinds = [ln.split(",")[0] for ln in lines[1:]]
    assert kinds.count("gap") == 1 and kinds.count("window") == 9  # sequence 1, 2, 4 x 3 pods
    # a second session appends and sees the restart (new instance) as a gap
    rc = record.run("http://x", str(out), rotate_bytes=1 << 20, keep=2, poll=0, max_windows=1,
                    fetch=_fake_fetch([report(agent_instance="bbb", sequence=1)]),
                    log=lambda m: None, sleep=lambda s: None)
    lines2 = out.read_text().splitlines()
    assert lines2[:len(lines)] == lines and lines2.count(lines[0]) == 1
    assert "new agent instance bbb" in lines2[len(lines)]
    # rotation: a small limit moves the file aside between windows, a header starts each file
    small = tmp_path / "small.csv"
    reps = [report(agent_instance="c", sequence=s) for s in range(1, 21)]
    record.run("http://x", str(small), rotate_bytes=1024, keep=2, poll=0, max_windows=20,
               fetch=_fake_fetch(reps), log=lambda m: None, sleep=lambda s: None)
    files = sorted(tmp_path.glob("small.csv*"))
    assert [f.name for f in files] == ["small.csv", "small.csv.1", "small.csv.2"]  # --keep 2
    seqs = []
    for f in files:
        rows = list(csv.reader(f.read_text().splitlines()))
        assert rows[0] == list(record.COLUMNS)
        assert all(len(r) == len(record.COLUMNS) for r in rows)
        assert rows[-1][0] == "window" and (f.stat().st_size <= 1024 + 800)
        seqs.append(sorted({int(r[4]) for r in rows[1:]}))
    # the newest windows are in the newest file, none split across files
    assert seqs[0][-1] == 20 and max(seqs[1]) < min(seqs[0]) and max(seqs[2]) < min(seqs[1])


def test_record_refuses_a_foreign_or_torn_file(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    msgs = []
    assert record.run("http://x", str(other), rotate_bytes=1 << 20, keep=1, fetch=_fake_fetch([]),
                      log=msgs.append) == 2
    assert "not a record file" in msgs[0] and other.read_text() == "a,b,c\n1,2,3\n"
    torn = tmp_path / "torn.csv"
    torn.write_text(record.HEADER + "window,2026")
    msgs = []
    assert record.run("http://x", str(torn), rotate_bytes=1 << 20, keep=1, fetch=_fake_fetch([]),
                      log=msgs.append) == 2
    assert "incomplete" in msgs[0]


# --- measure -----------------------------------------------------------------------------------

def test_trimmed_mean_drops_ten_percent_each_side():
    xs = [1.0] * 18 + [100.0, -50.0]
    assert measure.trimmed_mean(xs, 0.1) == 1.0  # 2 dropped at each end of 20
    assert measure.trimmed_mean([1, 2, 3, 4, 100], 0.1) == pytest.approx(22.0)  # floor(0.5) = 0
    assert measure.trimmed_mean([1, 2, 3, 4, 100], 0.2) == 3.0
    with pytest.raises(ValueError):
        measure.trimmed_mean(xs, 0.5)
    s = measure.summarize([3.0, None, 1.0, 2.0], 0.0)
    assert s["min"] == 1.0 and s["max"] == 3.0 and s["spread"] == 2.0 and s["n"] == 3
    assert measure.summarize([None, None], 0.1) is None


def test_compare_prints_seed_003s_reductions():
    def doc(cpu, mem):
        return {"tool": "ebpf-edge-agent measure",
                "total": {"cpu_cores": {"trimmed_mean": cpu},
                          "memory_bytes": None if mem is None else {"trimmed_mean": mem},
                          "memory_working_set_bytes": None}}
    lines = measure.compare(doc(2.5, 989e6), doc(1.8, 710e6))
    assert lines[0] == "CPU \u221228.0 % (2500.0m -> 1800.0m)"
    assert lines[1] == "Memory \u221228.2 % (989.0MB -> 710.0MB)"
    assert lines[2] == "Memory working set n/a (not measured in BEFORE)"
    assert measure.compare(doc(1.0, None), doc(1.5, None))[0].startswith("CPU +50.0 %")


def _s(path, t, usage, mem=None):
    return CgroupSample(path=path, identity=None, taken_at=t, cpu_stat=CpuStat(usage, 0, 0),
                        memory_current=mem)


def test_sample_cores_per_interval_and_container_states():
    t = [0.0]
    usage = {"total": 0, "a": 0, "b": 0}
    alive = {"total", "a", "b"}
    m = [measure.Member("total", "p"), measure.Member("a", "p/a", "aaaa"), measure.Member("b", "p/b", "bbbb")]

    def read(member):
        if member.key not in alive:
            return None
        return _s(member.path, t[0], usage[member.key], mem=100 + usage[member.key] // 1000)

    def sleep(dt):
        t[0] += dt
        usage["a"] += 500_000  # 0.5 core over each 1 s
        usage["b"] += 250_000
        usage["total"] += 750_000
        if t[0] >= 3:
            alive.discard("b")

    series = measure.sample(read, lambda: [x for x in m if x.key in alive], 4, 1.0, sleep=sleep)
    assert series["a"].cpu == [0.5] * 4
    assert series["total"].cpu == [0.75] * 4
    assert series["b"].cpu == [0.25, 0.25, None, None]
    api = {"bbbb": {"name": "processor", "state": "terminated", "reason": "Completed"}}
    doc = measure.build_doc(measure.Target("cgroup", "p"), "/root", series, n=4, interval=1.0,
                            trim=0.1, started=0, elapsed=4.0, api=api)
    states = {c["key"]: c["state"] for c in doc["containers"]}
    assert states == {"a": "running", "b": "completed"}
    assert doc["containers"][1]["name"] == "processor"
    gone = measure.build_doc(measure.Target("cgroup", "p"), "/root", series, n=4, interval=1.0,
                             trim=0.1, started=0, elapsed=4.0, api=None)
    assert {c["key"]: c["state"] for c in gone["containers"]}["b"] == "gone"
    assert doc["total"]["cpu_cores"]["trimmed_mean"] == 0.75


def test_api_container_states_from_a_pod_object():
    pod = {"status": {"containerStatuses": [
        {"name": "trainer", "containerID": "containerd://AAAA", "state": {"running": {}}},
        {"name": "processor", "containerID": "containerd://bbbb",
         "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}}
    st = measure.api_container_states(pod)
    assert st == {"aaaa": {"name": "trainer", "state": "running"},
                  "bbbb": {"name": "processor", "state": "terminated", "reason": "Completed"}}
    assert measure.container_state(False, st["bbbb"]) == "completed"
    assert measure.container_state(False, st["aaaa"]) == "gone"
    assert measure.container_state(True, None) == "running"


def test_measure_a_pod_on_a_fixture_tree(tmp_path):
    tree = tmp_path / "cg"
    shutil.copytree(CGROUPS / "systemd-containerd", tree)
    out, err = [], []
    cfg = Config(cgroup_root=str(tree), kubernetes="off")
    rc = measure.run(cfg, pod="0a1b2c3d-1111-4222-8333-444455556666", cgroup=None, samples=3,
                     interval=0.01, trim=0.1, as_json=True, out=out.append, err=err.append,
                     sleep=lambda s: None)
    assert rc == 0, err
    doc = json.loads(out[0])
    assert doc["target"]["kind"] == "pod" and doc["samples"] == 3
    assert [c["state"] for c in doc["containers"]] == ["running"] * 3
    assert [c["container_id"][:4] for c in doc["containers"]] == ["0101", "0202", "0303"]
    assert doc["total"]["memory_bytes"]["trimmed_mean"] == 1073741824  # memory.current as written
    assert doc["total"]["cpu_cores"]["n"] == 3
    # the same pod where the v2 hierarchy has no memory controller: memory is n/a, not 0
    tree2 = tmp_path / "nomem"
    shutil.copytree(CGROUPS / "systemd-nomemory", tree2)
    uid = next(iter(json.loads((tree2 / "EXPECTED.json").read_text())))
    out = []
    assert measure.run(Config(cgroup_root=str(tree2), kubernetes="off"), pod=uid, cgroup=None,
                       samples=2, interval=0.01, trim=0.1, as_json=False, out=out.append,
                       err=err.append, sleep=lambda s: None) == 0
    assert "memory: n/a" in out[0]


def test_measure_bad_targets_say_why(tmp_path):
    err = []
    cfg = Config(cgroup_root=str(CGROUPS / "systemd-containerd"), kubernetes="off")
    kw = dict(samples=2, interval=0.01, trim=0.1, as_json=True, out=print, err=err.append)
    assert measure.run(cfg, pod="ffffffff-0000-0000-0000-000000000000", cgroup=None, **kw) == 2
    assert "no cgroup of pod uid" in err[-1]
    assert measure.run(cfg, pod="team-a/web-0", cgroup=None, **kw) == 2
    assert "needs the Kubernetes API" in err[-1]
    assert measure.run(cfg, pod=None, cgroup="../etc", **kw) == 2
    assert measure.run(cfg, pod=None, cgroup="/etc", **kw) == 2
    assert "not below the cgroup root" in err[-1]
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert measure.run_compare(str(bad), str(bad), err=err.append) == 2
    assert "not a document written by 'measure --json'" in err[-1]


# --- top ---------------------------------------------------------------------------------------

def test_top_table_sorts_filters_and_shows_new_fields():
    pods = copy.deepcopy(GOLDEN["pods"])
    for p in pods:
        p["runq_p95_ms"] = None  # a per-pod figure added by a later probe (not known to top)
    pods[1]["runq_p95_ms"] = 1.25
    r = report(pods=pods)
    lines, cols = top.table(r, top.View(sort="cpu_used", reverse=True))
    assert "runq_p95_ms" in [c.key for c in cols]
    assert lines[0].startswith("NAMESPACE/POD")
    assert [ln.split()[0] for ln in lines[1:]] == ["team-b/batch-0", "team-a/web-0", "kube-system/proxy"]
    assert "1.25" in lines[2]
    mem, _ = top.table(r, top.View(sort="memory_used", reverse=True))
    # pods without the figure come last whatever the order
    assert [ln.split()[0] for ln in mem[1:]] == ["team-b/batch-0", "team-a/web-0", "kube-system/proxy"]
    asc, _ = top.table(r, top.View(sort="memory_used", reverse=False))
    assert [ln.split()[0] for ln in asc[1:]] == ["team-a/web-0", "team-b/batch-0", "kube-system/proxy"]
    only, _ = top.table(r, top.View(namespace="team-a"))
    assert [ln.split()[0] for ln in only[1:]] == ["team-a/web-0"]


def test_top_node_line_and_keys():
    line = top.node_line(GOLDEN)
    assert "score 66.5" in line and "p99 301.47ms" in line and "NO_SOCKET 5.0" in line
    assert "runqlat p95 2.03ms" in line and "CPU 50%" in line
    down = report(probes={"tcp_rtt": {"state": "down", "reason": "x"}}, rtt_p99_ms=None)
    assert "p99 -" in top.node_line(down) and "tcp_rtt:down" in top.header_line(down, "u", None)
    v = top.View()
    cols = top.columns_for(GOLDEN["pods"])
    assert top.apply_key(v, "q", cols) is None
    assert top.apply_key(v, "m", cols).sort == "memory_used"
    assert top.apply_key(v, "c", cols).reverse is False  # same key again: reversed
    assert top.apply_key(top.View(sort="name", reverse=False), ">", cols).sort == cols[0].key
