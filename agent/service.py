"""The running agent: one Agent object, assembled by the CLI from its parts. One sampling
thread builds a NodeReport per window and publishes it; the HTTP server and the pusher only
ever read what was published."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator, Sequence

from prometheus_client import ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from agent.config import Config
from agent.export.extender import PushGroup
from agent.export.payload import build_payload
from agent.export.prometheus import ExportOptions, ReportCollector
from agent.kernel import KernelInfo
from agent.model import NodeReport
from agent.probes.base import Probe
from agent.sampler import ProbeRetrier, ProbeSet, Sampler
from agent.server import Server

log = logging.getLogger(__name__)

FIRST_WINDOW = 1.0  # seconds: the first report's window (then sample_interval)


class ReportBox:
    """The latest report and its payload, swapped atomically, and when it was published."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._report: NodeReport | None = None
        self._payload: dict | None = None
        self._published_at: float | None = None

    def publish(self, r: NodeReport) -> dict:
        payload = build_payload(r)
        with self._lock:
            self._report, self._payload = r, payload
            self._published_at = self._clock()
        return payload

    def age(self) -> float | None:
        """Seconds since the newest report was published; None before the first."""
        with self._lock:
            return None if self._published_at is None else self._clock() - self._published_at

    def report(self) -> NodeReport | None:
        with self._lock:
            return self._report

    def payload(self) -> dict | None:
        with self._lock:
            return self._payload


