"""make bench: every benchmark in one run, one table, one JSON document.

    .venv/bin/python -m bench.run [--json bench/results/latest.json] [--quick]

Sections: 1. per-event kernel cost vs the empty-program floor (probe_cost), and where the time
goes, before vs after the probe rework on the same events (where_time_goes); 2. workload tax
(tax); 3. agent user-space cost (agent_cost, and report_cost for the pure report build);
4. histogram accuracy (accuracy); 5. the scheduler extender (extender: ingestion, prioritize
latency at 5,000 nodes, RSS; alone: python -m bench.extender); 6. the lean agent (bench.lean:
RSS/peak at 0 and 200 pods, start times, compile peak, map read cost, beside another build
when /work/main has one; bench.map_reads: each probe's read() with the maps holding 0, 200 and
1,000 pods' addresses and cgroups, filled by the kernel, before and after the lean agent);
7. peers on the same events (bench.peers: libbpf-tools', bcc's and bpftrace's runqlat and
bpftrace one-liners, both attach orders). Ratios are taken within one run; absolute times drift
on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

from bench import accuracy, agent_cost, probe_cost, report_cost, tax, where_time_goes
from bench import extender as extender_bench
from bench import lean as lean_bench
from bench import map_reads as map_reads_bench
from bench import peers as peers_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="bench/results/latest.json")
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke-checking the bench)")
    args = ap.parse_args()
    q = args.quick
    t0 = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res: dict = {"kernel": platform.release(), "cpus": os.cpu_count(), "commit": commit,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res["probe_cost"] = probe_cost.run(5 if q else 10, 1 if q else 5)
    res["where_time_goes"] = where_time_goes.run(5 if q else 10, where_time_goes.REF)
    res["tax"] = tax.run(1 if q else 5, 2 if q else 4)
    res["agent_cost"] = agent_cost.run(5 if q else 20, [0, 200, 1000])
    res["report_cost"] = [report_cost.measure(n, 50 if q else 200) for n in (0, 200, 1000)]
    res["accuracy"] = accuracy.run(3 if q else 6)
    res["extender"] = extender_bench.run(q)
    res["lean"] = lean_bench.run(lean_bench.DEFAULT_BEFORE)
    res["map_reads"] = map_reads_bench.run(reads=20 if q else 50, reps=1 if q else 2)
    res["peers"] = peers_bench.run(5 if q else 10)
    res["seconds"] = round(time.monotonic() - t0)
    print_table(res)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nwritten {args.json} ({res['seconds']} s)")


def print_table(res: dict) -> None:
    print(f"\n=== ebpf-edge-agent bench: kernel {res['kernel']}, {res['cpus']} CPUs, commit {res['commit']} ===")
    pc = res["probe_cost"]
    print("\n1. per-event kernel cost (ns, BPF_ENABLE_STATS) vs an empty program on the same tracepoint "
          f"(mean of one attached before and one after the probes); median of {pc['reps']} x "
          f"{pc['seconds']:g}s, ratio range")
    print(f"   {'probe':<12} {'tracepoint':<24} {'events':>8} {'ns/event':>9} {'empty':>6} {'ratio':>6} "
          f"{'range':>12} {'target':>6}")
    for r in pc["programs"]:
        target = 3.0 if r["probe"] == "runqlat" else 1.5
        spread = f"[{r['ratio_min']}..{r['ratio_max']}]"
        print(f"   {r['probe']:<12} {r['tracepoint']:<24} {r['events']:>8} {r['ns_per_event'] or '-':>9} "
              f"{r['empty_ns_per_event'] or '-':>6} {r['ratio_to_empty'] or '-':>6} {spread:>12} {target:>6}")
    w = res["where_time_goes"]
    print(f"\n   before ({w['ref']}) vs after (working tree) and steps, all on the same events:")
    for r in w["rows"]:
        print(f"   {r['tracepoint']:<24} {r['variant']:<36} {r['events']:>8} {r['ns_per_event'] or '-':>7} "
              f"x{r['ratio_to_empty_last'] or '-'}")
    t = res["tax"]
    print(f"\n2. workload tax (ratio to agent off; median [min..max] over {t['reps']} alternated reps of "
          f"{t['seconds']:g}s; off = {t['off']['throughput_gbit_s']} Gbit/s, {t['off']['rr_per_s']} req/s)")
    for m, v in t["ratios"].items():
        if m != "off":
            print(f"   {m:<8} iperf3 throughput x{v['throughput']['median']} "
                  f"[{v['throughput']['min']}..{v['throughput']['max']}]   TCP req/resp "
                  f"x{v['rr']['median']} [{v['rr']['min']}..{v['rr']['max']}]")
    sh = t["bpf_cpu_share"]
    print(f"   agent's probes, in-kernel run time as a share of all CPU time (BPF_ENABLE_STATS, one more run "
          f"each): iperf3 {sh['throughput']:.3%}, req/resp {sh['rr']:.3%}")
    print("\n3. agent user space (real process, 10 s windows)")
    print(f"   {'pods':>5} {'events':>6} {'startup s':>9} {'cpu s/min':>9} {'rss MB':>7} {'/metrics p50':>12} "
          f"{'p99 ms':>7} {'series':>7}  in-kernel samples/s")
    for r in res["agent_cost"]:
        print(f"   {r['pods']:>5} {r['load']:>6} {r['startup_to_first_report_s']:>9} {r['cpu_s_per_min']:>9} "
              f"{r['rss_mb']:>7} {r['metrics_p50_ms']:>12} {r['metrics_p99_ms']:>7} {r['series']:>7}  "
              f"{r['events_per_s']}")
    print("   report build (pure, fixture pods): " + ", ".join(
        f"{r['pods']} pods {r['build_cpu_ms']} ms CPU" for r in res["report_cost"]))
    print("\n4. accuracy: histogram percentile vs exact percentile of the same samples")
    for r in res["accuracy"]:
        print(f"   {r['probe']:<14} {r['samples_kernel']:>7} samples  " + "  ".join(
            f"p{q} {r[f'p{q}']['exact']:g} vs {r[f'p{q}']['kernel']:g} ({r[f'p{q}']['error_pct']}%)"
            for q in (50, 90, 99)) + f"   max {r['max_error_pct']}% (target 3%)")
    if "extender" in res:
        extender_bench.print_table(res["extender"])
    if "lean" in res:
        lean_bench.print_table(res["lean"])
    if "map_reads" in res:
        map_reads_bench.print_table(res["map_reads"])
    if "peers" in res:
        peers_bench.print_table(res["peers"])


if __name__ == "__main__":
    main()
