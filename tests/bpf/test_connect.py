"""The connect probe against the client's own account: a client opens connections to a server
behind 20 ms of added delay (the experiment's TUN relay: this kernel has no netem), to a closed
port and to a port whose SYNs are dropped. Over the same window the probe's connect latency
p50 for the client's address is within 10 % of the client's own connect() timings, its failure
count equals the client's failures, its passive opens on the server's address equal the
server's accepts. Keyed by the lab's own addresses, so the other labs on the node don't count.
"""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.probes import connect
from agent.probes.registry import probe_class
from agent.probes.spec import Context, PodView
from agent.sampler import ProbeSet
from agent.config import Config
from agent.stats.histogram import percentile
from experiment.lab import RelayLab, _expect
from tests.bpf.conftest import require_tracepoint
from tests.bpf.netlab import NetLab

pytestmark = pytest.mark.bpf

CLIENT = Path(__file__).with_name("connect_client.py")
OPEN, CLOSED, DROPPED = 7411, 7412, 7413
N_OPEN, N_CLOSED, N_DROPPED = 40, 6, 4
DELAY_MS = 20.0


def test_connect_latency_and_failures_match_the_client(config, kernel):
    require_tracepoint(kernel, "sock:inet_sock_set_state")
    ps = ProbeSet([probe_class("connect")(config, kernel)])
    try:
        assert ps.start_all()["connect"].state.value == "up", ps.states
        with RelayLab(seed=21) as lab:
            c, s = lab.client, lab.server
            # a dropped SYN fails after tcp_syn_retries retransmissions: 1 -> about 3 s, not 2 min
            c.run("sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1")
            s.run("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", str(DROPPED), "--syn",
                  "-j", "DROP")
            lab.set_delay(DELAY_MS)
            srv = lab.spawn(s, sys.executable, str(CLIENT), "serve", s.ip4, str(OPEN),
                            str(N_OPEN), "60")
            _expect(srv, "ready")
            ps.read_windows()
            cli = lab.spawn(c, sys.executable, str(CLIENT), "connect", s.ip4, str(OPEN),
                            str(N_OPEN), str(CLOSED), str(N_CLOSED), str(DROPPED), str(N_DROPPED))
            out, err = cli.communicate(timeout=60)
            assert cli.returncode == 0, err
            seen = json.loads(out.strip().splitlines()[-1])
            accepted = json.loads(srv.communicate(timeout=30)[0].strip().splitlines()[-1])
            time.sleep(0.1)  # the last passive opens' state changes, already done by accept
            win = ps.read_windows()["connect"]
    finally:
        ps.close_all()

    assert seen["other"] == [] and seen["local"] == c.ip4, seen
    client_s = seen["established_s"]
    assert len(client_s) == N_OPEN
    assert seen["refused"] == N_CLOSED and seen["timed_out"] == N_DROPPED, seen
    assert accepted["accepted"] == N_OPEN

    h = win.hists.get(c.ip4)
    assert h is not None and h.count == len(client_s), (h, len(client_s))
    agent_p50 = percentile(h.layout, h.counts, 0.5) * connect.HIST.unit_seconds
    client_p50 = statistics.median(client_s)
    print(f"\nconnect p50: agent {agent_p50 * 1000:.3f} ms, client {client_p50 * 1000:.3f} ms "
          f"({len(client_s)} connects behind {DELAY_MS} ms); failures: agent "
          f"{win.counts.get(connect.count_key(connect.FAILED, c.ip4), 0)}, client "
          f"{seen['refused']} refused + {seen['timed_out']} timed out; lost {win.lost}")
    assert client_p50 > DELAY_MS / 1000  # the relay's delay is in the path
    assert agent_p50 == pytest.approx(client_p50, rel=0.10)

    counts = connect.split_counts(win.counts)
    assert counts[connect.FAILED].get(c.ip4, 0) == seen["refused"] + seen["timed_out"]
    assert counts[connect.PASSIVE].get(s.ip4, 0) == accepted["accepted"]
    assert c.ip4 not in counts[connect.PASSIVE] and s.ip4 not in counts[connect.FAILED]

    # the same window through the spec's summary: a pod owning the client's address
    ctx = Context(pods=[PodView("uid-client", (c.ip4,), False, 100.0)], default_rtt_slo_ms=100.0,
                  window_seconds=10.0, score=Config().score)
    pod = connect.SPEC.summarize(win, win, ctx).pods["uid-client"]
    failed = seen["refused"] + seen["timed_out"]
    assert pod["connects"] == N_OPEN and pod["connect_failures"] == failed
    assert pod["connect_failure_rate"] == pytest.approx(failed / (failed + N_OPEN))
    assert pod["connect_p50"] == pytest.approx(client_p50, rel=0.10)


