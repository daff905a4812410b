"""Renders the latest NodeReport for Prometheus. A scrape never triggers collection and never
fails because a probe did: it reads one immutable report, and any rendering error is logged
and counted instead of failing the scrape."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from agent.model import Histogram, NodeReport, ProbeStateKind
from agent.probes import registry
from agent.probes.spec import ProbeSpec, Series
from agent.stats.histogram import cumulative_buckets, export_bounds

log = logging.getLogger(__name__)

# exported histogram buckets: 4 per power of two, every bound a slot boundary
PER_OCTAVE = 4


@dataclass(frozen=True)
class ExportOptions:
    """The series budget (config keys pod_series, max_exported_pods, export_buckets_per_octave)."""

    pod_series: bool = True
    max_pods: int = 110
    buckets_per_octave: int = PER_OCTAVE

    @classmethod
    def from_config(cls, config) -> "ExportOptions":
        return cls(config.pod_series, config.max_exported_pods, config.export_buckets_per_octave)


def _le(v: float) -> str:
    return f"{v:.12g}"


class ReportCollector(Collector):
    """``latest`` returns the newest report or None; ``extra`` yields the agent's own metrics
    (push, readiness) and must not raise."""

    def __init__(self, latest: Callable[[], NodeReport | None],
                 extra: Callable[[], Iterator[Metric]] | None = None,
                 options: ExportOptions = ExportOptions()) -> None:
        self._latest = latest
        self._extra = extra
        self._options = options
        self._errors = 0
        self._lock = threading.Lock()

    def describe(self) -> list:
        return []  # dynamic: do not let the registry call collect() at registration

    def collect(self) -> Iterator[Metric]:
        out: list[Metric] = []
        try:
            r = self._latest()
            if r is not None:
                out.extend(render_report(r, self._options))
        except Exception:  # noqa: BLE001 - a scrape must never fail
            log.exception("rendering /metrics failed; serving what was rendered")
            with self._lock:
                self._errors += 1
        if self._extra is not None:
            try:
                out.extend(self._extra())
            except Exception:  # noqa: BLE001
                log.exception("rendering agent metrics failed")
                with self._lock:
                    self._errors += 1
        err = CounterMetricFamily("ebpf_agent_render_errors",
                                  "Errors while rendering /metrics (the scrape still succeeded)")
        err.add_metric([], self._errors)
        out.append(err)
        return iter(out)


def _gauge(name: str, doc: str, value: float | None, out: list) -> None:
    """A node-level gauge; absent (not 0) when the figure is unavailable."""
    if value is None:
        return
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], float(value))
    out.append(g)


def exported_pods(r: NodeReport, options: ExportOptions) -> tuple[list, int]:
    """The pods that get series, and how many did not fit the cap. Over the cap, the busiest by
    CPU are kept (then by name, so the choice is stable from one scrape to the next)."""
    if not options.pod_series:
        return [], len(r.pods)
    pods = list(r.pods)
    if len(pods) <= options.max_pods:
        return pods, 0
    keep = sorted(pods, key=lambda p: (-(p.cpu_used or 0.0), p.namespace, p.pod))[:options.max_pods]
    return sorted(keep, key=lambda p: (p.namespace, p.pod, p.uid)), len(pods) - len(keep)


def _family(s: Series, labels: list[str]):
    cls = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
    return cls(s.name, s.help, labels=labels)


def _node_series(spec: ProbeSpec, s: Series, figures, options: ExportOptions) -> Metric | None:
    """One probe family from a node figure; None when the figure is unavailable."""
    v = None if figures is None else figures.node.get(s.figure)
    if v is None:
        return None
    if s.kind == "histogram":
        return _histogram(spec, s, v, options)
    fam = _family(s, [s.label] if s.label else [])
    if s.label:
        for k, x in sorted(v.items()):
            fam.add_metric([k], float(x) * s.scale)
    else:
        fam.add_metric([], float(v) * s.scale)
    return fam


def _histogram(spec: ProbeSpec, s: Series, h: Histogram, options: ExportOptions) -> Metric:
    """A cumulative kernel histogram as a Prometheus histogram in seconds; every bucket bound
    is a slot boundary, so histogram_quantile agrees with the agent's own percentiles."""
    hs = spec.hist
    bounds = export_bounds(h.layout, options.buckets_per_octave, hs.export_lo, hs.export_hi)
    cum = cumulative_buckets(h.layout, h.counts, bounds)
    buckets = [(_le(b * hs.unit_seconds), c) for b, c in zip(bounds, cum)] + [("+Inf", cum[-1])]
    hm = HistogramMetricFamily(s.name, s.help)
    hm.add_metric([], buckets, sum_value=h.total * hs.unit_seconds)
    return hm


