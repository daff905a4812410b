"""Each probe against an independent witness in a two-namespace lab."""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.probes.registry import probe_class
from agent.sampler import ProbeSet
from agent.stats.histogram import percentile
from tests.bpf.conftest import require_tracepoint
from tests.bpf.netlab import iptables_counter, ss_srtt_ms

pytestmark = pytest.mark.bpf

PORT = 5201


def start(config, kernel, *names):
    ps = ProbeSet([probe_class(n)(config, kernel) for n in names])
    states = ps.start_all()
    for n in names:
        assert states[n].state.value == "up", states[n]
    return ps


def wait_line(proc, want, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if want in line:
            return line
        if proc.poll() is not None:
            raise AssertionError(f"traffic process exited: {proc.stderr.read()}")
    raise AssertionError(f"no {want!r} from traffic process")


def test_random_drop_shows_as_netfilter_drops_and_retransmits(config, kernel, lab):
    require_tracepoint(kernel, "skb:kfree_skb")
    require_tracepoint(kernel, "tcp:tcp_retransmit_skb")
    if not kernel.tracepoint("skb:kfree_skb").has("reason"):
        pytest.skip("kernel's kfree_skb has no reason field (< 5.17): NETFILTER_DROP not visible")
    ps = start(config, kernel, "skb_drop", "tcp_retrans")
    try:
        sink = lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT), "30")
        wait_line(sink, "ready")
        # baseline: a paced flow without faults
        ps.read_windows()
        snmp0 = lab.a.nstat()
        sender = lab.spawn(lab.a, "send", lab.b.ip4, str(PORT), "3", "20e6")
        sender.wait(10)
        base = ps.read_windows()
        base_retrans = base["tcp_retrans"].counts.get(lab.a.ip4, 0)

        lab.b.drop_randomly(PORT, 0.03, "eea-drop")
        ps.read_windows()
        snmp1 = lab.a.nstat()
        sender = lab.spawn(lab.a, "send", lab.b.ip4, str(PORT), "5", "80e6")
        sender.wait(15)
        time.sleep(0.5)  # let the last retransmissions land
        win = ps.read_windows()
        snmp2 = lab.a.nstat()
        rule_drops = iptables_counter(lab.b, "INPUT", "eea-drop")
    finally:
        ps.close_all()

    seen = win["skb_drop"].counts.get("NETFILTER_DROP", 0)
    print(f"NETFILTER_DROP probe {seen}, iptables rule {rule_drops}")
    assert rule_drops > 50, f"too few drops to compare ({rule_drops})"
    assert abs(seen - rule_drops) <= max(1, 0.01 * rule_drops), (seen, rule_drops)

    retrans = win["tcp_retrans"].counts.get(lab.a.ip4, 0)
    segs = snmp2["TcpRetransSegs"] - snmp1["TcpRetransSegs"]
    base_segs = snmp1["TcpRetransSegs"] - snmp0["TcpRetransSegs"]
    print(f"retransmits: baseline {base_retrans} skbs / {base_segs} segs; "
          f"with 3% drop {retrans} skbs / {segs} segs (nstat TcpRetransSegs)")
    assert retrans > base_retrans and retrans >= 10, (retrans, base_retrans)
    # events count skbs, SNMP counts segments: one skb carries one or more segments
    assert 0 < retrans <= segs, (retrans, segs)
    assert base_retrans <= base_segs


