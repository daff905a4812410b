"""Workload tax: TCP bulk throughput (iperf3) and a TCP request/response rate between two lab
namespaces with nothing attached ("off"), with the agent running, and with a per-event-output
tracer (a bpftrace one-liner printing every event of the agent's tracepoints to /dev/null).
The modes are alternated within each repetition so drift cancels; each mode is reported as the
median ratio to the "off" run of the same repetition, with the min..max of those ratios.

Then each workload runs once more with the agent and BPF_ENABLE_STATS on (not during the
ratio runs: the accounting itself costs time per event): the run time of every tracepoint
program in the kernel over that run, as a share of the CPU time available (wall time x CPUs)
-- the kernel time the probes take from the workload, measured directly rather than read
through the noise of the throughput ratios.

    .venv/bin/python -m bench.tax [--reps 3] [--seconds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from agent.kernel import _NR_BPF, enable_bpf_stats
from agent.probes.base import read_prog_stats

from tests.bpf.netlab import NetLab
from tests.e2e.agent_proc import Agent, http_get

TRACER = ("tracepoint:tcp:tcp_probe { printf(\"rtt %d\\n\", args->srtt); } "
          "tracepoint:tcp:tcp_retransmit_skb { printf(\"retrans\\n\"); } "
          "tracepoint:skb:kfree_skb { printf(\"drop %d\\n\", args->reason); } "
          "tracepoint:sched:sched_wakeup { printf(\"wake %d\\n\", args->pid); } "
          "tracepoint:sched:sched_switch { printf(\"switch %d %d\\n\", args->prev_pid, args->next_pid); }")

RR_SERVER = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(8); print("ready", flush=True)
def echo(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d: break
        c.sendall(d)
while True:
    c, _ = srv.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""
RR_CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
end = time.monotonic() + float(sys.argv[3]); n = 0; t0 = time.monotonic()
while time.monotonic() < end:
    c.sendall(b"x" * 32)
    c.recv(64)
    n += 1
print(n / (time.monotonic() - t0))
"""


class Tracer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["bpftrace", "-e", TRACER], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        first = self.proc.stdout.readline()  # "Attaching N probes..." once attached
        if not first.startswith(b"Attaching"):
            self.proc.kill()
            raise RuntimeError(f"bpftrace did not attach: {first!r}")
        # bpftrace's own user space formats every event; the text is read and thrown away
        self.sink = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.sink.wait(10)


def start_agent() -> Agent:
    a = Agent("--kubernetes", "off", "--sample-interval", "10")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # probes attached: every probe "up" in /readyz's body
        try:
            _, body = http_get(a.base + "/readyz", 2)
            if body.count(": up") >= 4 or body.startswith("ready"):
                break
        except OSError:
            pass
        if a.proc.poll() is not None:
            raise RuntimeError("agent exited: " + a.output())
        time.sleep(0.2)
    time.sleep(0.5)
    return a