def render_report(r: NodeReport, options: ExportOptions = ExportOptions(),
                  specs: Sequence[ProbeSpec] | None = None) -> list[Metric]:
    specs = tuple(specs) if specs is not None else registry.specs()
    return (probe_node_series(r, specs, options) + node_gauges(r) + probe_health(r)
            + pod_series(r, specs, options))


def probe_node_series(r: NodeReport, specs: Sequence[ProbeSpec], options: ExportOptions) -> list[Metric]:
    """Each probe's node series, from its declaration (absent while the probe is not up)."""
    out = []
    for spec in specs:
        for s in spec.series:
            if not s.per_pod:
                m = _node_series(spec, s, r.figures.get(spec.name), options)
                if m is not None:
                    out.append(m)
    return out


def node_gauges(r: NodeReport) -> list[Metric]:
    """The node readers' figures: the seed design's gauges (names fixed), then the node's."""
    out: list[Metric] = []
    _gauge("ebpf_tcp_retrans_rate",
           "Share of TCP segments sent over the last window that were retransmissions: "
           "RetransSegs / (OutSegs + RetransSegs), kernel SNMP counters of every network namespace",
           r.retrans_rate, out)
    _gauge("ebpf_network_namespaces", "Network namespaces whose TCP counters the retransmit "
           "rate sums (those with at least one process)", r.network_namespaces, out)
    _gauge("ebpf_cpu_utilization", "Busy share of all CPUs over the last window (0..1)", r.cpu_utilization, out)
    _gauge("ebpf_node_score", "Node score 0..100, higher is healthier", r.score, out)
    _gauge("ebpf_dominant_share", "max(cpu used/allocatable, memory used/allocatable)", r.dominant_share, out)
    _gauge("ebpf_per_task_fairness", "Jain's fairness index over tenants' dominant shares", r.per_task_fairness, out)
    _gauge("ebpf_cpu_used_cores", "CPU used by the node over the last window (cores)", r.cpu_used, out)
    _gauge("ebpf_cpu_allocatable_cores", "Allocatable CPU of the node (cores)", r.cpu_allocatable, out)
    _gauge("ebpf_memory_used_bytes", "Memory used by the node (MemTotal - MemAvailable)", r.memory_used, out)
    _gauge("ebpf_memory_allocatable_bytes", "Allocatable memory of the node", r.memory_allocatable, out)
    _gauge("ebpf_report_window_seconds", "Length of the window the latest report covers", r.window_seconds, out)
    _gauge("ebpf_report_sequence", "Sequence number of the latest report", r.sequence, out)
    ni = GaugeMetricFamily("ebpf_node_info", "The node this agent runs on", labels=["node", "agent_version"])
    ni.add_metric([r.node_name, r.agent_version], 1)
    out.append(ni)
    return out


def probe_health(r: NodeReport) -> list[Metric]:
    """Every probe's state, lost events and (with bpf_stats) kernel run time."""
    up = GaugeMetricFamily("ebpf_probe_up", "1 when the probe is loaded, attached and read", labels=["probe"])
    state = GaugeMetricFamily("ebpf_probe_state", "The probe's state (1 for the current one)",
                              labels=["probe", "state"])
    for name, st in sorted(r.probes.items()):
        up.add_metric([name], 1 if st.state is ProbeStateKind.UP else 0)
        for kind in ProbeStateKind:
            state.add_metric([name, kind.value], 1 if st.state is kind else 0)
    out: list[Metric] = [up, state]
    lost = CounterMetricFamily("ebpf_probe_lost_events",
                               "Events a probe could not record because a bounded kernel map was full",
                               labels=["probe"])
    for name, snap in sorted(r.cumulative.items()):
        lost.add_metric([name], snap.lost)
    out.append(lost)
    if r.program_stats:
        rt = CounterMetricFamily("ebpf_probe_program_run_seconds",
                                 "Kernel run time of each probe program (needs kernel.bpf_stats_enabled=1)",
                                 labels=["probe", "program"])
        rc = CounterMetricFamily("ebpf_probe_program_runs", "Runs of each probe program (bpf_stats)",
                                 labels=["probe", "program"])
        for probe, progs in sorted(r.program_stats.items()):
            for prog, (ns, cnt) in sorted(progs.items()):
                rt.add_metric([probe, prog], ns / 1e9)
                rc.add_metric([probe, prog], cnt)
        out += [rt, rc]
    _gauge("ebpf_agent_sample_duration_seconds", "Time the last sampling cycle took",
           r.sample_duration_seconds, out)
    return out


