"""The lean agent (issue 16): memory, start times and map read cost, side by side with another
build (``--before``: its console script, when present), in one run.

- Steady RSS (VmRSS after three reports) and the agent's own peak (VmHWM) with 0 and 200
  fixture pods (Kubernetes off, cgroups from a generated tree); exec -> first report and
  exec -> all probes attached (first report minus its window: sampling starts right after the
  last probe attached); the first window's length.
- The compile peak: each probe's compiling child's VmHWM (reported by the child itself).
- Map read cost: each probe's ``read()`` (bpf(2) layer, batched) median over 50 reads, with
  the probes up and the machine's own traffic.

    .venv/bin/python -m bench.lean [--before /work/main/.venv/bin/ebpf-edge-agent] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.agent_cost import make_tree as _make_tree
from tests.e2e.agent_proc import VENV_BIN, Agent

DEFAULT_BEFORE = "/work/main/.venv/bin/ebpf-edge-agent"


def make_tree(npods: int) -> Path:
    """bench.agent_cost's fixture tree, with the root's cgroup.procs the agent checks for
    (without it the agent reads no pods: "not a cgroup v2 hierarchy")."""
    tree = _make_tree(npods)
    (tree / "cgroup.procs").write_text("")
    return tree


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


class _AgentAt(Agent):
    """tests.e2e.agent_proc.Agent, but another build's console script."""

    def __init__(self, binary: str, *args: str) -> None:
        import tests.e2e.agent_proc as ap

        saved = ap.VENV_BIN
        ap.VENV_BIN = Path(binary).parent
        try:
            super().__init__(*args)
        finally:
            ap.VENV_BIN = saved


def measure_agent(binary: str, npods: int, interval: float = 5.0, reports: int = 3) -> dict:
    tree = make_tree(npods)
    try:
        t0 = time.monotonic()
        a = _AgentAt(binary, "--kubernetes", "off", "--cgroup-root", str(tree),
                     "--sample-interval", str(interval))
        try:
            a.wait_ready(120)
            first = time.monotonic() - t0
            r = a.report()
            up = sorted(n for n, s in r["probes"].items() if s["state"] == "up")
            seq = r["sequence"]
            deadline = time.monotonic() + interval * (reports + 3)
            while r["sequence"] < seq + reports and time.monotonic() < deadline:
                time.sleep(0.2)
                r = a.report()
            st = _status(a.proc.pid)
        finally:
            a.stop()
        return {"pods": npods, "pods_reported": len(r.get("pods", [])), "probes_up": up,
                "first_report_s": round(first, 2),
                "rss_mib": round(st["VmRSS"] / 2**20, 1), "hwm_mib": round(st["VmHWM"] / 2**20, 1)}
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def measure_start(binary: str, interval: float = 10.0) -> dict:
    """exec -> first report, and that report's window (exec -> attached = the difference)."""
    tree = make_tree(0)
    try:
        t0 = time.monotonic()
        a = _AgentAt(binary, "--kubernetes", "off", "--cgroup-root", str(tree),
                     "--sample-interval", str(interval))
        try:
            a.wait_ready(120)
            first = time.monotonic() - t0
            r = a.report()
        finally:
            a.stop()
        return {"first_report_s": round(first, 2), "first_window_s": round(r["window_seconds"], 2),
                "attached_s": round(first - r["window_seconds"], 2)}
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def measure_compile_and_reads(reads: int = 50) -> dict:
    """In this process: every probe compiled as the agent starts them (one child, one after
    another: each probe's time from the previous hand-over, the child's peak when it handed
    it over, the header tree), then read."""
    from agent.config import Config
    from agent.probes import registry
    from agent.sampler import ProbeSet

    config = Config()
    kernel = registry.detect_kernel(config)
    probes = registry.build(config, kernel)
    out: dict = {}
    try:
        ProbeSet(probes).start_all()
        time.sleep(1.0)
        for p in probes:
            ts = []
            for _ in range(reads):
                s = time.perf_counter()
                p.read()
                ts.append(time.perf_counter() - s)
            out[p.name] = {"compile_s": float(p.detail.get("load_seconds", "nan")),
                           "child_peak_mib": int(p.detail.get("compile_peak_rss_mib", 0)),
                           "tree": p.detail.get("header_tree", ""),
                           "read_ms_p50": round(statistics.median(ts) * 1000, 3)}
    finally:
        for p in probes:
            p.close()
    return out


def run(before: str | None, reps: int = 3) -> dict:
    lean = str(VENV_BIN / "ebpf-edge-agent")
    builds = {"lean": lean}
    if before and os.path.exists(before):
        builds["before"] = before
    res: dict = {"compile_and_reads": measure_compile_and_reads()}
    starts: dict[str, list[dict]] = {b: [] for b in builds}
    for rep in range(reps):  # alternated, the order reversed every repetition (a shared machine)
        order = list(builds) if rep % 2 == 0 else list(builds)[::-1]
        for b in order:
            starts[b].append(measure_start(builds[b]))
    for name, binary in builds.items():
        runs = starts[name]
        med = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        res[name] = {"start": {**med, "runs": runs},
                     "memory": [measure_agent(binary, n) for n in (0, 200)]}
    return res


def print_table(res: dict) -> None:
    print("\n6. lean agent (issue 16): compile in a child, read maps with bpf(2)")
    print(f"   {'probe':<12} {'compile s':>9} {'child peak MiB':>14} {'read ms p50':>11}  header tree")
    for n, r in res["compile_and_reads"].items():
        print(f"   {n:<12} {r['compile_s']:>9.2f} {r['child_peak_mib']:>14} {r['read_ms_p50']:>11}"
              f"  {r.get('tree', '')}")
    print("   start: median of alternated runs (exec -> attached = first report - its window)")
    print(f"   {'build':<11} {'attached s':>10} {'1st report s':>12} {'1st window s':>12} "
          f"{'RSS 0 pods':>10} {'HWM':>6} {'RSS 200 pods':>12} {'HWM':>6}")
    for b in ("lean", "before"):
        if b not in res:
            continue
        s, m = res[b]["start"], res[b]["memory"]
        print(f"   {b:<11} {s['attached_s']:>10} {s['first_report_s']:>12} {s['first_window_s']:>12} "
              f"{m[0]['rss_mib']:>10} {m[0]['hwm_mib']:>6} {m[1]['rss_mib']:>12} {m[1]['hwm_mib']:>6}")
    print("   targets: steady RSS <= 40 MiB (0 pods), <= 60 MiB (200 pods); attached and first "
          "report within 3 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=DEFAULT_BEFORE,
                    help="another build's ebpf-edge-agent to compare with (skipped if absent)")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.before)
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