class Liveness:
    """The agent is alive while it keeps publishing reports.

    Healthy: during the start-up grace period before the first report, then while the newest
    report is younger than 3 x ``sample_interval``. Ready: a report exists and is that fresh.
    A sampler that stalls (a reader hung on a filesystem, a deadlock) turns both to 503, so the
    kubelet restarts the pod instead of serving the last numbers forever."""

    def __init__(self, box: ReportBox, sample_interval: float, startup_grace: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.box = box
        self.max_age = 3 * sample_interval
        self.grace = startup_grace
        self.clock = clock
        self.started_at = clock()

    def _fresh(self) -> tuple[bool | None, str]:
        age = self.box.age()
        if age is None:
            return None, "no report yet"
        if age <= self.max_age:
            return True, f"newest report {age:.1f}s old"
        return False, (f"newest report {age:.1f}s old, stale after {self.max_age:g}s "
                       "(3 x sample_interval): the sampler is not publishing")

    def health(self) -> tuple[bool, str]:
        fresh, why = self._fresh()
        if fresh is None:
            up = self.clock() - self.started_at
            if up <= self.grace:
                return True, f"starting: {up:.0f}s of the {self.grace:g}s start-up grace, no report yet"
            return False, f"no report {up:.0f}s after start (start-up grace {self.grace:g}s)"
        return fresh, why

    def ready(self) -> tuple[bool, str]:
        fresh, why = self._fresh()
        if fresh is None:
            return False, "no full window collected yet"
        return fresh, why


def make_registry(box: ReportBox, extras: Sequence[Callable[[], Iterator[Metric]]],
                  options: ExportOptions = ExportOptions()) -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu seconds, fds

    def extra() -> Iterator[Metric]:
        ready = GaugeMetricFamily("ebpf_agent_ready", "1 once the first full window was reported")
        ready.add_metric([], 1 if box.report() is not None else 0)
        yield ready
        for fn in extras:
            yield from fn()

    registry.register(ReportCollector(box.report, extra, options))
    return registry


# ---------------------------------------------------------------------------------------------
# the agent's lifecycle


class Agent:
    """The running agent, made of parts the CLI assembles (``agent.cli.assemble``) and tests
    replace with fakes: the configuration, the kernel facts, the probes (not yet started), the
    pod source, the pusher (or None), the bound HTTP server and a clock.

    ``run`` starts them and samples every ``sample_interval`` until ``stop`` is set."""

    def __init__(self, config: Config, kernel: KernelInfo | None, probes: Sequence[Probe],
                 pod_source, server: Server, pusher: PushGroup | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kernel = kernel
        self.pod_source = pod_source
        self.server = server
        self.pusher = pusher
        self.clock = clock
        self.box = ReportBox(clock)
        self.liveness = Liveness(self.box, config.sample_interval, config.startup_grace, clock)
        self.probes = ProbeSet(list(probes), clock=clock)
        self.sampler = Sampler(config, self.probes, pod_source, clock=clock)
        extras = [self.sampler.metrics, pod_source.metrics] + ([pusher.metrics] if pusher else [])
        self.registry = make_registry(self.box, extras, ExportOptions.from_config(config))

    def run(self, stop: threading.Event) -> int:
        """Serve, start the probes, sample and push until ``stop`` is set. Returns the exit
        status: 1 when --strict and a probe did not come up, else 0."""
        config = self.config
        self.server.start(registry=self.registry, latest=self.box.report, payload=self.box.payload,
                          states=lambda: self.probes.states, liveness=self.liveness)
        log.info("serving /metrics /healthz /readyz /report on %s (node %s)", config.listen,
                 config.resolved_node_name())
        retrier = ProbeRetrier(self.probes, stop)
        try:
            st = self.probes.start_all()
            bad = {n: s for n, s in st.items() if s.state.value != "up"}
            if config.strict and bad:
                for n, s in bad.items():
                    log.error("strict: probe %s is %s: %s", n, s.state.value, s.reason)
                return 1
            if stop.is_set():
                return 0
            self.pod_source.start()
            if config.advertise_capacity:
                threading.Thread(target=advertise_capacity, args=(config, self.pod_source, stop),
                                 name="capacity", daemon=True).start()
            self.sampler.start()
            retrier.start()
            if self.pusher:
                self.pusher.start()
            self._loop(stop)
            return 0
        finally:
            t0 = time.monotonic()
            self.server.stop()
            if self.pusher:
                self.pusher.stop(timeout=1.0)
            retrier.join(timeout=1.0)
            self.probes.close_all()
            self.pod_source.stop()
            log.info("stopped in %.2fs (probes detached)", time.monotonic() - t0)

    def _loop(self, stop: threading.Event) -> None:
        """The first report after a short first window (``FIRST_WINDOW``, its real length in
        ``window_seconds``), so a starting node is scored within seconds; then one report every
        ``sample_interval`` from there."""
        interval = self.config.sample_interval
        next_tick = self.clock() + min(FIRST_WINDOW, interval)
        while not stop.wait(max(0.0, next_tick - self.clock())):
            self.tick()
            now = self.clock()
            next_tick += interval
            if next_tick < now:  # overran: skip to the next future slot, never burst
                next_tick = now + interval

    def tick(self) -> None:
        """One report: built, published, offered to the pusher. A failing cycle keeps the
        previous report published."""
        try:
            payload = self.box.publish(self.sampler.tick())
        except Exception:  # noqa: BLE001 - a bug in one cycle must not end the agent
            self.sampler.cycle_errors += 1
            log.exception("sampling cycle failed; the previous report stays published")
        else:
            if self.pusher:
                self.pusher.offer(payload)  # the pusher keeps the push_interval cadence itself


CAPACITY_RETRY = 600.0


def advertise_capacity(config: Config, pod_source, stop: threading.Event) -> None:
    """Publish the link speed as an extended resource; retried every 10 minutes on failure."""
    from agent.capacity import CapacityError, advertise_link_speed

    endpoint = getattr(pod_source.metadata, "endpoint", None)
    if endpoint is None:
        log.error("capacity: no Kubernetes API in use; nothing advertised")
        return
    while not stop.is_set():
        try:
            bps = advertise_link_speed(endpoint, config.resolved_node_name(),
                                       resource_name=config.capacity_resource,
                                       interface=config.capacity_interface or None,
                                       sys_class_net=str(config.sys_root / "class" / "net"),
                                       proc_root=str(config.proc_root))
            log.info("capacity: advertised %s=%d on node %s", config.capacity_resource, bps,
                     config.resolved_node_name())
            return
        except CapacityError as e:
            log.error("%s (retry in %.0fs)", e, CAPACITY_RETRY)
        except Exception as e:  # noqa: BLE001 - never take the agent down
            log.error("capacity: %s (retry in %.0fs)", e, CAPACITY_RETRY)
        stop.wait(CAPACITY_RETRY)
