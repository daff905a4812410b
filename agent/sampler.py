"""The tick: every probe and node reader through one guard -> one NodeReport per window.

ProbeSet runs every probe through one guard: start, read and close, each failure kept local.

A probe whose start fails is ``down`` with the reason and is retried later with exponential
backoff; a probe the kernel cannot support is ``unsupported`` (logged once, never retried);
a probe that raises while being read goes ``down`` and is restarted by the same backoff. The
others carry on in every case.

Retries run on their own thread (:class:`ProbeRetrier`), never on the sampling thread: a
recompile takes seconds, and a sampler waiting for it would look stuck to the liveness check.
A lock guards each probe's state; ``start()`` itself runs outside it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Iterator, Mapping, Protocol, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

from agent.config import Config
from agent.kube.parse import standalone_node
from agent.model import (NodeReport, NodeResources, PodSample, ProbeSnapshot, ProbeState,
                         ProbeStateKind, window)
from agent.probes.base import Probe, ProbeUnsupported
from agent.probes.loader import CompileFailed, CompileRequest, compile_batch
from agent.procfs import (CpuTimes, cpu_utilization, parse_meminfo, parse_proc_stat,
                          read_netns_tcp, tcp_window)
from agent.report import build_report
from agent.retry import Backoff, RateLimitedLog

log = logging.getLogger(__name__)

RETRY_FIRST = 30.0
RETRY_MAX = 600.0


@dataclass
class _Slot:
    probe: Probe
    state: ProbeState
    prev: ProbeSnapshot | None = None
    started_at: float | None = None  # when the probe last attached (its counts begin there)
    starting: bool = False  # a (re)start is running on another thread
    retry_at: float = 0.0
    backoff: Backoff = None  # type: ignore[assignment]  # set by ProbeSet
    failures: int = 0


class ProbeSet:
    def __init__(self, probes: list[Probe], clock: Callable[[], float] = time.monotonic,
                 retry_first: float = RETRY_FIRST, retry_max: float = RETRY_MAX) -> None:
        self._clock = clock
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._lock = threading.RLock()
        self._closed = False
        self._slots = {
            p.name: _Slot(p, ProbeState(p.name, ProbeStateKind.DOWN,
                                        "not started yet (the agent is starting)"),
                          backoff=Backoff(retry_first, max(retry_first, retry_max)))
            for p in probes
        }

    @property
    def states(self) -> dict[str, ProbeState]:
        with self._lock:
            return {n: s.state for n, s in self._slots.items()}

    def probe(self, name: str) -> Probe:
        return self._slots[name].probe

    def _detail(self, probe: Probe) -> Mapping[str, str]:
        return dict(getattr(probe, "detail", {}) or {})

    def _start(self, slot: _Slot) -> None:
        """Start one probe; called without the lock (a compile takes seconds)."""
        if self._guarded(slot, slot.probe.start):
            self._up(slot)

    def _guarded(self, slot: _Slot, fn: Callable[[], object]) -> bool:
        """Run one step of a probe's start; False (and the probe unsupported or down with the
        reason) when it raised."""
        p = slot.probe
        try:
            fn()
        except ProbeUnsupported as e:
            with self._lock:
                slot.state = ProbeState(p.name, ProbeStateKind.UNSUPPORTED, str(e), self._detail(p))
            log.warning("probe %s unsupported on this kernel: %s", p.name, e, extra={"probe": p.name})
            return False
        except Exception as e:  # noqa: BLE001 - the guard: one probe never stops the rest
            self._fail(slot, f"start failed: {e}")
            return False
        return True

    def _up(self, slot: _Slot) -> None:
        p = slot.probe
        with self._lock:
            if self._closed:  # close_all ran while this start was compiling
                p.close()
                return
            slot.prev = None
            slot.started_at = self._clock()
            slot.backoff.reset()
            slot.state = ProbeState(p.name, ProbeStateKind.UP, "", self._detail(p))

    def _fail(self, slot: _Slot, reason: str) -> None:
        with self._lock:
            slot.failures += 1
            slot.state = ProbeState(slot.probe.name, ProbeStateKind.DOWN, reason,
                                    self._detail(slot.probe))
            delay = slot.backoff.next()
            slot.retry_at = self._clock() + delay
            log.error("probe %s down: %s (retry in %.0fs)", slot.probe.name, reason, delay,
                      extra={"probe": slot.probe.name})
            try:
                slot.probe.close()
            except Exception as e:  # noqa: BLE001
                log.debug("probe %s: close after failure: %s", slot.probe.name, e)

    def start_all(self) -> dict[str, ProbeState]:
        """Start every probe. Those compiled by a child (``compile_request``/``adopt``) share one
        child that compiles them one after another, each up as soon as it is attached (one
        interpreter and LLVM start-up instead of one per probe); any other starts alone."""
        batches: dict[tuple, list[tuple[_Slot, CompileRequest]]] = {}
        for slot in self._slots.values():
            p = slot.probe
            if not hasattr(p, "compile_request"):
                self._start(slot)
                continue
            reqs: list[CompileRequest] = []
            if self._guarded(slot, lambda: reqs.append(p.compile_request())):
                key = (tuple(getattr(p, "child_argv", None) or ()), p.config.compile_timeout)
                batches.setdefault(key, []).append((slot, reqs[0]))
        for (argv, timeout), items in batches.items():
            slots = {req.name: slot for slot, req in items}

            def handed_over(name: str, result, slots=slots) -> None:
                slot = slots[name]
                p = slot.probe
                if isinstance(result, CompileFailed):
                    self._fail(slot, f"start failed: {p.compile_failed(result)}")
                elif self._guarded(slot, lambda: p.adopt(result)):
                    self._up(slot)

            compile_batch([req for _, req in items], timeout, handed_over, list(argv) or None)
        return self.states

    def retry_due(self) -> None:
        """Restart probes that are down and whose backoff has expired."""
        now = self._clock()
        with self._lock:
            due = [s for s in self._slots.values() if s.state.state is ProbeStateKind.DOWN
                   and now >= s.retry_at and not s.starting]
            for slot in due:
                slot.starting = True
        for slot in due:
            log.info("probe %s: retrying start", slot.probe.name, extra={"probe": slot.probe.name})
            try:
                self._start(slot)
            finally:
                slot.starting = False

    def read_all(self) -> dict[str, ProbeSnapshot]:
        """Cumulative snapshots of every probe that is up; a failing read takes only that probe down."""
        out = {}
        with self._lock:
            up = [(n, s) for n, s in self._slots.items() if s.state.state is ProbeStateKind.UP]
        for name, slot in up:  # an up probe is never restarted meanwhile: only down ones are
            try:
                out[name] = slot.probe.read()
            except Exception as e:  # noqa: BLE001
                self._fail(slot, f"read failed: {e}")
        return out

    def read_windows(self) -> dict[str, ProbeSnapshot]:
        """Per-probe windows since the previous call (the first call: since the start). Each
        window carries the interval its counts cover (``since`` .. ``taken_at``)."""
        out = {}
        for name, snap in self.read_all().items():
            slot = self._slots[name]
            win, reset = window(slot.prev, snap)
            if reset:
                log.warning("probe %s: counters went backwards; window restarted", name,
                            extra={"probe": name})
            elif slot.prev is None and win.since is None:
                win = replace(win, since=slot.started_at)
            slot.prev = snap
            out[name] = win
        return out

    def cumulative(self) -> dict[str, ProbeSnapshot]:
        """The latest cumulative snapshot of every probe that is up."""
        return {n: s.prev for n, s in self._slots.items()
                if s.prev is not None and s.state.state is ProbeStateKind.UP}

    def program_stats(self, enabled: bool = True) -> dict[str, dict[str, tuple[int, int]]]:
        """Per-program kernel run time of each probe; empty when bpf stats are off (the kernel
        then reports zeros, which would read as free)."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        if not enabled:
            return out
        for n, s in self._slots.items():
            if s.state.state is ProbeStateKind.UP and hasattr(s.probe, "program_stats"):
                try:
                    st = s.probe.program_stats()
                except Exception:  # noqa: BLE001
                    st = {}
                if st:
                    out[n] = st
        return out

    def close_all(self) -> None:
        """Close every probe; one whose start is still running on the retry thread is closed
        as soon as that start returns."""
        with self._lock:
            self._closed = True
        for slot in self._slots.values():
            try:
                slot.probe.close()
            except Exception as e:  # noqa: BLE001
                log.warning("probe %s: close failed: %s", slot.probe.name, e)


