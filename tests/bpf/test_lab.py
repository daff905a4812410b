"""Each probe against an independent witness in a two-namespace lab."""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.model import merge_histograms
from agent.probes import PROBE_CLASSES
from agent.sampler import ProbeSet
from agent.stats.histogram import percentile
from tests.bpf.conftest import require_tracepoint
from tests.bpf.netlab import iptables_counter, ss_srtt_ms

pytestmark = pytest.mark.bpf

PORT = 5201


def start(config, kernel, *names):
    ps = ProbeSet([PROBE_CLASSES[n](config, kernel) for n in names])
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


def _all_run_delay_ns() -> dict[str, int]:
    """Run-queue wait of every thread, from /proc/<pid>/task/<tid>/schedstat (2nd field)."""
    out = {}
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*/schedstat"):
        try:
            out[str(task.parent)] = int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def test_runqlat_rises_under_cpu_hogs_and_matches_schedstat(config, kernel):
    """p95 rises with 2x-cores+1 busy processes; the probe's total wait per second matches the
    kernel's own per-thread run_delay accounting (/proc/*/task/*/schedstat) summed over all
    threads."""
    require_tracepoint(kernel, "sched:sched_switch")
    ps = start(config, kernel, "runqlat")
    hogs = []
    try:
        ps.read_windows()
        time.sleep(2)
        idle = merge_histograms(ps.read_windows()["runqlat"].hists.values())
        n = 2 * (os.cpu_count() or 1) + 1
        code = "import time\nend=time.monotonic()+8\nwhile time.monotonic()<end: pass\n"
        hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
        time.sleep(1)
        # Walking /proc is slow under contention, so each side is timed by its own interval:
        # the witness from the middle of one walk to the middle of the next.
        ps.read_windows()
        p0 = time.monotonic()
        t0 = time.monotonic()
        before = _all_run_delay_ns()
        t1 = time.monotonic()
        time.sleep(4)
        t2 = time.monotonic()
        after = _all_run_delay_ns()
        t3 = time.monotonic()
        win = ps.read_windows()
        p1 = time.monotonic()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        ps.close_all()
    busy = merge_histograms(win["runqlat"].hists.values())
    p95_idle = percentile(idle.layout, idle.counts, 0.95)
    p95_busy = percentile(busy.layout, busy.counts, 0.95)
    witness = sum(after[t] - before[t] for t in after if t in before)
    probe_rate = busy.total / (p1 - p0)
    witness_rate = witness / ((t2 + t3) / 2 - (t0 + t1) / 2)
    print(f"runqlat p95 idle {p95_idle / 1e6:.3f}ms, with {n} hogs {p95_busy / 1e6:.3f}ms; "
          f"run-queue wait per second: probe {probe_rate / 1e9:.3f}s/s, "
          f"schedstat {witness_rate / 1e9:.3f}s/s")
    assert p95_busy > 5 * p95_idle and p95_busy > 1e6, (p95_idle, p95_busy)  # ns
    assert witness > 0
    assert 0.85 <= probe_rate / witness_rate <= 1.15, (probe_rate, witness_rate)