def test_tbf_srtt_p50_matches_ss(config, kernel, lab):
    require_tracepoint(kernel, "tcp:tcp_probe")
    lab.a.limit_rate("5mbit")
    ps = start(config, kernel, "tcp_rtt")
    try:
        sink = lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT), "30")
        wait_line(sink, "ready")
        sender = lab.spawn(lab.a, "send", lab.b.ip4, str(PORT), "10")
        wait_line(sender, "connected")
        time.sleep(2.5)  # past slow start
        ps.read_windows()
        samples = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            samples += ss_srtt_ms(lab.a, lab.b.ip4, PORT)
            time.sleep(0.1)
        win = ps.read_windows()
    finally:
        ps.close_all()
    hist = win["tcp_rtt"].hists[lab.a.ip4]
    probe_p50_ms = percentile(hist.layout, hist.counts, 0.5) / 1000
    ss_p50_ms = statistics.median(samples)
    assert len(samples) >= 20
    print(f"probe p50 {probe_p50_ms:.2f}ms, ss median {ss_p50_ms:.2f}ms over {len(samples)} samples")
    assert ss_p50_ms > 5, f"tbf did not build a queue: ss srtt {ss_p50_ms}ms"
    assert abs(probe_p50_ms - ss_p50_ms) / ss_p50_ms <= 0.15, (probe_p50_ms, ss_p50_ms)


def test_ipv4_ipv6_and_ipv4_mapped_flows_key_by_local_address(config, kernel, lab):
    """a sends over IPv4 and IPv6 (native sockets); b sends back from a dual-stack listener,
    where IPv4 peers appear as AF_INET6 with an IPv4-mapped address: that must key as b's
    IPv4 address, not as ::ffff:..."""
    require_tracepoint(kernel, "tcp:tcp_probe")
    ps = start(config, kernel, "tcp_rtt")
    try:
        sink = lab.spawn(lab.b, "sink", "::", str(PORT), "20")
        source = lab.spawn(lab.b, "source", "::", str(PORT + 1), "20", "8e6")
        wait_line(sink, "ready")
        wait_line(source, "ready")
        ps.read_windows()
        procs = []
        for dst in (lab.b.ip4, lab.b.ip6):
            procs.append(lab.spawn(lab.a, "send", dst, str(PORT), "1.5", "8e6"))
            procs.append(lab.spawn(lab.a, "drain", dst, str(PORT + 1), "1.5"))
        for p in procs:
            p.wait(15)
        win = ps.read_windows()
    finally:
        ps.close_all()
    keys = {k: h.count for k, h in win["tcp_rtt"].hists.items()}
    for addr in (lab.a.ip4, lab.a.ip6, lab.b.ip4, lab.b.ip6):
        assert keys.get(addr, 0) > 0, (addr, keys)
    assert not any(k.startswith("::ffff:") for k in keys), keys


def test_pure_receivers_are_not_sampled(config, kernel, lab):
    """A socket with nothing in flight cannot measure RTT: its srtt is stale, so it is skipped."""
    require_tracepoint(kernel, "tcp:tcp_probe")
    ps = start(config, kernel, "tcp_rtt")
    try:
        sink = lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT), "20")
        wait_line(sink, "ready")
        ps.read_windows()
        lab.spawn(lab.a, "send", lab.b.ip4, str(PORT), "1.5", "8e6").wait(15)
        win = ps.read_windows()
    finally:
        ps.close_all()
    keys = {k: h.count for k, h in win["tcp_rtt"].hists.items()}
    assert keys.get(lab.a.ip4, 0) > 50 and keys.get(lab.b.ip4, 0) == 0, keys


def _schedstat() -> dict[str, tuple[float, int, int]]:
    """(when read, run-queue wait ns, timeslices) of every thread, from
    /proc/<pid>/task/<tid>/schedstat (2nd and 3rd fields: the kernel's own sched_info
    accounting). Each thread carries its own read time: under contention a walk of /proc takes
    long enough that one timestamp for all of it would skew the rate."""
    out = {}
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*/schedstat"):
        try:
            f = task.read_text().split()
            out[str(task.parent)] = (time.monotonic(), int(f[1]), int(f[2]))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _measure_runqlat(ps, seconds: float):
    """One window of the probe and of the witness over the same time: the probe from one read to
    the next, each thread of the witness from its read before to its read after (a rate per
    thread, summed). Threads that start or exit between the walks are not in the witness."""
    ps.read_windows()
    before = _schedstat()
    time.sleep(seconds)
    after = _schedstat()
    win = ps.read_windows()
    hist = win["runqlat"].hists[""]  # the node histogram (per-cgroup rows beside it)
    both = [t for t in after if t in before]
    rate = sum((after[t][1] - before[t][1]) / (after[t][0] - before[t][0]) for t in both)
    slices = sum(after[t][2] - before[t][2] for t in both)
    wait = sum(after[t][1] - before[t][1] for t in both)
    top = sorted(both, key=lambda t: after[t][1] - before[t][1], reverse=True)[:8]
    return {
        "p95": percentile(hist.layout, hist.counts, 0.95),
        "probe_rate": hist.total / win["runqlat"].seconds,  # ns waited per second, all threads
        "witness_rate": rate,
        "probe_mean": hist.total / max(1, hist.count),
        "witness_mean": wait / max(1, slices),
        "lost": win["runqlat"].lost,
        # the witness's largest waiters, to tell a probe shortfall from a witness excess
        "top": [(_comm(t), round((after[t][1] - before[t][1]) / 1e6, 1)) for t in top],
    }