# per-pod series of the pod readers: key -> (name, help, counter?, value of a PodReport)
POD_READER_SERIES = {
    "cpu": ("ebpf_pod_cpu_used_cores", "Pod CPU used over the last window (cores)", False,
            lambda p: p.cpu_used),
    "cpu_limit": ("ebpf_pod_cpu_limit_cores", "Pod CPU limit from cpu.max (cores)", False,
                  lambda p: p.cpu_limit),
    "mem": ("ebpf_pod_memory_used_bytes", "Pod memory working set", False, lambda p: p.memory_used),
    "mem_limit": ("ebpf_pod_memory_limit_bytes", "Pod memory limit from memory.max", False,
                  lambda p: p.memory_limit),
    "rx": ("ebpf_pod_network_receive_bytes_per_second", "Bytes the pod's network namespace received per second over the last window", False,
           lambda p: None if p.net_rx_bytes is None or not p.net_seconds else p.net_rx_bytes / p.net_seconds),
    "tx": ("ebpf_pod_network_transmit_bytes_per_second", "Bytes the pod's network namespace sent per second over the last window", False,
           lambda p: None if p.net_tx_bytes is None or not p.net_seconds else p.net_tx_bytes / p.net_seconds),
    "throttled": ("ebpf_pod_cpu_throttled_ratio", "Share of the pod's CFS periods throttled over the last window", False,
                  lambda p: p.cpu_throttled_ratio),
    "cpu_psi": ("ebpf_pod_cpu_pressure_ratio", "Share of the last window some of the pod's tasks waited for CPU (cpu.pressure some)", False,
                lambda p: p.cpu_pressure),
    "mem_psi": ("ebpf_pod_memory_pressure_ratio", "Share of the last window some of the pod's tasks stalled on memory (memory.pressure some)", False,
                lambda p: p.memory_pressure),
    "cpu_total": ("ebpf_pod_cpu_seconds", "CPU time the pod's cgroup used (cpu.stat usage_usec)", True,
                  lambda p: p.cpu_seconds_total),
    "throttled_total": ("ebpf_pod_cpu_throttled_seconds", "Time the pod's cgroup was throttled by its CPU limit (cpu.stat throttled_usec)", True,
                        lambda p: p.cpu_throttled_seconds_total),
    "rx_total": ("ebpf_pod_network_receive_bytes", "Bytes the pod's network namespace received, all interfaces (absent for host-network pods)", True,
                 lambda p: p.net_rx_bytes_total),
    "tx_total": ("ebpf_pod_network_transmit_bytes", "Bytes the pod's network namespace sent, all interfaces (absent for host-network pods)", True,
                 lambda p: p.net_tx_bytes_total),
}


def pod_series(r: NodeReport, specs: Sequence[ProbeSpec], options: ExportOptions) -> list[Metric]:
    """Per pod, only pods in the latest report (gone pods stop appearing), within the budget."""
    labels = ["namespace", "pod"]
    readers = [(CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=labels)
               for name, doc, counter, _ in POD_READER_SERIES.values()]
    values = [fn for *_, fn in POD_READER_SERIES.values()]
    probe_fams = [(spec, s, _family(s, labels)) for spec in specs for s in spec.series if s.per_pod]
    pods, overflow = exported_pods(r, options)
    out: list[Metric] = []
    _gauge("ebpf_pods", "Pods in the latest report (every one is in the push and /report)",
           len(r.pods), out)
    _gauge("ebpf_pods_not_exported", "Pods of the latest report without per-pod series here "
           "(pod_series off, or beyond max_exported_pods)", overflow, out)
    for p in pods:
        lv = [p.namespace, p.pod]
        for fam, fn in zip(readers, values):
            v = fn(p)
            if v is not None:
                fam.add_metric(lv, float(v))
        for spec, s, fam in probe_fams:
            v = p.figures.get(spec.name, {}).get(s.figure)
            if v is not None:
                fam.add_metric(lv, float(v) * s.scale)
    out += [f for _, _, f in probe_fams if f.samples]
    out += [f for f in readers if f.samples]
    return out
