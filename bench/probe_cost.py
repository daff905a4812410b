"""Per-event kernel cost of each probe program under the lab load, next to an empty program
attached to the same tracepoint (the floor).

    .venv/bin/python -m bench.probe_cost [--seconds 10] [--reps 3] [--json out.json]

An empty program is attached both before and after the probes, because a program's position on
a tracepoint shifts its measured cost by up to ~17 ns (the first one runs on colder caches); the
floor is the mean of the two, and both are reported.

Uses BPF_ENABLE_STATS (the fd-scoped form of kernel.bpf_stats_enabled=1), released on exit.
Load: bench/load.py (TCP flows with 3 % drop, a UDP stream to a closed port, CPU hogs, TCP
connection churn).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from agent.config import Config
from agent.kernel import enable_bpf_stats
from agent.probes import registry
from agent.probes.base import read_prog_stats
from bench.load import run_lab_load

EMPTY = {
    "tcp:tcp_probe": "TRACEPOINT_PROBE(tcp, tcp_probe) { return 0; }",
    "tcp:tcp_retransmit_skb": "TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) { return 0; }",
    "skb:kfree_skb": "TRACEPOINT_PROBE(skb, kfree_skb) { return 0; }",
    "sched:sched_wakeup": "TRACEPOINT_PROBE(sched, sched_wakeup) { return 0; }",
    "sched:sched_wakeup_new": "TRACEPOINT_PROBE(sched, sched_wakeup_new) { return 0; }",
    "sched:sched_switch": "TRACEPOINT_PROBE(sched, sched_switch) { return 0; }",
    "sock:inet_sock_set_state": "TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }",
}


def _program_tracepoint(fname: str) -> str:
    # BCC names TRACEPOINT_PROBE functions tracepoint__<system>__<event>
    _, system, event = fname.split("__", 2)
    return f"{system}:{event}"


def _stats(bpf) -> dict[str, tuple[int, int]]:
    """tracepoint -> cumulative (run_time_ns, run_cnt) of an empty-program module."""
    out = {}
    for fname, fn in bpf.funcs.items():
        st = read_prog_stats(fn.fd)
        if st:
            out[_program_tracepoint(fname.decode())] = st
    return out


def _delta(after: dict, before: dict) -> dict[str, tuple[int, int]]:
    return {k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1])
            for k, v in after.items()}


def _per_event(st: tuple[int, int]) -> float | None:
    return st[0] / st[1] if st[1] else None


def run(seconds: float, reps: int = 3) -> dict:
    from bcc import BPF

    config = Config()
    kernel = registry.detect_kernel(config)
    probes = registry.build(config, kernel)
    empty_src = "enum skb_drop_reason { EBPF_EDGE_BENCH_SIZE_ONLY };\n" + "\n".join(
        v for k, v in EMPTY.items() if kernel.tracepoint(k) is not None)
    empty_first = BPF(text=empty_src)
    for p in probes:
        p.start()
    empty_last = BPF(text=empty_src)
    stats_fd = enable_bpf_stats()
    if stats_fd is None:
        raise SystemExit("BPF_ENABLE_STATS refused: need root and kernel >= 5.8")

    def sample():
        progs = {(p.name, _program_tracepoint(f)): st for p in probes for f, st in p.program_stats().items()}
        return progs, _stats(empty_first), _stats(empty_last)

    per_rep: dict[tuple[str, str], list[dict]] = {}
    try:
        for _ in range(reps):
            before = sample()
            run_lab_load(seconds)
            progs, first, last = (_delta(a, b) for a, b in zip(sample(), before))
            for (probe, tp), st in progs.items():
                f, l_ = _per_event(first.get(tp, (0, 0))), _per_event(last.get(tp, (0, 0)))
                ns = _per_event(st)
                floor = (f + l_) / 2 if f and l_ else None
                per_rep.setdefault((probe, tp), []).append({
                    "events": st[1], "ns": ns, "first": f, "last": l_, "floor": floor,
                    "ratio": ns / floor if ns and floor else None})
    finally:
        os.close(stats_fd)
        for p in probes:
            p.close()
        empty_first.cleanup()
        empty_last.cleanup()

    def med(xs: list[dict], k: str) -> float | None:
        vals = [x[k] for x in xs if x[k] is not None]
        return round(statistics.median(vals), 2 if k == "ratio" else 1) if vals else None

    rows = []
    for (probe, tp), xs in per_rep.items():
        ratios = [x["ratio"] for x in xs if x["ratio"] is not None]
        rows.append({
            "probe": probe, "tracepoint": tp, "events": sum(x["events"] for x in xs),
            "ns_per_event": med(xs, "ns"), "empty_first_ns": med(xs, "first"),
            "empty_last_ns": med(xs, "last"), "empty_ns_per_event": med(xs, "floor"),
            "ratio_to_empty": med(xs, "ratio"),
            "ratio_min": round(min(ratios), 2) if ratios else None,
            "ratio_max": round(max(ratios), 2) if ratios else None,
        })
    return {"kernel": kernel.release, "seconds": seconds, "reps": reps, "programs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="lab load per repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    res = run(args.seconds, args.reps)
    print(f"kernel {res['kernel']}, {res['reps']} x {res['seconds']:g}s of lab load; "
          "medians over the repetitions, ratio [min..max]")
    print("empty = mean of an empty program attached before and one attached after the probes")
    print(f"{'probe':<12} {'tracepoint':<24} {'events':>8} {'ns/event':>9} {'empty':>6} "
          f"{'(first':>7} {'last)':>6} {'ratio':>6}  range")
    for r in res["programs"]:
        print(f"{r['probe']:<12} {r['tracepoint']:<24} {r['events']:>8} "
              f"{r['ns_per_event'] or '-':>9} {r['empty_ns_per_event'] or '-':>6} "
              f"{r['empty_first_ns'] or '-':>7} {r['empty_last_ns'] or '-':>6} "
              f"{r['ratio_to_empty'] or '-':>6}  [{r['ratio_min']}..{r['ratio_max']}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