def _comm(task: str) -> str:
    try:
        return f"{Path(task, 'comm').read_text().strip()}[{Path(task).name}]"
    except OSError:
        return f"gone[{Path(task).name}]"


def test_runqlat_rises_under_cpu_hogs_and_matches_schedstat(config, kernel):
    """Two windows, without and with 2x-cores+1 extra busy processes, each under whatever else
    the machine is doing. In both, the probe's total wait per second matches the kernel's own
    per-thread run_delay accounting summed over all threads over the same window; the busy
    window's rise is the witness's rise, and p95 rises with it."""
    require_tracepoint(kernel, "sched:sched_switch")
    ps = start(config, kernel, "runqlat")
    hogs = []
    try:
        ps.read_windows()
        idle = _measure_runqlat(ps, 3)
        n = 2 * (os.cpu_count() or 1) + 1
        code = "import time\nend=time.monotonic()+10\nwhile time.monotonic()<end: pass\n"
        hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
        time.sleep(1)
        busy = _measure_runqlat(ps, 4)
        if not 0.85 <= busy["probe_rate"] / busy["witness_rate"] <= 1.15:
            # Seen twice in ~40 runs, on a quiet machine: the witness ~1 s/s above the probe
            # while the probe read exactly what the hogs make (5 on 2 CPUs: 3 s/s). One more
            # window tells a one-off from a probe that misses waits; both are printed.
            print(f"runqlat busy window outside 0.85-1.15: {busy}")
            busy = _measure_runqlat(ps, 3)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        ps.close_all()
    for name, m in (("idle", idle), (f"{n} hogs", busy)):
        print(f"runqlat {name}: p95 {m['p95'] / 1e6:.3f}ms; wait per second probe "
              f"{m['probe_rate'] / 1e9:.4f}s/s, schedstat {m['witness_rate'] / 1e9:.4f}s/s; "
              f"mean wait probe {m['probe_mean'] / 1e3:.1f}us, schedstat {m['witness_mean'] / 1e3:.1f}us")
    # Without the hogs, whatever else runs dominates, and threads that start or exit between the
    # two walks are not in the witness at all (measured: 0.5-2 ms/s apart on a quiet machine,
    # the probe up to 3x the witness while other tests spawned processes beside this one). So
    # there the witness is a lower bound; the hogs' window, where long-lived threads dominate,
    # is compared both ways.
    assert idle["witness_rate"] > 0
    assert idle["probe_rate"] >= 0.85 * idle["witness_rate"], idle
    assert 0.85 <= busy["probe_rate"] / busy["witness_rate"] <= 1.15, busy
    # and waits as long per switch-in as schedstat's run_delay per timeslice
    assert 0.8 <= busy["probe_mean"] / busy["witness_mean"] <= 1.25, busy
    # the hogs added waiting by the witness's own account, and p95 rose with it
    assert busy["witness_rate"] > 2 * idle["witness_rate"] + 1e8, (idle, busy)
    assert busy["p95"] > idle["p95"] and busy["p95"] > 1e6, (idle["p95"], busy["p95"])  # ns
