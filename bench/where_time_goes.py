"""Where a probe's per-event time goes: variants of each program, all attached to the same
tracepoints at once and measured on the same events (BPF_ENABLE_STATS, released on exit).

    .venv/bin/python -m bench.where_time_goes [--seconds 10] [--ref REV] [--json out.json]
                                              [--tree-first] [--peer CMD [--peer-last]]
                                              [--variant PROBE:FILE ... [--variants-first]]

For each tracepoint: an empty program attached first and one attached last (the floor, and how
much the attach position matters), the probe's program as committed at --ref (default: the
commit before the probe rework) and as in the working tree, and steps in between (the filter
alone, the key built, a per-CPU array increment, a shared hash, a per-CPU hash, ...).
``--peer "/usr/sbin/runqlat 3600 1"`` also runs a peer tool during the load (attached before
everything, or with ``--peer-last`` after everything) and adds its programs' rows
(bench/peer_stats.py), named "peer: <program name>". ``--variant runqlat:bench/variants/x.bpf.c``
loads another C file with that probe's flags (its headers from bpf/), attached after the probes
(``--variants-first``: before them), in the order given; its rows are named "variant: <file name>".
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from agent.config import Config
from agent.kernel import enable_bpf_stats
from agent.probes import registry
from agent.probes.base import inline_includes, load_source, read_prog_stats
from bench.load import run_lab_load

REF = "444fe1f"  # before the per-CPU / array rework of the probes

PRELUDE = '#include "common.h"\n#include "hist.h"\nenum skb_drop_reason { EBPF_EDGE_BENCH_SIZE_ONLY };\n'
# hist.h needs these; probes without a histogram no longer pass them (and C files from before
# the probe-spec rework include hist.h through common.h)
HIST_FALLBACK = ["-DHIST_SUB_BITS=5", "-DHIST_MAX_SHIFT=0"]

EMPTY = "TRACEPOINT_PROBE({sys}, {ev}) {{ return 0; }}"

# tcp:tcp_probe steps, cheapest first
RTT_KEY = r"""
struct k20 { u8 addr[16]; u32 slot; };
#define BUILD(key) \
    if (args->snd_nxt == args->snd_una) return 0; \
    u16 family = *(u16 *)&args->saddr[0]; \
    if (family == AF_INET) addr_from_v4((key).addr, &args->saddr[4]); \
    else if (family == AF_INET6) __builtin_memcpy((key).addr, &args->saddr[8], 16); \
    else return 0; \
    (key).slot = hist_slot(args->srtt);
