"""The running service with fake probes: failures stay local, HTTP reflects them, scrapes never
trigger collection."""

import urllib.error
import urllib.request

import pytest

from agent.config import Config
from agent.model import Histogram, ProbeSnapshot
from agent.sampler import ProbeSet
from agent.server import Server
from agent.sampler import Sampler
from agent.service import Agent, Liveness, ReportBox, make_registry
from agent.stats.histogram import SlotLayout
from tests.conftest import FakeProbe

L = SlotLayout(5, 21)


def Fake(name, fail_start=None, fail_read_after=None):
    """A probe of that name whose counts grow by 10 a read, shaped like the real probe's."""
    def snapshot(n):
        n *= 10
        if name == "tcp_rtt":
            return ProbeSnapshot(name, "us", 0.0,
                                 hists={"127.0.0.1": Histogram(L, {L.slot_of(1000): n}, 1000 * n)})
        if name == "runqlat":
            return ProbeSnapshot(name, "ns", 0.0,
                                 hists={"": Histogram(SlotLayout(5, 30), {L.slot_of(50_000): n}, 0)})
        return ProbeSnapshot(name, "", 0.0, counts={"NO_SOCKET": n})
    return FakeProbe(name, snapshot, start_exc=RuntimeError(fail_start) if fail_start else None,
                     fail_read_after=fail_read_after)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def service():
    probes = ProbeSet([Fake("tcp_rtt"), Fake("tcp_retrans", fail_start="compile error: boom"),
                       Fake("skb_drop", fail_read_after=1), Fake("runqlat")])
    probes.start_all()
    sampler = Sampler(Config(), probes)
    box = ReportBox()
    reg = make_registry(box, [sampler.metrics])
    srv = Server("127.0.0.1", 0, reg, box.report, box.payload, lambda: probes.states,
                 Liveness(box, sample_interval=10, startup_grace=120))
    srv.start()
    yield sampler, box, srv
    srv.stop()


def test_not_ready_before_the_first_window(service):
    sampler, box, srv = service
    code, body = get(f"http://127.0.0.1:{srv.port}/readyz")
    assert code == 503 and "no full window" in body
    code, body = get(f"http://127.0.0.1:{srv.port}/healthz")
    assert code == 200 and body.startswith("ok: starting")
    assert get(f"http://127.0.0.1:{srv.port}/report")[0] == 503


def test_failures_stay_local_and_are_explained(service):
    sampler, box, srv = service
    sampler.start()  # reads once (baseline)
    box.publish(sampler.tick())  # skb_drop's second read raises here
    base = f"http://127.0.0.1:{srv.port}"
    code, body = get(base + "/readyz")
    assert code == 200
    assert "probe tcp_retrans: down (start failed: compile error: boom)" in body
    assert "probe skb_drop: down (read failed: map read failed: EFAULT)" in body
    assert "probe tcp_rtt: up" in body
    _, metrics = get(base + "/metrics")
    assert 'ebpf_probe_up{probe="tcp_retrans"} 0.0' in metrics
    assert 'ebpf_probe_up{probe="skb_drop"} 0.0' in metrics
    assert 'ebpf_probe_up{probe="tcp_rtt"} 1.0' in metrics
    assert "ebpf_rtt_p50_milliseconds" in metrics and "ebpf_runqlat_p95_milliseconds" in metrics
    assert "ebpf_drop_rate " not in metrics  # down: absent, not 0
    assert "process_resident_memory_bytes" in metrics and "ebpf_agent_ready 1.0" in metrics
    code, report = get(base + "/report")
    assert code == 200 and '"drops": false' in report


def test_a_scrape_does_not_trigger_collection(service):
    sampler, box, srv = service
    sampler.start()
    box.publish(sampler.tick())
    reads = sampler.probes.probe("tcp_rtt").reads
    for _ in range(5):
        get(f"http://127.0.0.1:{srv.port}/metrics")
    assert sampler.probes.probe("tcp_rtt").reads == reads


def test_unknown_path_is_404(service):
    _, _, srv = service
    assert get(f"http://127.0.0.1:{srv.port}/nope")[0] == 404


def test_agent_survives_a_failing_cycle():
    """A bug that makes one whole cycle raise is logged and counted; the agent keeps serving.
    The Agent is built from fakes: fake probes, a fake pod source, a server on a free port."""
    import threading
    import time as _time

    server = Server("127.0.0.1", 0)
    port = server.port
    cfg = Config(listen=f"127.0.0.1:{port}", sample_interval=0.2, kubernetes="off")
    agent = Agent(cfg, None, [Fake("tcp_rtt"), Fake("runqlat")], _NoPodsWithMetrics(), server)
    calls = {"n": 0}
    real_tick = agent.sampler.tick

    def flaky_tick():
        calls["n"] += 1
        if calls["n"] == 1:
            raise ZeroDivisionError("bug in report building")
        return real_tick()

    agent.sampler.tick = flaky_tick  # this agent's sampler only; no module is patched
    stop = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", agent.run(stop)))
    t.start()
    try:
        deadline = _time.monotonic() + 10
        while _time.monotonic() < deadline:
            try:
                code, body = get(f"http://127.0.0.1:{port}/metrics")
                if "ebpf_agent_cycle_errors_total 1.0" in body and "ebpf_report_sequence" in body:
                    break
            except OSError:
                pass
            _time.sleep(0.1)
        else:
            raise AssertionError("agent did not recover from the failing cycle")
    finally:
        stop.set()
        t.join(5)
    assert result["rc"] == 0


class _NoPodsWithMetrics:
    class metadata:
        @staticmethod
        def snapshot():
            from agent.kube import KubeView

            return KubeView(source="standalone", node_name="n", synced=True)

    def start(self):
        pass

    def stop(self):
        pass

    def pods(self):
        return ()

    def allocatable(self):
        return None

    def metrics(self):
        return iter(())


def test_first_report_after_a_short_window_then_every_sample_interval():
    """The first report comes FIRST_WINDOW after sampling starts (its real length reported),
    the next ones every sample_interval from there (a fake clock, advanced by the waits)."""
    from agent.service import FIRST_WINDOW

    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    server = Server("127.0.0.1", 0)
    cfg = Config(listen=f"127.0.0.1:{server.port}", sample_interval=10.0, kubernetes="off")
    agent = Agent(cfg, None, [Fake("skb_drop")], _NoPodsWithMetrics(), server, clock=clock)
    agent.probes.start_all()
    agent.sampler.start()
    reports = []

    class Stop:
        def wait(self, t):
            now[0] += t
            return len(reports) >= 3

    real_tick = agent.tick
    agent.tick = lambda: (real_tick(), reports.append((now[0], agent.box.report())))
    agent._loop(Stop())
    server.httpd.server_close()  # never started: nothing to shut down
    times = [t for t, _ in reports]
    assert times == [100.0 + FIRST_WINDOW, 110.0 + FIRST_WINDOW, 120.0 + FIRST_WINDOW]
    assert FIRST_WINDOW < cfg.sample_interval
    windows = [r.window_seconds for _, r in reports]
    assert windows == pytest.approx([FIRST_WINDOW, 10.0, 10.0])
