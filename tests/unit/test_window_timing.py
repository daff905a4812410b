"""Every rate is divided by the time between the two reads its counts are the difference of,
not by a window measured at another moment of the tick (fake clock, fake probes)."""

import dataclasses

import pytest

from agent.config import Config
from agent.model import ProbeSnapshot
from agent.sampler import ProbeSet
from agent.sampler import Sampler
from tests.conftest import FakeProbe

DROPS_PER_SECOND = 100.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def DropProbe(clock: Clock) -> FakeProbe:
    """skb_drop whose kernel counter grows by exactly DROPS_PER_SECOND of clock time."""
    attached = {}

    def snapshot(_n):
        n = round((clock() - attached["at"]) * DROPS_PER_SECOND)
        return ProbeSnapshot("skb_drop", "", clock(), counts={"NO_SOCKET": n})

    return FakeProbe("skb_drop", snapshot, on_start=lambda: attached.update(at=clock()))


class SlowPods:
    """A pod reader whose duration differs from tick to tick (the cgroup walk, the API)."""

    def __init__(self, clock: Clock, delays: list[float]) -> None:
        self.clock = clock
        self.delays = list(delays)

    def pods(self):
        self.clock.t += self.delays.pop(0)
        return ()

    def allocatable(self):
        return None


def test_drop_rate_is_exact_on_every_window_whatever_the_readers_take():
    clock = Clock()
    probes = ProbeSet([DropProbe(clock)], clock=clock)
    probes.start_all()
    delays = [0.7, 0.05, 2.3, 0.0, 1.1, 0.4]
    sampler = Sampler(Config(), probes, SlowPods(clock, delays), clock=clock)
    clock.t += 3.0  # the compile of the other probes, say
    sampler.start()
    rates = []
    for _ in range(len(delays)):
        clock.t += 10.0  # the sampling interval, minus what the tick itself took
        r = sampler.tick()
        rates.append(r.figure("skb_drop", "drop_rate"))
        assert r.figure("skb_drop", "drop_reason_rates")["NO_SOCKET"] == pytest.approx(DROPS_PER_SECOND)
        # the report's window is the probes' window: from one probe read to the next
        assert r.window_seconds == pytest.approx(10.0 + (delays[len(rates) - 2] if len(rates) > 1 else 0.0))
    assert rates == pytest.approx([DROPS_PER_SECOND] * len(delays))


def test_a_probe_restarted_mid_run_is_divided_by_the_time_since_it_attached():
    clock = Clock()
    probe = DropProbe(clock)
    probes = ProbeSet([probe], clock=clock)
    probes.start_all()
    clock.t += 4.0
    win = probes.read_windows()["skb_drop"]  # the first read: everything since the attach
    assert win.seconds == pytest.approx(4.0)
    assert win.counts["NO_SOCKET"] / win.seconds == pytest.approx(DROPS_PER_SECOND)
    clock.t += 2.5
    win = probes.read_windows()["skb_drop"]
    assert win.since == pytest.approx(1004.0) and win.seconds == pytest.approx(2.5)


def test_pod_traffic_rate_divides_by_its_own_reads():
    from agent.export.prometheus import render_report
    from tests.unit.report_fixture import report

    r = report()
    pod = r.pods[0]
    r = dataclasses.replace(r, pods=(dataclasses.replace(pod, net_rx_bytes=3000, net_tx_bytes=600,
                                                          net_seconds=1.5),) + r.pods[1:])
    fam = next(m for m in render_report(r) if m.name == "ebpf_pod_network_receive_bytes_per_second")
    (sample,) = [s for s in fam.samples if s.labels["pod"] == pod.pod]
    assert sample.value == pytest.approx(2000.0)  # not 3000 / the report's 10 s window