class ProbeRetrier:
    """Retries probes that are down, on its own thread, every ``period`` seconds."""

    def __init__(self, probes: ProbeSet, stop: threading.Event, period: float = 1.0) -> None:
        self.probes = probes
        self.stop = stop
        self.period = period
        self.thread = threading.Thread(target=self._run, name="probe-retry", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                self.probes.retry_due()
            except Exception:  # noqa: BLE001 - a bug here must not end the retries
                log.exception("probe retry failed")


# ---------------------------------------------------------------------------------------------
# the tick


class PodSource(Protocol):
    def pods(self) -> Sequence[PodSample]: ...

    def allocatable(self) -> tuple[float | None, int | None] | None: ...


class NoPods:
    """Standalone without pod readers: node figures only."""

    def pods(self) -> Sequence[PodSample]:
        return ()

    def allocatable(self) -> None:
        return None


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
        self._reader_log = RateLimitedLog(60.0, log, clock)
        self._prev_cpu: CpuTimes | None = None
        self._prev_tcp = None
        self._t_prev: float | None = None

    def _guard(self, reader: str, fn: Callable, default=None):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one reader never stops the cycle
            self.reader_errors[reader] = self.reader_errors.get(reader, 0) + 1
            self._reader_log.warn(reader, "reader %s failed: %s (further errors logged once a minute)",
                                  reader, e)
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
        if alloc:
            cpu_alloc, mem_alloc = alloc
        else:  # no Node object (yet): the whole machine, by the standalone rule
            machine = standalone_node(self.node_name, ncpu, mem[0] if mem else None)
            cpu_alloc, mem_alloc = machine.cpu_allocatable_cores, machine.memory_allocatable_bytes
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
