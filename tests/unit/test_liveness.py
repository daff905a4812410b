"""/healthz and /readyz mean something: 200 while reports keep coming, 503 once the sampler
stalls; a probe's retry (a recompile) runs on its own thread and never holds up a window."""

import threading

import pytest

from agent.config import Config
from agent.model import ProbeSnapshot, ProbeStateKind
from agent.sampler import ProbeRetrier, ProbeSet
from agent.server import Server
from agent.sampler import Sampler
from agent.service import Liveness, ReportBox, make_registry
from tests.unit.test_service import get


class Clock:
    def __init__(self):
        self.t = 50.0

    def __call__(self):
        return self.t


class Counter:
    name = "skb_drop"
    detail: dict = {}

    def __init__(self):
        self.n = 0

    def start(self):
        pass

    def read(self):
        self.n += 1
        return ProbeSnapshot(self.name, "", float(self.n), counts={"NO_SOCKET": self.n})

    def close(self):
        pass


@pytest.fixture
def served():
    clock = Clock()
    probes = ProbeSet([Counter()], clock=clock)
    probes.start_all()
    sampler = Sampler(Config(), probes, clock=clock)
    sampler.start()
    box = ReportBox(clock)
    live = Liveness(box, sample_interval=10, startup_grace=60, clock=clock)
    srv = Server("127.0.0.1", 0, make_registry(box, []), box.report, box.payload,
                 lambda: probes.states, live)
    srv.start()
    base = f"http://127.0.0.1:{srv.port}"
    yield clock, sampler, box, base
    srv.stop()


def test_start_up_grace_then_unhealthy_without_a_report(served):
    clock, _, _, base = served
    clock.t += 59
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/readyz")[0] == 503
    clock.t += 2  # 61 s after start, still no report: the start is wedged
    code, body = get(base + "/healthz")
    assert code == 503 and "no report 61s after start" in body


def test_stalled_sampler_turns_health_and_readiness_to_503(served):
    clock, sampler, box, base = served
    clock.t += 10
    box.publish(sampler.tick())
    assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 200
    clock.t += 30  # exactly 3 x sample_interval: still fresh
    assert get(base + "/healthz")[0] == 200
    clock.t += 0.5  # the sampler stalled: nothing published for more than 3 windows
    code, body = get(base + "/healthz")
    assert code == 503 and "30.5s old" in body and "3 x sample_interval" in body
    code, body = get(base + "/readyz")
    assert code == 503 and "not ready" in body and "probe skb_drop: up" in body
    box.publish(sampler.tick())  # it recovers: so does the health
    assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 200


class SlowRestart:
    """Fails its first start; its second start (the retry) blocks until released: a recompile
    that takes as long as the test wants."""

    name = "tcp_rtt"
    detail: dict = {}

    def __init__(self):
        self.starts = 0
        self.started_on = None
        self.in_retry = threading.Event()
        self.release = threading.Event()

    def start(self):
        self.starts += 1
        if self.starts == 1:
            raise RuntimeError("compile error: headers missing")
        self.started_on = threading.current_thread().name
        self.in_retry.set()
        assert self.release.wait(20), "never released"

    def read(self):
        return ProbeSnapshot(self.name, "us", 0.0)

    def close(self):
        pass


def test_a_slow_retry_never_holds_up_the_sampling_thread():
    slow = SlowRestart()
    probes = ProbeSet([slow, Counter()], retry_first=0.01)
    probes.start_all()
    assert probes.states["tcp_rtt"].state is ProbeStateKind.DOWN
    sampler = Sampler(Config(), probes)
    sampler.start()
    stop = threading.Event()
    retrier = ProbeRetrier(probes, stop, period=0.01)
    retrier.start()
    try:
        assert slow.in_retry.wait(10), "the retry never ran"
        # the recompile is in progress: windows still come, on the sampling thread
        done = []
        t = threading.Thread(target=lambda: done.extend([sampler.tick(), sampler.tick()]))
        t.start()
        t.join(10)
        assert len(done) == 2, "a tick waited for the retry"
        assert done[1].probes["tcp_rtt"].state is ProbeStateKind.DOWN
        assert done[1].probes["skb_drop"].state is ProbeStateKind.UP
        assert slow.started_on == "probe-retry"
    finally:
        slow.release.set()
        stop.set()
        retrier.join(5)
    assert probes.states["tcp_rtt"].state is ProbeStateKind.UP  # the retry did succeed
    assert slow.starts == 2  # and was not started twice while it was compiling


def test_a_start_that_finishes_after_close_all_is_closed():
    slow = SlowRestart()
    closed = []
    slow.close = lambda: closed.append(1)
    probes = ProbeSet([slow], retry_first=0.0)
    probes.start_all()
    stop = threading.Event()
    retrier = ProbeRetrier(probes, stop, period=0.01)
    retrier.start()
    assert slow.in_retry.wait(10)
    n = len(closed)
    probes.close_all()  # the agent stops while the retry compiles
    slow.release.set()
    stop.set()
    retrier.join(5)
    assert len(closed) == n + 2  # once by close_all, once when the late start returned
    assert probes.states["tcp_rtt"].state is not ProbeStateKind.UP
