"""A hand-built window: probe snapshots, node resources and pods, with known answers."""

from agent.config import Config
from agent.model import (Histogram, NodeResources, PodSample, ProbeSnapshot, ProbeState,
                         ProbeStateKind)
from agent.report import build_report
from agent.stats.histogram import SlotLayout

RTT = SlotLayout(5, 21)
RQ = SlotLayout(5, 30)
GiB = 1 << 30


def hist(layout, values_counts):
    counts, total = {}, 0
    for v, n in values_counts:
        s = layout.slot_of(v)
        counts[s] = counts.get(s, 0) + n
        total += v * n
    return Histogram(layout, counts, total)


def states(**down):
    out = {}
    for name in ("tcp_rtt", "tcp_retrans", "skb_drop", "runqlat"):
        if name in down:
            out[name] = ProbeState(name, ProbeStateKind.DOWN, down[name])
        else:
            out[name] = ProbeState(name, ProbeStateKind.UP)
    return out


def windows():
    return {
        "tcp_rtt": ProbeSnapshot("tcp_rtt", "us", 0.0, hists={
            "10.0.0.5": hist(RTT, [(2000, 90), (300_000, 10)]),  # pod a
            "192.168.1.10": hist(RTT, [(500, 100)]),  # the node (and host-network pods)
        }),
        "tcp_retrans": ProbeSnapshot("tcp_retrans", "", 0.0, counts={"10.0.0.5": 3, "192.168.1.10": 1}),
        "skb_drop": ProbeSnapshot("skb_drop", "", 0.0, counts={"NO_SOCKET": 50, "QDISC_DROP": 10}),
        "runqlat": ProbeSnapshot("runqlat", "ns", 0.0, hists={"": hist(RQ, [(2_000_000, 100)])}),
    }


PODS = [
    PodSample("uid-a", "team-a", "web-0", "team-a", cpu_used=0.5, cpu_limit=1.0,
              memory_used=1 * GiB, memory_limit=2 * GiB, addresses=("10.0.0.5",), rtt_slo_ms=100.0),
    PodSample("uid-b", "kube-system", "proxy", "kube-system", cpu_used=0.25, addresses=("192.168.1.10",),
              host_network=True),
    PodSample("uid-c", "team-b", "batch-0", "team-b", cpu_used=1.0, memory_used=2 * GiB,
              memory_limit=None, addresses=("10.0.0.9",)),
]

RESOURCES = NodeResources(cpu_allocatable=4.0, memory_allocatable=16 * GiB, cpu_utilization=0.5,
                          cpu_used=2.0, memory_used=8 * GiB)


def cumulative():
    w = windows()
    # cumulative = a bit more than one window
    w["tcp_retrans"] = ProbeSnapshot("tcp_retrans", "", 0.0, counts={"10.0.0.5": 7, "192.168.1.10": 2})
    w["skb_drop"] = ProbeSnapshot("skb_drop", "", 0.0, counts={"NO_SOCKET": 120, "QDISC_DROP": 10})
    return w


def report(config=None, st=None, win=None, pods=PODS, segments=(10_000, 50)):
    return build_report(
        config or Config(), node_name="node-1", sequence=7, timestamp="2026-11-23T10:00:00.000000Z",
        window_seconds=10.0, states=st or states(), windows=win if win is not None else windows(),
        cumulative=cumulative(), tcp_segments=segments, resources=RESOURCES, pods=pods,
        program_stats={"runqlat": {"tracepoint__sched__sched_switch": (5_000_000, 40_000)}},
        sample_duration_seconds=0.012, agent_instance="5f2c0d8e9a1b4c3d")
