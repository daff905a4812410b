"""Per-event kernel cost of each probe program under the lab load, next to an empty program
attached to the same tracepoint (the floor).

    .venv/bin/python -m bench.probe_cost [--seconds 10] [--json out.json]

Uses BPF_ENABLE_STATS (the fd-scoped form of kernel.bpf_stats_enabled=1), released on exit.
Load: bench/load.py (TCP flows with 3 % drop, a UDP stream to a closed port, CPU hogs).
"""

from __future__ import annotations

import argparse
import json
import os

from agent.config import Config
from agent.kernel import detect, enable_bpf_stats
from agent.probes import PROBE_CLASSES
from agent.probes.base import read_prog_stats
from bench.load import run_lab_load

EMPTY = {
    "tcp:tcp_probe": "TRACEPOINT_PROBE(tcp, tcp_probe) { return 0; }",
    "tcp:tcp_retransmit_skb": "TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) { return 0; }",
    "skb:kfree_skb": "TRACEPOINT_PROBE(skb, kfree_skb) { return 0; }",
    "sched:sched_wakeup": "TRACEPOINT_PROBE(sched, sched_wakeup) { return 0; }",
    "sched:sched_wakeup_new": "TRACEPOINT_PROBE(sched, sched_wakeup_new) { return 0; }",
    "sched:sched_switch": "TRACEPOINT_PROBE(sched, sched_switch) { return 0; }",
}


def _program_tracepoint(fname: str) -> str:
    # BCC names TRACEPOINT_PROBE functions tracepoint__<system>__<event>
    _, system, event = fname.split("__", 2)
    return f"{system}:{event}"


def run(seconds: float) -> dict:
    from bcc import BPF

    config = Config()
    kernel = detect(config.tracefs_roots, config.btf_path, config.modules_root, config.proc_root)
    probes = [cls(config, kernel) for cls in PROBE_CLASSES.values()]
    for p in probes:
        p.start()
    empty_src = "enum skb_drop_reason { EBPF_EDGE_BENCH_SIZE_ONLY };\n" + "\n".join(v for k, v in EMPTY.items() if kernel.tracepoint(k) is not None
                          and k.startswith(("tcp", "skb", "sched")))
    empty = BPF(text=empty_src)
    stats_fd = enable_bpf_stats()
    if stats_fd is None:
        raise SystemExit("BPF_ENABLE_STATS refused: need root and kernel >= 5.8")
    try:
        run_lab_load(seconds)
        floor = {}
        for fname, fn in empty.funcs.items():
            st = read_prog_stats(fn.fd)
            if st and st[1]:
                floor[_program_tracepoint(fname.decode())] = st[0] / st[1]
        rows = []
        for p in probes:
            for fname, (ns, cnt) in sorted(p.program_stats().items()):
                tp = _program_tracepoint(fname)
                rows.append({
                    "probe": p.name, "tracepoint": tp, "events": cnt,
                    "ns_per_event": round(ns / cnt, 1) if cnt else None,
                    "empty_ns_per_event": round(floor[tp], 1) if tp in floor else None,
                    "ratio_to_empty": round(ns / cnt / floor[tp], 2) if cnt and floor.get(tp) else None,
                })
    finally:
        os.close(stats_fd)
        for p in probes:
            p.close()
        empty.cleanup()
    return {"kernel": kernel.release, "seconds": seconds, "programs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    res = run(args.seconds)
    print(f"kernel {res['kernel']}, {res['seconds']:g}s of lab load")
    print(f"{'probe':<12} {'tracepoint':<28} {'events':>9} {'ns/event':>9} {'empty':>7} {'ratio':>6}")
    for r in res["programs"]:
        print(f"{r['probe']:<12} {r['tracepoint']:<28} {r['events']:>9} "
              f"{r['ns_per_event'] or '-':>9} {r['empty_ns_per_event'] or '-':>7} "
              f"{r['ratio_to_empty'] or '-':>6}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
