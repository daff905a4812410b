"""Accuracy of the in-kernel histograms: percentiles read from the probe's histogram against
exact percentiles of the same samples, recorded one by one by a companion BPF program on the
same tracepoints (perf buffer) while the probe runs. The recorded values are also replayed
through the slot rule (agent.stats.histogram.SlotLayout.slot_of) to show which part of the
error is binning.

- tcp_rtt: srtt of every tcp:tcp_probe event that passes the probe's filter (data in flight), for
  the lab's fresh addresses only, under flows whose RTT is spread by a tbf queue (50 Mbit/s, up to 20 ms);
- runqlat: every wakeup -> switch-in latency, recorded by a reference implementation (a pid-keyed
  hash, the probe's previous design) over the same window as the probe's histogram difference.

    .venv/bin/python -m bench.accuracy [--seconds 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

from agent.config import Config
from agent.probes import registry
from agent.probes.runqlat import RunqlatProbe
from agent.probes.tcp_rtt import TcpRttProbe
from agent.stats.histogram import percentile
from tests.bpf.netlab import NetLab

QS = (0.5, 0.9, 0.99)

RTT_REC = r"""
#include "common.h"
struct rec { u8 addr[16]; u64 srtt; };
BPF_PERF_OUTPUT(rtt_rec);
TRACEPOINT_PROBE(tcp, tcp_probe)
{
    struct rec r = {};
    if (args->snd_nxt == args->snd_una)
        return 0;
    u16 family = *(u16 *)&args->saddr[0];
    if (family == AF_INET)
        addr_from_v4(r.addr, &args->saddr[4]);
    else if (family == AF_INET6)
        __builtin_memcpy(r.addr, &args->saddr[8], 16);
    else
        return 0;
    r.srtt = args->srtt;
    rtt_rec.perf_submit(args, &r, sizeof(r));
    return 0;
}
"""

RUNQ_REC = r"""
#include "common.h"
BPF_HASH(start, u32, u64, 65536);
BPF_PERF_OUTPUT(runq_rec);
static __always_inline void enq(u32 pid) { if (pid) { u64 ts = bpf_ktime_get_ns(); start.update(&pid, &ts); } }
TRACEPOINT_PROBE(sched, sched_wakeup) { enq(args->pid); return 0; }
TRACEPOINT_PROBE(sched, sched_wakeup_new) { enq(args->pid); return 0; }
TRACEPOINT_PROBE(sched, sched_switch)
{
    if ((args->prev_state & RUNNABLE_STATE_MASK) == 0)
        enq(args->prev_pid);
    u32 pid = args->next_pid;
    if (!pid) return 0;
    u64 *tsp = start.lookup(&pid);
    if (!tsp) return 0;
    u64 now = bpf_ktime_get_ns();
    u64 d = now > *tsp ? now - *tsp : 0;
    start.delete(&pid);
    runq_rec.perf_submit(args, &d, sizeof(d));
    return 0;
}
"""


def exact(values: list[int], q: float) -> float:
    """The sample quantile with the same rank convention as the histogram (rank = q * n)."""
    v = sorted(values)
    return float(v[max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))])


def compare(name: str, layout, kernel_counts: dict, values: list[int]) -> dict:
    replay: dict[int, int] = {}
    for x in values:
        s = layout.slot_of(x)
        replay[s] = replay.get(s, 0) + 1
    row = {"probe": name, "samples_kernel": sum(kernel_counts.values()), "samples_recorded": len(values)}
    worst = 0.0
    for q in QS:
        e = exact(values, q)
        k = percentile(layout, kernel_counts, q)
        r = percentile(layout, replay, q)
        err = abs(k - e) / e if e else 0.0
        worst = max(worst, err)
        row[f"p{int(q * 100)}"] = {"exact": e, "kernel": round(k, 1), "replay": round(r, 1),
                                   "error_pct": round(100 * err, 2)}
    row["max_error_pct"] = round(100 * worst, 2)
    return row


def run(seconds: float) -> list[dict]:
    from bcc import BPF

    config = Config()
    kernel = registry.detect_kernel(config)
    rtt, runq = TcpRttProbe(config, kernel), RunqlatProbe(config, kernel)
    rows = []
    # -- tcp_rtt --
    values: list[int] = []
    lab_addrs: set[bytes] = set()
    rtt.start()
    rec = BPF(text=RTT_REC, cflags=rtt.cflags())

    def on_rtt(_cpu, data, _size):
        r = ctypes.cast(data, ctypes.POINTER(ctypes.c_ubyte * 24)).contents
        if bytes(r[:16]) in lab_addrs:
            values.append(int.from_bytes(bytes(r[16:24]), "little"))

    rec["rtt_rec"].open_perf_buffer(on_rtt, page_cnt=256)
    try:
        with NetLab() as lab:
            import ipaddress
            lab_addrs = {ipaddress.IPv6Address("::ffff:" + lab.a.ip4).packed,
                         ipaddress.IPv6Address(lab.a.ip6).packed}
            lab.a.limit_rate("50mbit", "64kbit", "20ms")
            lab.spawn(lab.b, "sink", "::", "5201", str(seconds + 10))
            time.sleep(0.3)
            lab.spawn(lab.a, "send", lab.b.ip4, "5201", str(seconds), "20e6")
            lab.spawn(lab.a, "send", lab.b.ip6, "5201", str(seconds))
            end = time.monotonic() + seconds + 0.5
            while time.monotonic() < end:
                rec.perf_buffer_poll(100)
            rec.perf_buffer_poll(100)
            snap = rtt.read()
            counts: dict[int, int] = {}
            for addr, h in snap.hists.items():
                import ipaddress as ip
                a = ip.ip_address(addr)
                packed = (ip.IPv6Address("::ffff:" + addr) if a.version == 4 else a).packed
                if packed in lab_addrs:
                    for s, c in h.counts.items():
                        counts[s] = counts.get(s, 0) + c
        rows.append(compare("tcp_rtt (us)", rtt.layout, counts, values))
    finally:
        rec.cleanup()
        rtt.close()
    # -- runqlat --
    lat: list[int] = []
    runq.start()
    rec = BPF(text=RUNQ_REC, cflags=runq.cflags())
    recording = [False]

    def on_runq(_cpu, data, _size):
        if recording[0]:
            lat.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint64)).contents.value)

    rec["runq_rec"].open_perf_buffer(on_runq, page_cnt=1024)
    try:
        code = f"import time\nend=time.monotonic()+{seconds}\nwhile time.monotonic()<end: time.sleep(0.0002)\n"
        hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3 * (os.cpu_count() or 1))]
        time.sleep(0.5)
        rec.perf_buffer_poll(0)
        before = runq.read().hists[""].counts
        recording[0] = True
        end = time.monotonic() + seconds / 2
        while time.monotonic() < end:
            rec.perf_buffer_poll(50)
        after = runq.read().hists[""].counts
        rec.perf_buffer_poll(0)
        recording[0] = False
        for h in hogs:
            h.wait()
        counts = {s: after.get(s, 0) - before.get(s, 0) for s in after if after.get(s, 0) - before.get(s, 0)}
        rows.append(compare("runqlat (ns)", runq.layout, counts, lat))
    finally:
        rec.cleanup()
        runq.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = run(args.seconds)
    for r in rows:
        print(f"{r['probe']:<14} kernel {r['samples_kernel']} samples, recorded {r['samples_recorded']}; "
              + "  ".join(f"p{q}: exact {r[f'p{q}']['exact']:g} kernel {r[f'p{q}']['kernel']:g} "
                          f"({r[f'p{q}']['error_pct']}%)" for q in (50, 90, 99)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
