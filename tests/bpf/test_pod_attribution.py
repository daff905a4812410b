"""Per-pod network figures in the lab: two "pods" (namespaces with their own addresses) with
different impairments; each pod's srtt and retransmits match its own witness (ss -ti and nstat
inside its namespace), not the other's."""

import statistics
import time

import pytest

from agent.model import PodSample
from agent.probes.registry import probe_class
from agent.sampler import ProbeSet
from agent.sampler import Sampler
from tests.bpf.conftest import require_tracepoint
from tests.bpf.netlab import ss_srtt_ms

pytestmark = pytest.mark.bpf
PORT_A, PORT_B = 5301, 5302


class StaticPods:
    def __init__(self, pods):
        self._pods = pods

    def pods(self):
        return self._pods

    def allocatable(self):
        return None



class PodFigures:
    """A pod's figures as the test reads them (ms for the srtt, as ss prints it)."""

    def __init__(self, p):
        self.pod = p.pod
        self.rtt_p50_ms = p.figures["tcp_rtt"]["rtt_p50"] * 1000
        self.retrans_events = p.figures["tcp_retrans"]["retrans_events"]


def test_each_pod_matches_its_own_witness(config, kernel, lab):
    require_tracepoint(kernel, "tcp:tcp_probe")
    require_tracepoint(kernel, "tcp:tcp_retransmit_skb")
    # pod a: what a sends to b's port goes through a 5 mbit/s tbf (queueing delay -> high srtt
    # for a); everything else a sends, such as its ACKs to b, bypasses it (htb default class)
    dev = lab.a.dev
    lab.a.run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
    lab.a.run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
              "rate", "5mbit", "ceil", "5mbit")
    lab.a.run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
              "rate", "10gbit")
    lab.a.run("tc", "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "tbf",
              "rate", "5mbit", "burst", "32kbit", "latency", "400ms")
    lab.a.run("tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "u32",
              "match", "ip", "dport", str(PORT_B), "0xffff", "flowid", "1:10")
    # pod b's data to a is randomly dropped on a's input (-> b retransmits)
    lab.a.drop_randomly(PORT_A, 0.03)
    pods = [
        PodSample("uid-a", "lab", "pod-a", "team-a", addresses=(lab.a.ip4,)),
        PodSample("uid-b", "lab", "pod-b", "team-b", addresses=(lab.b.ip4,)),
    ]
    ps = ProbeSet([probe_class(n)(config, kernel) for n in ("tcp_rtt", "tcp_retrans")])
    ps.start_all()
    sampler = Sampler(config, ps, StaticPods(pods))
    try:
        lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT_B), "30")
        lab.spawn(lab.a, "sink", lab.a.ip4, str(PORT_A), "30")
        time.sleep(0.5)
        lab.spawn(lab.a, "send", lab.b.ip4, str(PORT_B), "9")  # a -> b, bulk through the tbf
        lab.spawn(lab.b, "send", lab.a.ip4, str(PORT_A), "9", "20e6")  # b -> a, paced, lossy
        time.sleep(2.5)
        sampler.start()
        snmp_a0, snmp_b0 = lab.a.nstat(), lab.b.nstat()
        ss_a, ss_b = [], []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ss_a += ss_srtt_ms(lab.a, lab.b.ip4, PORT_B)
            ss_b += ss_srtt_ms(lab.b, lab.a.ip4, PORT_A)
            time.sleep(0.1)
        report = sampler.tick()
        snmp_a1, snmp_b1 = lab.a.nstat(), lab.b.nstat()
    finally:
        ps.close_all()
    by = {p.pod: p for p in report.pods}
    a = PodFigures(by["pod-a"])
    b = PodFigures(by["pod-b"])
    seg_a = snmp_a1["TcpRetransSegs"] - snmp_a0["TcpRetransSegs"]
    seg_b = snmp_b1["TcpRetransSegs"] - snmp_b0["TcpRetransSegs"]
    print(f"pod-a srtt p50 {a.rtt_p50_ms:.2f}ms (ss {statistics.median(ss_a):.2f}ms), "
          f"retrans {a.retrans_events} skbs / {seg_a} segs; pod-b srtt p50 {b.rtt_p50_ms:.2f}ms "
          f"(ss {statistics.median(ss_b):.2f}ms), retrans {b.retrans_events} skbs / {seg_b} segs")
    # srtt: each pod against ss in its own namespace. Each pod has one sending socket; its
    # receiving socket's samples (few: it sends only ACKs) are part of the pod's histogram too.
    for pod, ss in ((a, ss_a), (b, ss_b)):
        assert len(ss) >= 20
        want = statistics.median(ss)
        deciles = statistics.quantiles(ss, n=10)
        # within 25 % of ss's median, or within ss's own spread over the same window (its 10th
        # to 90th percentile): the probe weighs samples by ACK, ss by time, and they part when
        # srtt swings, as a sub-millisecond srtt does on a busy machine (measured: pod b 0.042 ms
        # against ss 0.11 ms with other load beside the test); tests/bpf/test_lab.py holds the
        # steady single-flow case to 15 %
        lo, hi = min(deciles[0], 0.75 * want), max(deciles[-1], 1.25 * want)
        assert lo <= pod.rtt_p50_ms <= hi, (pod.pod, pod.rtt_p50_ms, want, deciles[0], deciles[-1])
    assert a.rtt_p50_ms > 10 * b.rtt_p50_ms  # the tbf delays only pod a's flow
    # retransmits: skbs <= segments of its own namespace; the lossy pod b retransmits, and
    # each pod's count is bounded by its own witness, not the other's
    assert b.retrans_events >= 10 and b.retrans_events <= seg_b
    assert a.retrans_events <= seg_a
    assert b.retrans_events > a.retrans_events


