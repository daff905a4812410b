"""The running agent: one sampling thread builds a NodeReport per window and publishes it;
the HTTP server and the pusher only ever read what was published."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Iterator, Protocol, Sequence

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from agent.config import Config, ConfigError
from agent.export.extender import PushGroup
from agent.export.payload import build_payload
from agent.export.prometheus import ExportOptions, ReportCollector
from agent.model import NodeReport, NodeResources, PodSample
from agent.procfs import (CpuTimes, cpu_utilization, parse_meminfo, parse_proc_stat,
                          read_netns_tcp, tcp_window)
from agent.report import build_report
from agent.kernel import KernelInfo, detect
from agent.sampler import ProbeRetrier, ProbeSet

log = logging.getLogger(__name__)


class PodSource(Protocol):
    def pods(self) -> Sequence[PodSample]: ...

    def allocatable(self) -> tuple[float | None, int | None] | None: ...


class NoPods:
    """Standalone without pod readers: node figures only."""

    def pods(self) -> Sequence[PodSample]:
        return ()

    def allocatable(self) -> None:
        return None


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


class Sampler:
    """Reads every probe and reader through a guard and builds one report per call."""

    def __init__(self, config: Config, probes: ProbeSet, pod_source: PodSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.probes = probes
        self.pod_source = pod_source or NoPods()
        self.clock = clock
        self.node_name = config.resolved_node_name()
        self.sequence = 0
        self.reader_errors: dict[str, int] = {}
        self.cycle_errors = 0
        self._last_error_log: dict[str, float] = {}
        self._prev_cpu: CpuTimes | None = None
        self._prev_tcp = None
        self._t_prev: float | None = None

    def _guard(self, reader: str, fn: Callable, default=None):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one reader never stops the cycle
            self.reader_errors[reader] = self.reader_errors.get(reader, 0) + 1
            now = self.clock()
            if now - self._last_error_log.get(reader, -1e9) > 60:
                log.warning("reader %s failed: %s (further errors logged once a minute)", reader, e)
                self._last_error_log[reader] = now
            return default

    def start(self) -> None:
        """Take the baselines the first window is measured from."""
        self.probes.read_windows()
        self._t_prev = self.clock()
        proc = self.config.proc_root
        self._prev_cpu = self._guard("proc_stat", lambda: parse_proc_stat((proc / "stat").read_text()))
        self._prev_tcp = self._guard("net_snmp", lambda: read_netns_tcp(proc))

    def tick(self) -> NodeReport:
        t0 = self.clock()
        windows = self.probes.read_windows()  # retries run on the ProbeRetrier's thread
        t_read = self.clock()  # the report's window: from one probe read to the next
        proc = self.config.proc_root
        cpu = self._guard("proc_stat", lambda: parse_proc_stat((proc / "stat").read_text()))
        util = cpu_utilization(self._prev_cpu, cpu) if cpu else None
        self._prev_cpu = cpu or self._prev_cpu
        tcp = self._guard("net_snmp", lambda: read_netns_tcp(proc))
        segs = tcp_window(self._prev_tcp, tcp) if tcp is not None else None
        self._prev_tcp = tcp if tcp is not None else self._prev_tcp
        mem = self._guard("meminfo", lambda: parse_meminfo((proc / "meminfo").read_text()))
        pods = self._guard("pods", self.pod_source.pods, default=()) or ()
        alloc = self._guard("allocatable", self.pod_source.allocatable)
        ncpu = os.cpu_count() or 1
        cpu_alloc, mem_alloc = alloc if alloc else (float(ncpu), mem[0] if mem else None)
        resources = NodeResources(
            cpu_allocatable=cpu_alloc,
            memory_allocatable=mem_alloc,
            cpu_utilization=util,
            cpu_used=util * ncpu if util is not None else None,
            memory_used=(mem[0] - mem[1]) if mem else None,
        )
        window = t_read - (self._t_prev if self._t_prev is not None else t0)
        self._t_prev = t_read
        self.sequence += 1
        return build_report(
            self.config,
            node_name=self.node_name,
            sequence=self.sequence,
            timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            window_seconds=max(window, 1e-3),
            states=self.probes.states,
            windows=windows,
            cumulative=self.probes.cumulative(),
            tcp_segments=segs,
            resources=resources,
            network_namespaces=len(tcp) if tcp is not None else None,
            pods=pods,
            program_stats=self.probes.program_stats(self._bpf_stats_enabled()),
            sample_duration_seconds=self.clock() - t0,
        )

    def _bpf_stats_enabled(self) -> bool:
        try:
            return (self.config.proc_root / "sys/kernel/bpf_stats_enabled").read_text().strip() == "1"
        except OSError:
            return False

    def metrics(self) -> Iterator[Metric]:
        e = CounterMetricFamily("ebpf_agent_reader_errors", "Failed reads by reader (the cycle goes on)",
                                labels=["reader"])
        for r, n in sorted(self.reader_errors.items()):
            e.add_metric([r], n)
        yield e
        c = CounterMetricFamily("ebpf_agent_cycle_errors",
                                "Sampling cycles that failed as a whole (the last report stays published)")
        c.add_metric([], self.cycle_errors)
        yield c


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


def detect_kernel(config: Config) -> KernelInfo:
    return detect(config.tracefs_roots, config.btf_path, config.modules_root, config.proc_root)


def build_probes(config: Config, kernel: KernelInfo) -> list:
    from agent.probes import PROBE_CLASSES

    return [PROBE_CLASSES[name](config, kernel) for name in config.probes]


def make_pod_source(config: Config):
    from agent.pods import ClusterPods

    return ClusterPods.from_config(config)


def run_agent(config: Config, stop: threading.Event) -> int:
    """Serve, sample every ``sample_interval`` and push until ``stop`` is set. Returns the exit
    status: 2 for a configuration that cannot work (before any BPF is loaded), 1 when --strict
    and a probe failed, else 0."""
    import sys

    from agent.server import Server

    box = ReportBox()
    liveness = Liveness(box, config.sample_interval, config.startup_grace)
    holder: dict = {}

    def states():
        ps = holder.get("probes")
        return ps.states if ps is not None else {}

    # bind the port before loading any BPF: an unusable port is a config error (exit 2)
    try:
        server = Server(config.listen_host, config.listen_port, registry=None, latest=box.report,
                        payload=box.payload, states=states, liveness=liveness)
    except OSError as e:
        print(f"ebpf-edge-agent: invalid configuration: listen: {config.listen!r} cannot be bound "
              f"({e.strerror or e}); choose a free HOST:PORT", file=sys.stderr)
        return 2
    try:
        pod_source = make_pod_source(config)
    except ConfigError as e:
        server.httpd.server_close()
        print(f"ebpf-edge-agent: invalid configuration: {e}", file=sys.stderr)
        return 2

    pusher = None
    if config.extender_urls:
        pusher = PushGroup(config.extender_urls, config.push_timeout, interval=config.push_interval,
                           token_file=config.extender_token_file, ca_file=config.extender_ca_file,
                           verify=config.extender_tls_verify,
                           backoff_max=max(1.0, config.push_interval))

    def sampler_metrics():
        s = holder.get("sampler")
        return s.metrics() if s is not None else iter(())

    extras = [sampler_metrics, pod_source.metrics] + ([pusher.metrics] if pusher else [])
    server.registry = make_registry(box, extras, ExportOptions.from_config(config))
    server.start()
    log.info("serving /metrics /healthz /readyz /report on %s (node %s)", config.listen,
             config.resolved_node_name())

    probes = ProbeSet(build_probes(config, detect_kernel(config)))
    holder["probes"] = probes
    retrier = ProbeRetrier(probes, stop)
    try:
        st = probes.start_all()
        bad = {n: s for n, s in st.items() if s.state.value != "up"}
        if config.strict and bad:
            for n, s in bad.items():
                log.error("strict: probe %s is %s: %s", n, s.state.value, s.reason)
            return 1
        if stop.is_set():
            return 0
        pod_source.start()
        if config.advertise_capacity:
            threading.Thread(target=advertise_capacity, args=(config, pod_source, stop),
                             name="capacity", daemon=True).start()
        sampler = Sampler(config, probes, pod_source)
        holder["sampler"] = sampler
        sampler.start()
        retrier.start()
        if pusher:
            pusher.start()
        interval = config.sample_interval
        next_tick = time.monotonic() + interval
        while not stop.wait(max(0.0, next_tick - time.monotonic())):
            try:
                payload = box.publish(sampler.tick())
            except Exception:  # noqa: BLE001 - a bug in one cycle must not end the agent
                sampler.cycle_errors += 1
                log.exception("sampling cycle failed; the previous report stays published")
            else:
                if pusher:
                    pusher.offer(payload)  # the pusher keeps the push_interval cadence itself
            now = time.monotonic()
            next_tick += interval
            if next_tick < now:  # overran: skip to the next future slot, never burst
                next_tick = now + interval
        return 0
    finally:
        t0 = time.monotonic()
        server.stop()
        if pusher:
            pusher.stop(timeout=1.0)
        retrier.join(timeout=1.0)
        probes.close_all()
        pod_source.stop()
        log.info("stopped in %.2fs (probes detached)", time.monotonic() - t0)


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