"""
VARIANTS = {
    "tcp:tcp_probe": {
        "filter only": "BPF_PERCPU_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(tcp, tcp_probe) {"
                       " if (args->snd_nxt == args->snd_una) return 0;"
                       " int z = 0; u64 *v = c.lookup(&z); if (v) (*v)++; return 0; }",
        "key + slot, per-CPU array count": RTT_KEY + "BPF_PERCPU_ARRAY(c, u64, 1);\n"
            "TRACEPOINT_PROBE(tcp, tcp_probe) { struct k20 key = {}; BUILD(key)"
            " int z = 0; u64 *v = c.lookup(&z); if (v) *v += key.slot; return 0; }",
        "key + slot, shared hash, atomics": RTT_KEY + "BPF_HASH(h, struct k20, struct hist_value, 65536);\n"
            "TRACEPOINT_PROBE(tcp, tcp_probe) { struct k20 key = {}; BUILD(key)"
            " struct hist_value zero = {}; struct hist_value *v = h.lookup_or_try_init(&key, &zero);"
            " if (v) { __sync_fetch_and_add(&v->count, 1); __sync_fetch_and_add(&v->sum, args->srtt); }"
            " return 0; }",
        "key + slot, per-CPU hash": RTT_KEY + "BPF_PERCPU_HASH(h, struct k20, struct hist_value, 65536);\n"
            "TRACEPOINT_PROBE(tcp, tcp_probe) { struct k20 key = {}; BUILD(key)"
            " struct hist_value zero = {}; struct hist_value *v = h.lookup_or_try_init(&key, &zero);"
            " if (v) { v->count++; v->sum += args->srtt; } return 0; }",
    },
    "sched:sched_switch": {
        "per-CPU array count": "BPF_PERCPU_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(sched, sched_switch) {"
            " int z = 0; u64 *v = c.lookup(&z); if (v) (*v)++; return 0; }",
        "ktime + per-CPU array count": "BPF_PERCPU_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(sched, sched_switch) {"
            " int z = 0; u64 *v = c.lookup(&z); if (v) *v += bpf_ktime_get_ns(); return 0; }",
        "cgroup id + per-CPU array count": "BPF_PERCPU_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(sched, sched_switch) {"
            " int z = 0; u64 *v = c.lookup(&z); if (v) *v += bpf_get_current_cgroup_id(); return 0; }",
    },
    "sched:sched_wakeup": {
        "hash update": "BPF_HASH(h, u32, u64, 65536);\nTRACEPOINT_PROBE(sched, sched_wakeup) {"
            " u32 pid = args->pid; u64 ts = bpf_ktime_get_ns(); h.update(&pid, &ts); return 0; }",
    },
    "skb:kfree_skb": {},
    "tcp:tcp_retransmit_skb": {
        "per-CPU array count": "BPF_PERCPU_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {"
            " int z = 0; u64 *v = c.lookup(&z); if (v) (*v)++; return 0; }",
    },
    "sock:inet_sock_set_state": {
        "per-CPU array count": "BPF_PERCPU_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(sock, inet_sock_set_state) {"
            " int z = 0; u64 *v = c.lookup(&z); if (v) (*v)++; return 0; }",
        "TCP filter, per-CPU array count": "BPF_PERCPU_ARRAY(c, u64, 1);\n"
            "TRACEPOINT_PROBE(sock, inet_sock_set_state) { if (args->protocol != 6) return 0;"
            " int z = 0; u64 *v = c.lookup(&z); if (v) (*v)++; return 0; }",
        "TCP filter, start into a hash (insert only)": "BPF_HASH(h, u64, u64, 16384);\n"
            "TRACEPOINT_PROBE(sock, inet_sock_set_state) { if (args->protocol != 6) return 0;"
            " if (args->newstate != 2) return 0; u64 sk = (u64)args->skaddr;"
            " u64 now = bpf_ktime_get_ns(); h.update(&sk, &now); return 0; }",
        "TCP filter, start in a hash, lookup and delete at completion": "BPF_HASH(h, u64, u64, 16384);\n"
            "TRACEPOINT_PROBE(sock, inet_sock_set_state) { if (args->protocol != 6) return 0;"
            " u64 sk = (u64)args->skaddr;"
            " if (args->newstate == 2) { u64 now = bpf_ktime_get_ns(); h.insert(&sk, &now); return 0; }"
            " if (args->oldstate != 2) return 0;"
            " u64 *t0 = h.lookup(&sk); if (t0) { h.delete(&sk); } return 0; }",
        "TCP filter, start in a direct-mapped array (as the probe)":
            "struct st { u64 sk; u64 ts; };\nBPF_ARRAY(a, struct st, 16384);\n"
            "TRACEPOINT_PROBE(sock, inet_sock_set_state) { if (args->protocol != 6) return 0;"
            " u64 sk = (u64)args->skaddr; int i = (sk >> 8) & 16383; struct st *e = a.lookup(&i);"
            " if (!e) return 0;"
            " if (args->newstate == 2) { e->sk = sk; e->ts = bpf_ktime_get_ns(); return 0; }"
            " if (args->oldstate == 2 && e->sk == sk) e->sk = 0; return 0; }",
    },
}

PROBE_OF = {"tcp:tcp_probe": "tcp_rtt", "tcp:tcp_retransmit_skb": "tcp_retrans",
            "skb:kfree_skb": "skb_drop", "sched:sched_switch": "runqlat", "sched:sched_wakeup": "runqlat",
            "sock:inet_sock_set_state": "connect"}


def _tp(fname: str) -> str:
    _, system, event = fname.split("__", 2)
    return f"{system}:{event}"


PEER_TRACEPOINTS = ("sched_wakeup_new", "sched_wakeup", "sched_switch", "tcp_probe", "kfree_skb",
                    "tcp_retransmit_skb")


def _peer_tp(name: str) -> str:
    for ev in PEER_TRACEPOINTS:
        if ev in name:
            return {"tcp_probe": "tcp", "kfree_skb": "skb", "tcp_retransmit_skb": "tcp"}.get(ev, "sched") + ":" + ev
    return "?"


def _start_peer(cmd: str):
    """The peer tool, once its programs are loaded (its BPF program fds are open)."""
    import shlex
    import time

    from bench.peer_stats import program_stats

    p = subprocess.Popen(shlex.split(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"peer {cmd!r} exited: {p.stderr.read().decode()[-500:]}")
        if program_stats(p.pid):
            time.sleep(0.5)  # all of them attached
            return p
        time.sleep(0.2)
    p.kill()
    raise SystemExit(f"peer {cmd!r} loaded no BPF program in 60 s")


def run(seconds: float, ref: str, tree_first: bool = False, peer: str | None = None,
        peer_last: bool = False, extra: tuple[str, ...] = (), variants_first: bool = False) -> dict:
    from bcc import BPF

    from bench.peer_stats import program_stats

    config = Config()
    kernel = registry.detect_kernel(config)
    probes = {p.name: p for p in registry.build(config, kernel)}
    loaded: list[tuple[str, str, object]] = []  # (tracepoint, variant, BPF)

    def load(tp: str, variant: str, text: str, cflags: list[str]) -> None:
        loaded.append((tp, variant, BPF(text=text, cflags=cflags)))

    ref_dirs: dict[str, str] = {}

    def ref_headers(rev: str) -> str:
        """A directory with the plain headers (*.h) of bpf/ at ``rev``, for -I."""
        if rev not in ref_dirs:
            import tempfile

            d = ref_dirs[rev] = tempfile.mkdtemp(prefix="wtg-ref-")
            names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:bpf"], check=True,
                                   capture_output=True, text=True,
                                   cwd=config.bpf_dir.parent).stdout.split()
            for n in names:
                if n.endswith(".h") and not n.endswith(".bpf.h"):
                    Path(d, n).write_text(subprocess.run(
                        ["git", "show", f"{rev}:bpf/{n}"], check=True, capture_output=True,
                        text=True, cwd=config.bpf_dir.parent).stdout)
        return ref_dirs[rev]

    def src(rev: str | None, fname: str) -> str:
        if rev is None:
            return load_source(config.bpf_dir / fname)

        def show(name: str) -> str:
            return subprocess.run(["git", "show", f"{rev}:bpf/{name}"], check=True, capture_output=True,
                                  text=True, cwd=config.bpf_dir.parent).stdout
        return inline_includes(show(fname), fname, show)

    def exists_at(rev: str, fname: str) -> bool:
        return subprocess.run(["git", "cat-file", "-e", f"{rev}:bpf/{fname}"], capture_output=True,
                              cwd=config.bpf_dir.parent).returncode == 0

    peer_proc = None
    try:
        if peer and not peer_last:
            peer_proc = _start_peer(peer)
        for tp in VARIANTS:  # empties attached first
            sys_, ev = tp.split(":")
            load(tp, "empty (attached first)", PRELUDE.split("\n")[2] + "\n" + EMPTY.format(sys=sys_, ev=ev), [])
        for tp, variants in VARIANTS.items():
            probe = probes[PROBE_OF[tp]]
            flags = probe.cflags() + ([] if probe.spec.hist else HIST_FALLBACK)
            for name, text in variants.items():
                load(tp, name, PRELUDE + text, flags)

        def load_variants() -> None:
            for v in extra:  # "probe:path" (the name ``variants`` is the loop's above)
                pname, _, path = v.partition(":")
                vpath = Path(path)
                text = inline_includes(vpath.read_text(), vpath.name,
                                       lambda n: (config.bpf_dir / n).read_text())
                b = BPF(text=text, cflags=probes[pname].cflags())
                for fname in b.funcs:
                    loaded.append((_tp(fname.decode()), f"variant: {vpath.name}", b))

        if variants_first:
            load_variants()
        for name, probe in probes.items():
            order = ((f"probe @ {ref}", ref), ("probe (working tree)", None))
            if not exists_at(ref, probe.spec.source):
                order = order[1:]  # a probe added after the ref
            for label, rev in (order[::-1] if tree_first else order):
                flags = probe.cflags()
                if rev is not None:  # the C as it was, with that commit's headers and defines
                    flags = [f"-I{ref_headers(rev)}"] + flags[1:] + (
                        [] if probe.spec.hist else HIST_FALLBACK)
                b = BPF(text=src(rev, probe.spec.source), cflags=flags)
                for fname in b.funcs:
                    loaded.append((_tp(fname.decode()), label, b))
        if not variants_first:
            load_variants()
        for tp in VARIANTS:
            sys_, ev = tp.split(":")
            load(tp, "empty (attached last)", PRELUDE.split("\n")[2] + "\n" + EMPTY.format(sys=sys_, ev=ev), [])
        if peer and peer_last:
            peer_proc = _start_peer(peer)
        fd = enable_bpf_stats()
        if fd is None:
            raise SystemExit("BPF_ENABLE_STATS refused: need root and kernel >= 5.8")
        import os
        try:
            run_lab_load(seconds)
        finally:
            os.close(fd)
        rows = []
        if peer_proc is not None:
            for pname, (ns, cnt) in sorted(program_stats(peer_proc.pid).items()):
                rows.append({"tracepoint": _peer_tp(pname), "variant": f"peer: {pname}", "events": cnt,
                             "ns_per_event": round(ns / cnt, 1) if cnt else None})
        for tp, variant, b in loaded:
            fn = b.funcs[f"tracepoint__{tp.replace(':', '__')}".encode()]
            ns, cnt = read_prog_stats(fn.fd) or (0, 0)
            rows.append({"tracepoint": tp, "variant": variant, "events": cnt,
                         "ns_per_event": round(ns / cnt, 1) if cnt else None})
        floor = {r["tracepoint"]: r["ns_per_event"] for r in rows if r["variant"] == "empty (attached last)"}
        for r in rows:
            f = floor.get(r["tracepoint"])
            r["ratio_to_empty_last"] = round(r["ns_per_event"] / f, 2) if f and r["ns_per_event"] else None
        order = list(VARIANTS)
        rows.sort(key=lambda r: (order.index(r["tracepoint"]) if r["tracepoint"] in order else 99,
                                 r["ns_per_event"] or 0))
        return {"kernel": kernel.release, "seconds": seconds, "ref": ref, "tree_first": tree_first,
                "peer": peer, "peer_last": peer_last, "variants": list(extra),
                "variants_first": variants_first, "rows": rows}
    finally:
        if peer_proc is not None:
            peer_proc.terminate()
            try:
                peer_proc.wait(10)
            except subprocess.TimeoutExpired:
                peer_proc.kill()
                peer_proc.wait()
        seen = set()
        for _, _, b in loaded:
            if id(b) not in seen:
                seen.add(id(b))
                b.cleanup()
        import shutil

        for d in ref_dirs.values():
            shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ref", default=REF)
    ap.add_argument("--json")
    ap.add_argument("--tree-first", action="store_true",
                    help="attach the working tree's program before --ref's (attach order matters)")
    ap.add_argument("--peer", help="a peer tool's command line, run during the load (e.g. "
                    "'/usr/sbin/runqlat 3600 1' from libbpf-tools)")
    ap.add_argument("--peer-last", action="store_true", help="attach the peer after everything")
    ap.add_argument("--variant", action="append", default=[], metavar="PROBE:FILE",
                    help="also load FILE with PROBE's flags (repeatable; attached after the probes)")
    ap.add_argument("--variants-first", action="store_true", help="attach the variants before the probes")
    args = ap.parse_args()
    res = run(args.seconds, args.ref, args.tree_first, args.peer, args.peer_last, tuple(args.variant),
              args.variants_first)
    print(f"kernel {res['kernel']}, {res['seconds']:g}s of lab load, every variant on the same events")
    print(f"{'tracepoint':<24} {'variant':<36} {'events':>8} {'ns/event':>9} {'x empty':>8}")
    for r in res["rows"]:
        print(f"{r['tracepoint']:<24} {r['variant']:<36} {r['events']:>8} {r['ns_per_event'] or '-':>9} "
              f"{r['ratio_to_empty_last'] or '-':>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
