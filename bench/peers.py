"""Peers on the same events: the agent's probes and the tools a user would run instead, attached
to the same tracepoints during the same lab load, in both attach orders (a program's position on
a tracepoint moves its cost), per-event kernel cost from BPF_ENABLE_STATS.

Peers (whichever are installed; a missing one is reported as such, never guessed):
- runqlat: libbpf-tools' ``runqlat`` (/usr/sbin/runqlat), bcc's ``runqlat-bpfcc``, bpftrace's
  ``runqlat.bt``;
- every probe's job as a bpftrace one-liner, node-wide: tcp_rtt ``hist(srtt)``, tcp_retrans
  ``count()``, skb_drop ``count()`` by reason.
Per-address one-liners are not measured (see BENCHMARKS.md).

A peer's programs are found by the process that holds them (prog ids in its fdinfo) and their
tracepoint by ``bpftool perf``/``bpftool link``; their counters are read through
BPF_PROG_GET_FD_BY_ID. The agent's ratio is its ns/event over the cheapest peer's on the same
tracepoint, in the same run.

    .venv/bin/python -m bench.peers [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

from agent.config import Config
from agent.kernel import enable_bpf_stats
from agent.probes import registry
from agent.probes.base import read_prog_stats
from agent.probes.bpfmaps import BPF_PROG_GET_FD_BY_ID, BpfError, bpf
from bench.load import run_lab_load

ONE_LINERS = {
    "bpftrace tcp_rtt hist": "tracepoint:tcp:tcp_probe { @h = hist(args->srtt); }",
    "bpftrace tcp_retrans count": "tracepoint:tcp:tcp_retransmit_skb { @n = count(); }",
    "bpftrace skb_drop by reason": "tracepoint:skb:kfree_skb { @r[args->reason] = count(); }",
}


def _which(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n) or (n if os.path.exists(n) else None)
        if p:
            return p
    return None


def peer_commands() -> dict[str, list[str] | str]:
    """name -> argv, or a reason it is absent."""
    out: dict[str, list[str] | str] = {}
    lb = "/usr/sbin/runqlat"
    out["libbpf-tools runqlat"] = [lb, "60", "1"] if os.path.exists(lb) and os.access(lb, os.X_OK) \
        else "libbpf-tools not installed"
    bcc = _which("runqlat-bpfcc", "/usr/share/bcc/tools/runqlat")
    out["bcc runqlat"] = [bcc, "60", "1"] if bcc else "bpfcc-tools not installed"
    bt = _which("bpftrace")
    rq = _which("/usr/sbin/runqlat.bt", "/usr/share/bpftrace/tools/runqlat.bt")
    out["bpftrace runqlat.bt"] = [bt, rq] if bt and rq else "bpftrace (runqlat.bt) not installed"
    for name, prog in ONE_LINERS.items():
        out[name] = [bt, "-e", prog] if bt else "bpftrace not installed"
    return out


def _held_prog_ids(pid: int) -> set[int]:
    ids = set()
    try:
        for fi in Path(f"/proc/{pid}/fdinfo").iterdir():
            try:
                for line in fi.read_text().splitlines():
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
            except OSError:
                pass
    except OSError:
        pass
    return ids


def _attachments() -> dict[int, str]:
    """prog id -> tracepoint name (perf-event tracepoints and raw/BTF tracepoint links)."""
    out: dict[int, str] = {}
    try:
        for e in json.loads(subprocess.run(["bpftool", "-j", "perf", "list"], capture_output=True,
                                           text=True, timeout=10).stdout or "[]"):
            if e.get("fd_type") in ("tracepoint", "raw_tracepoint"):
                out[e["prog_id"]] = e.get("tracepoint", "?")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    try:
        for e in json.loads(subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True,
                                           text=True, timeout=10).stdout or "[]"):
            tp = e.get("tp_name") or (e.get("attach_btf_name") if e.get("type") == "tracing" else None)
            if tp:
                out[e["prog_id"]] = tp
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return out


def _stats_by_id(prog_id: int) -> tuple[int, int] | None:
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("=I", attr, 0, prog_id)
    try:
        fd = bpf(BPF_PROG_GET_FD_BY_ID, attr, "prog by id")
    except BpfError:
        return None
    try:
        return read_prog_stats(fd)
    finally:
        os.close(fd)


def _event_of(tp: str) -> str:
    return tp.split(":")[-1].split("/")[-1]


class Peer:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.progs: dict[int, str] = {}

    def wait_attached(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            ids = _held_prog_ids(self.proc.pid)
            if ids:
                att = _attachments()
                found = {i: _event_of(att[i]) for i in ids if i in att}
                if found:
                    time.sleep(0.5)  # the rest of its programs
                    att = _attachments()
                    self.progs = {i: _event_of(att[i]) for i in _held_prog_ids(self.proc.pid)
                                  if i in att}
                    return True
            time.sleep(0.2)
        return False

    def stats(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for i, ev in self.progs.items():
            st = _stats_by_id(i)
            if st:
                a, b = out.get(ev, (0, 0))
                out[ev] = (a + st[0], b + st[1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _agent_stats(probes) -> dict[str, tuple[int, int]]:
    """event -> (run_time_ns, run_cnt) of the agent's programs (named tracepoint__sys__event;
    the kernel cuts names to 15 characters, so take them from the child's message)."""
    out = {}
    for p in probes:
        for fname, st in p.program_stats().items():
            out[fname.split("__")[-1]] = st
    return out