def throughput(lab: NetLab, seconds: float) -> float:
    out = lab.a.run("iperf3", "-c", lab.b.ip4, "-t", str(seconds), "-J", timeout=seconds + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


def rr_rate(lab: NetLab, seconds: float) -> float:
    out = lab.a.run(sys.executable, "-c", RR_CLIENT, lab.b.ip4, "5301", str(seconds),
                    timeout=seconds + 30).stdout
    return float(out.strip())


_BPF_PROG_GET_NEXT_ID, _BPF_PROG_GET_FD_BY_ID = 11, 13
_PROG_TYPE_TRACEPOINT = 5


def tracepoint_programs_run_time() -> int:
    """Summed run_time_ns of every tracepoint program loaded in the kernel (needs root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr = _NR_BPF[platform.machine()]
    total, prog_id = 0, 0
    while True:
        attr = (ctypes.c_uint32 * 4)(prog_id, 0, 0, 0)
        if libc.syscall(nr, _BPF_PROG_GET_NEXT_ID, attr, ctypes.sizeof(attr)) != 0:
            return total  # ENOENT: no more programs
        prog_id = attr[1]
        fd = libc.syscall(nr, _BPF_PROG_GET_FD_BY_ID, (ctypes.c_uint32 * 4)(prog_id, 0, 0, 0), 16)
        if fd < 0:
            continue  # unloaded meanwhile
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                is_tp = any(line.split() == ["prog_type:", str(_PROG_TYPE_TRACEPOINT)] for line in f)
            st = read_prog_stats(fd) if is_tp else None
        finally:
            os.close(fd)
        if st:
            total += st[0]


def bpf_share(lab: NetLab, seconds: float) -> dict:
    """Share of all CPU time spent in tracepoint programs while each workload runs with the agent."""
    agent = start_agent()
    fd = enable_bpf_stats()
    if fd is None:
        agent.stop()
        raise SystemExit("BPF_ENABLE_STATS refused: need root and kernel >= 5.8")
    out = {}
    try:
        for test, fn in (("throughput", throughput), ("rr", rr_rate)):
            ns0, t0 = tracepoint_programs_run_time(), time.monotonic()
            fn(lab, seconds)
            ns1, t1 = tracepoint_programs_run_time(), time.monotonic()
            out[test] = round((ns1 - ns0) / ((t1 - t0) * 1e9 * (os.cpu_count() or 1)), 5)
    finally:
        os.close(fd)
        agent.stop()
    return out


def run(reps: int, seconds: float) -> dict:
    modes = ("off", "agent", "tracer")
    raw: dict[str, dict[str, list[float]]] = {m: {"throughput": [], "rr": []} for m in modes}
    with NetLab() as lab:
        iperf = lab.b.popen("iperf3", "-s")
        rr = lab.b.popen(sys.executable, "-c", RR_SERVER, lab.b.ip4, "5301")
        try:
            rr.stdout.readline()
            time.sleep(0.5)
            throughput(lab, 1)  # warm up
            for rep in range(reps):
                order = modes if rep % 2 == 0 else tuple(reversed(modes))
                for m in order:
                    ctx = start_agent() if m == "agent" else Tracer() if m == "tracer" else None
                    try:
                        raw[m]["throughput"].append(throughput(lab, seconds))
                        raw[m]["rr"].append(rr_rate(lab, seconds))
                    finally:
                        if ctx is not None:
                            ctx.stop()
            share = bpf_share(lab, seconds)
        finally:
            for p in (iperf, rr):
                p.kill()
                p.wait()
    res = {"reps": reps, "seconds": seconds, "raw": raw, "ratios": {}, "bpf_cpu_share": share}
    for m in modes:
        for test in ("throughput", "rr"):
            ratios = [x / o for x, o in zip(raw[m][test], raw["off"][test])]
            res["ratios"].setdefault(m, {})[test] = {
                "median": round(statistics.median(ratios), 4),
                "min": round(min(ratios), 4), "max": round(max(ratios), 4)}
    res["off"] = {"throughput_gbit_s": round(statistics.median(raw["off"]["throughput"]) / 1e9, 2),
                  "rr_per_s": round(statistics.median(raw["off"]["rr"]))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.reps, args.seconds)
    print(f"off: {res['off']['throughput_gbit_s']} Gbit/s, {res['off']['rr_per_s']} req/s "
          f"({res['reps']} alternated reps of {res['seconds']:g}s)")
    for m, t in res["ratios"].items():
        print(f"{m:<7} throughput x{t['throughput']['median']} [{t['throughput']['min']}..{t['throughput']['max']}]"
              f"   rr x{t['rr']['median']} [{t['rr']['min']}..{t['rr']['max']}]")
    sh = res["bpf_cpu_share"]
    print(f"agent's probes, kernel time as a share of all CPU time: throughput run {sh['throughput']:.3%}, "
          f"req/resp run {sh['rr']:.3%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