def test_ipv4_and_ipv6_opens_key_by_their_own_local_address(config, kernel):
    """Over a veth pair: IPv6 and IPv4 connects from one namespace to a dual-stack listener in
    the other. Each family's opens land on the client's address of that family, the passive
    opens on the server's (IPv4-mapped ones as IPv4), each count equal to the client's."""
    require_tracepoint(kernel, "sock:inet_sock_set_state")
    n, m = 12, 3
    ps = ProbeSet([probe_class("connect")(config, kernel)])
    try:
        assert ps.start_all()["connect"].state.value == "up", ps.states
        with NetLab() as lab:
            a, b = lab.a, lab.b
            srv = b.popen(sys.executable, str(CLIENT), "serve", "::", str(OPEN), str(2 * n), "60")
            lab._procs.append(srv)
            _expect(srv, "ready")
            ps.read_windows()
            seen = {}
            for dst in (b.ip6, b.ip4):
                cli = a.popen(sys.executable, str(CLIENT), "connect", dst, str(OPEN), str(n),
                              str(CLOSED), str(m), str(DROPPED), "0")
                lab._procs.append(cli)
                out, err = cli.communicate(timeout=60)
                assert cli.returncode == 0, err
                seen[dst] = json.loads(out.strip().splitlines()[-1])
            accepted = json.loads(srv.communicate(timeout=30)[0].strip().splitlines()[-1])
            win = ps.read_windows()["connect"]
    finally:
        ps.close_all()
    counts = connect.split_counts(win.counts)
    assert accepted["accepted"] == 2 * n
    for dst, local in ((b.ip6, a.ip6), (b.ip4, a.ip4)):
        got = seen[dst]
        assert got["local"] == local and len(got["established_s"]) == n, got
        assert got["refused"] == m and got["other"] == [], got
        assert win.hists[local].count == n
        assert counts[connect.FAILED].get(local, 0) == m
    assert counts[connect.PASSIVE].get(b.ip6, 0) == n
    assert counts[connect.PASSIVE].get(b.ip4, 0) == n  # ::ffff:b.ip4 on the dual-stack socket


def test_pending_opens_beyond_the_start_table_are_counted_lost(kernel):
    """More opens pending at once (SYNs dropped, so they stay in SYN_SENT) than the start table
    has entries: each start that takes over another's entry is counted lost, never hidden. The
    table has 16 * max_addresses entries; other labs on the node can only add to the count."""
    require_tracepoint(kernel, "sock:inet_sock_set_state")
    import dataclasses
    import socket

    small = dataclasses.replace(Config(), max_addresses=2)
    entries = connect.SPEC.expected_entries(small)["connect_start"]
    opens = 10 * entries
    ps = ProbeSet([probe_class("connect")(small, kernel)])
    try:
        assert ps.start_all()["connect"].state.value == "up", ps.states
        with NetLab() as lab:
            lab.b.run("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", str(DROPPED),
                      "--syn", "-j", "DROP")
            code = ("import socket, sys, time\n"
                    "socks = []\n"
                    f"for _ in range({opens}):\n"
                    "    s = socket.socket(); s.setblocking(False)\n"
                    f"    s.connect_ex(({lab.b.ip4!r}, {DROPPED})); socks.append(s)\n"
                    "print('pending', flush=True)\n"
                    "sys.stdin.readline()\n")
            ps.read_windows()
            cli = lab.a.popen(sys.executable, "-c", code, stdin=subprocess.PIPE)
            lab._procs.append(cli)
            assert "pending" in cli.stdout.readline()
            win = ps.read_windows()["connect"]
            cli.communicate("\n", timeout=30)  # the client closes them: aborted opens
    finally:
        ps.close_all()
    print(f"\n{opens} opens pending on {entries} entries: lost {win.lost}")
    assert win.lost >= opens - entries
