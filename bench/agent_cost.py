"""The agent's own user-space cost, measured on the real agent process (`ebpf-edge-agent run`,
default 10 s windows, Kubernetes off, cgroups from a generated fixture tree of N pods):
CPU seconds per minute and RSS at a low and a high event rate (idle lab vs a line-rate TCP flow
plus CPU hogs) and at 0, 200 and 1,000 pods; startup time to the first report; /metrics
latency p50/p99 and series count.

    .venv/bin/python -m bench.agent_cost [--window 20] [--pods 0,200,1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cgroup_read import add_pod, write_cg
from tests.bpf.netlab import NetLab
from tests.e2e.agent_proc import Agent, http_get

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def make_tree(npods: int) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-cg-"))
    write_cg(tmp / "kubepods.slice" / "kubepods-burstable.slice")
    for _ in range(npods):
        add_pod(tmp, 1)
    return tmp


def measure(npods: int, window: float, load: str) -> dict:
    tree = make_tree(npods)
    lab = NetLab() if load == "high" else None
    hogs: list[subprocess.Popen] = []
    try:
        if lab is not None:
            lab.__enter__()
            lab.spawn(lab.b, "sink", "::", "5201", str(window + 60))
            time.sleep(0.3)
            lab.spawn(lab.a, "send", lab.b.ip4, "5201", str(window + 50))
            code = f"import time\nend=time.monotonic()+{window + 40}\nwhile time.monotonic()<end: time.sleep(0.0005)\n"
            hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4 * (os.cpu_count() or 1))]
        t0 = time.monotonic()
        agent = Agent("--kubernetes", "off", "--cgroup-root", str(tree), "--sample-interval", "10")
        try:
            agent.wait_ready(60)
            startup = time.monotonic() - t0
            rep = agent.report()
            seq = _next_report(agent, rep["sequence"])  # start on a report boundary
            n0 = _event_counts(http_get(agent.base + "/metrics")[1])
            c0, w0 = cpu_seconds(agent.proc.pid), time.monotonic()
            time.sleep(window)
            seq1 = _next_report(agent, seq)
            n1 = _event_counts(http_get(agent.base + "/metrics")[1])
            cpu_per_min = (cpu_seconds(agent.proc.pid) - c0) / (time.monotonic() - w0) * 60
            span = (seq1 - seq) * 10.0  # seconds of windows between the two readings
            rss = agent.rss_bytes()
            lat, body = [], ""
            for _ in range(50):
                s = time.perf_counter()
                _, body = http_get(agent.base + "/metrics")
                lat.append(time.perf_counter() - s)
            lat.sort()
        finally:
            agent.stop()
        series = sum(1 for ln in body.splitlines() if ln and not ln.startswith("#"))
        return {"pods": npods, "load": load, "pods_reported": len(rep.get("pods", [])),
                "startup_to_first_report_s": round(startup, 2),
                "cpu_s_per_min": round(cpu_per_min, 3), "rss_mb": round(rss / 2**20, 1),
                "metrics_p50_ms": round(statistics.median(lat) * 1000, 2),
                "metrics_p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 2),
                "series": series,
                "events_per_s": {k: round((n1.get(k, 0) - n0.get(k, 0)) / span) for k in n1}}
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        if lab is not None:
            lab.__exit__(None, None, None)
        shutil.rmtree(tree, ignore_errors=True)


def _next_report(agent: Agent, seq: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cur = agent.report()["sequence"]
        if cur > seq:
            return cur
        time.sleep(0.1)
    raise RuntimeError("no new report in 30 s")


def _event_counts(metrics: str) -> dict:
    """Cumulative in-kernel sample counts from the agent's own histograms."""
    out = {}
    for ln in metrics.splitlines():
        for name in ("ebpf_tcp_rtt_seconds_count", "ebpf_runqlat_seconds_count"):
            if ln.startswith(name):
                out[name[5:-14]] = out.get(name[5:-14], 0) + float(ln.rsplit(" ", 1)[1])
    return out


def run(window: float, pods: list[int]) -> list[dict]:
    rows = [measure(0, window, "low"), measure(0, window, "high")]
    rows += [measure(n, window, "low") for n in pods if n]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--pods", default="0,200,1000")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = run(args.window, [int(x) for x in args.pods.split(",")])
    print(f"{'pods':>5} {'events':>6} {'startup s':>9} {'cpu s/min':>9} {'rss MB':>7} "
          f"{'/metrics p50 ms':>15} {'p99 ms':>7} {'series':>7}")
    for r in rows:
        print(f"{r['pods']:>5} {r['load']:>6} {r['startup_to_first_report_s']:>9} {r['cpu_s_per_min']:>9} "
              f"{r['rss_mb']:>7} {r['metrics_p50_ms']:>15} {r['metrics_p99_ms']:>7} {r['series']:>7} {r['events_per_s']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