def _delta(a: dict, b: dict) -> dict:
    return {k: (v[0] - b.get(k, (0, 0))[0], v[1] - b.get(k, (0, 0))[1]) for k, v in a.items()}


def one_order(agent_first: bool, seconds: float) -> dict:
    config = Config()
    kernel = registry.detect_kernel(config)
    probes = registry.build(config, kernel)
    peers: list[Peer] = []
    absent = {}
    try:
        if agent_first:
            for p in probes:
                p.start()
        for name, argv in peer_commands().items():
            if isinstance(argv, str):
                absent[name] = argv
                continue
            peer = Peer(name, argv)
            if peer.wait_attached():
                peers.append(peer)
            else:
                err = peer.proc.stderr.read(500).decode(errors="replace") if peer.proc.poll() is not None else ""
                absent[name] = f"did not attach ({err.strip()[:200]})"
                peer.stop()
        if not agent_first:
            for p in probes:
                p.start()
        fd = enable_bpf_stats()
        try:
            a0, p0 = _agent_stats(probes), {x.name: x.stats() for x in peers}
            run_lab_load(seconds)
            a1, p1 = _agent_stats(probes), {x.name: x.stats() for x in peers}
        finally:
            if fd is not None:
                os.close(fd)
    finally:
        for x in peers:
            x.stop()
        for p in probes:
            p.close()
    agent = {ev: st for ev, st in _delta(a1, a0).items() if st[1]}
    peer_d = {x.name: {ev: st for ev, st in _delta(p1[x.name], p0[x.name]).items() if st[1]}
              for x in peers}
    return {"agent_first": agent_first, "agent": agent, "peers": peer_d, "absent": absent}


def ratios(run: dict) -> dict[str, dict]:
    """event -> agent ns/event, the cheapest peer and its ns/event, the ratio."""
    out = {}
    for ev, (ns, n) in run["agent"].items():
        best = None
        for name, evs in run["peers"].items():
            if ev in evs and evs[ev][1]:
                c = evs[ev][0] / evs[ev][1]
                if best is None or c < best[1]:
                    best = (name, c)
        out[ev] = {"agent_ns": round(ns / n, 1), "events": n,
                   "cheapest_peer": best[0] if best else None,
                   "peer_ns": round(best[1], 1) if best else None,
                   "ratio": round(ns / n / best[1], 2) if best else None}
    return out


def run(seconds: float = 10.0) -> dict:
    runs = [one_order(True, seconds), one_order(False, seconds)]
    return {"seconds": seconds, "runs": runs, "ratios": [ratios(r) for r in runs]}


def print_table(res: dict) -> None:
    print(f"\n7. peers on the same events ({res['seconds']:g} s lab load, BPF_ENABLE_STATS), "
          "agent ns/event over the cheapest peer's on the same tracepoint")
    for r, rat in zip(res["runs"], res["ratios"]):
        print(f"   attached {'agent first' if r['agent_first'] else 'peers first'}:")
        for ev, x in sorted(rat.items()):
            print(f"     {ev:<22} agent {x['agent_ns']:>7} ns  {x['cheapest_peer'] or '-':<28} "
                  f"{x['peer_ns'] if x['peer_ns'] is not None else '-':>7} ns  "
                  f"x{x['ratio'] if x['ratio'] is not None else '-'}")
        for name, evs in sorted(r["peers"].items()):
            print(f"     peer {name:<28} " + ", ".join(
                f"{ev} {st[0] / st[1]:.1f} ns" for ev, st in sorted(evs.items())))
        for name, why in sorted(r["absent"].items()):
            print(f"     peer {name:<28} absent: {why}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.seconds)
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