def test_pod_throughput_from_its_own_network_namespace(lab):
    """A cgroup whose process lives in lab namespace a: its bytes over a window match the veth's
    own counters in that namespace; a cgroup in the host namespace reports none (host traffic)."""
    import os
    import uuid

    from agent.cgroups.read import CgroupReader, read_cgroup2_root
    from agent.config import Config
    from agent.kube import StandaloneMetadata
    from agent.pods import ClusterPods

    root = read_cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    name = f"eea-net-{uuid.uuid4().hex[:8]}"
    host_name = name + "-host"
    cg, cg_host = os.path.join(root, name), os.path.join(root, host_name)
    os.mkdir(cg)
    os.mkdir(cg_host)
    sleeper = None
    try:
        lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT_B), "30")
        time.sleep(0.5)
        sender = lab.spawn(lab.a, "send", lab.b.ip4, str(PORT_B), "8", "16e6")
        time.sleep(0.3)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(sender.pid))  # "ip netns exec" has exec'd into python inside ns a
        import subprocess
        import sys as _sys

        sleeper = subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(30)"])
        with open(os.path.join(cg_host, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        pods = ClusterPods(Config(), CgroupReader(root, standalone_depth=1), StandaloneMetadata())
        pods.start()

        def veth_tx():
            return int(lab.a.run("cat", f"/sys/class/net/{lab.a.dev}/statistics/tx_bytes").stdout)

        # each read of the pod reader is bracketed by the witness, read before and after it:
        # whatever the machine's load makes those reads take, the pod's bytes lie between the
        # inner and the outer difference of the brackets
        w0 = veth_tx()
        pods.pods()
        w1 = veth_tx()
        time.sleep(3)
        w2 = veth_tx()
        got = {p.pod: p for p in pods.pods()}
        w3 = veth_tx()
    finally:
        if sleeper:
            sleeper.kill()
            sleeper.wait()
        lab.down()
        for path in (cg, cg_host):
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.05)
    p, h = got[name], got[host_name]
    inner, outer = w2 - w1, w3 - w0
    print(f"pod tx {p.net_tx_bytes} bytes, veth counter between {inner} and {outer} bytes")
    assert inner > 1_000_000
    assert inner <= p.net_tx_bytes <= outer
    assert p.net_rx_bytes > 0  # the ACKs
    assert h.net_tx_bytes is None and h.net_rx_bytes is None  # host network: not the pod's
