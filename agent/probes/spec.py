"""What a probe is, declared once: the contract between its C file and the rest of the agent.

A :class:`ProbeSpec` names the tracepoints the probe needs, the maps its C file defines (from
which the ``-D`` defines and the checks after load are derived), the unit of its histogram
values, how one window of its snapshot becomes report figures (pure), which of those figures
are score signals, what it exports to Prometheus and to the push payload, and how the smoke
test provokes it. Everything else (kernel detection, configuration checks, the report, the
exporters, the smoke test, the kernel matrix) reads these declarations through
``agent.probes.registry`` and never dispatches on a probe's name.

Pure: no IO, no BCC. Only ``model`` and ``stats`` below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

from agent.model import Histogram, ProbeFigures, ProbeSnapshot, merge_histograms
from agent.stats.histogram import SlotLayout, percentile
from agent.stats.scoring import count_above

if TYPE_CHECKING:  # the config is passed in; probes never import it at run time
    from agent.config import Config, ScoreConfig


# ---------------------------------------------------------------------------------------------
# the C/Python contract


@dataclass(frozen=True)
class MapSpec:
    """One map of the probe's C file, as Python reads it.

    ``key_size``/``leaf_size`` are checked right after load (per-CPU maps: one CPU's leaf).
    ``entries(config)`` is the max_entries the C file must have created (checked after load;
    None: not checked). When ``define`` is set, ``-D<define>=<entries>`` is passed to the
    compiler, so the C file sizes the map from the same number."""

    name: str
    key_size: int
    leaf_size: int
    entries: Callable[["Config"], int] | None = None
    define: str | None = None


@dataclass(frozen=True)
class HistSpec:
    """The probe's log-linear histogram: values below ``2**value_bits`` get their own slot.

    ``unit`` names what the kernel records ("us", "ns"); ``unit_seconds`` is one unit in
    seconds, the one conversion every figure goes through. ``export_lo``/``export_hi`` bound
    the exported Prometheus buckets (in the probe's unit)."""

    unit: str
    unit_seconds: float
    value_bits: int
    metric: str
    help: str
    export_lo: int
    export_hi: int

    def layout(self, sub_bits: int) -> SlotLayout:
        return SlotLayout(sub_bits, self.value_bits - sub_bits - 1)

    def defines(self, sub_bits: int) -> dict[str, int]:
        lay = self.layout(sub_bits)
        return {"HIST_SUB_BITS": lay.sub_bits, "HIST_MAX_SHIFT": lay.max_shift}


# ---------------------------------------------------------------------------------------------
# what a window becomes


@dataclass(frozen=True)
class PodView:
    """What a probe may know of a pod to attribute its figures."""

    uid: str
    addresses: tuple[str, ...]
    host_network: bool
    rtt_slo_ms: float  # the pod's annotation, else the default
    # cgroup v2 ids (directory inode numbers) of the pod's cgroup and every cgroup below it
    # (its containers, the sandbox included): what bpf_get_current_cgroup_id() returns for
    # the pod's tasks. Empty when the pod readers found no cgroup for it.
    cgroup_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Context:
    """Everything a probe's summary may use besides its own snapshots."""

    pods: Sequence[PodView]
    default_rtt_slo_ms: float
    window_seconds: float
    score: "ScoreConfig"

    def address_owner(self) -> dict[str, str]:
        """address -> pod uid, for pods with their own network (hostNetwork pods share the
        node's addresses: their traffic is the host's, never guessed to be theirs)."""
        out = {}
        for p in self.pods:
            if not p.host_network:
                for a in p.addresses:
                    out[a] = p.uid
        return out


    def cgroup_owner(self) -> dict[int, str]:
        """cgroup id -> pod uid (attribution="cgroup"). An id claimed by two pods (cannot
        happen with real directories) goes to neither."""
        out: dict[int, str] = {}
        twice: set[int] = set()
        for p in self.pods:
            for i in p.cgroup_ids:
                if i in out and out[i] != p.uid:
                    twice.add(i)
                out[i] = p.uid
        for i in twice:
            del out[i]
        return out


# A probe's per-cgroup histograms live in its snapshot's ``hists`` under these keys, beside
# its node-wide or per-address ones; they may have a coarser layout, so node figures and
# generic readers (the smoke test) leave them out.
CGROUP_KEY_PREFIX = "cgroup:"


def cgroup_key(cgroup_id: int) -> str:
    return f"{CGROUP_KEY_PREFIX}{int(cgroup_id)}"


def is_cgroup_key(key: str) -> bool:
    return key.startswith(CGROUP_KEY_PREFIX)


def node_hists(hists: Mapping[str, Histogram]) -> dict[str, Histogram]:
    """The histograms of a snapshot that are not per-cgroup rows."""
    return {k: h for k, h in hists.items() if not is_cgroup_key(k)}


def by_cgroup_owner(hists: Mapping[str, Histogram], owner: Mapping[int, str]) -> dict[str, list[Histogram]]:
    """Group per-cgroup histograms under the pod uid that owns the cgroup id."""
    out: dict[str, list[Histogram]] = {}
    for k, h in hists.items():
        if is_cgroup_key(k):
            uid = owner.get(int(k[len(CGROUP_KEY_PREFIX):]))
            if uid:
                out.setdefault(uid, []).append(h)
    return out


Figures = ProbeFigures  # what a summary returns (agent.model: reports carry it)


# summarize(window, cumulative, context) -> Figures
Summarize = Callable[[ProbeSnapshot, ProbeSnapshot, Context], Figures]


# ---------------------------------------------------------------------------------------------
# what is exported


@dataclass(frozen=True)
class Series:
    """One Prometheus family rendered from a figure.

    kind: "gauge", "counter" or "histogram" (the figure is a cumulative Histogram; buckets
    from the probe's HistSpec). ``scale`` multiplies the figure (e.g. 1000 for the seed's
    ``*_milliseconds`` gauges). ``label``: the figure is a mapping, one sample per key under
    that label. ``per_pod``: the figure is a pod figure, one sample per exported pod."""

    name: str
    help: str
    figure: str
    kind: str = "gauge"
    scale: float = 1.0
    label: str | None = None
    per_pod: bool = False


@dataclass(frozen=True)
class Field:
    """One key of the push payload (and /report) taken from a figure: ``scale`` converts the
    base unit to the contract's (ms), ``digits`` rounds. While the probe is not up the value
    is None, or an empty mapping where the contract has a mapping (``mapping=True``)."""

    key: str
    figure: str
    scale: float = 1.0
    digits: int | None = 6
    mapping: bool = False


@dataclass(frozen=True)
class Signal:
    """A score input: ``figure`` times ``scale`` in the unit of ``score.bounds[name]``.
    ``bounds``: the default (low, high) when the configuration gives none; a signal the seed
    did not weigh has weight 0 until configured."""

    name: str
    figure: str
    scale: float = 1.0
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class Smoke:
    """How the smoke test provokes the probe, and what it shows.

    ``load``: a context manager that makes this probe's bounded loopback load on entry (or
    holds it for the body) and yields a mapping of what it did. ``settle_seconds``: how long
    after the load starts its events may still arrive (a SYN retransmission comes ~1 s after
    the connect). ``show``: "percentiles" (histogram p50/p99), "top_keys" (the five largest
    counts, e.g. drop reasons) or "keys" (counted by key). ``passive``: what a quiet node is
    expected to show, in the words of the report. ``background``: the load is held open
    while the others run (entered first)."""

    load: Callable[[], ContextManager[Mapping[str, int]]] | None
    show: str = "keys"
    settle_seconds: float = 0.0
    background: bool = False
    passive: str = "may be quiet on a healthy node"


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    source: str  # C file below Config.bpf_dir
    summary: str  # one line, for check-kernel, docs and logs
    tracepoints: tuple[str, ...]  # "system:event", all required
    optional_tracepoints: tuple[str, ...] = ()  # attached when present
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # tracepoint -> fields
    maps: tuple[MapSpec, ...] = ()
    params: Callable[["Config"], Mapping[str, int]] | None = None  # -D values not a map size
    hist: HistSpec | None = None
    attribution: str = "none"  # "address" (local address -> pod), "cgroup", "none"
    summarize: Summarize | None = None
    signals: tuple[Signal, ...] = ()
    series: tuple[Series, ...] = ()
    payload: tuple[Field, ...] = ()
    pod_payload: tuple[Field, ...] = ()
    availability: str = ""  # the payload's availability key: True while the probe is up
    smoke: Smoke | None = None
    lost_map: str | None = None  # one-slot per-CPU array of events the kernel could not record

    def all_tracepoints(self) -> tuple[str, ...]:
        return self.tracepoints + self.optional_tracepoints

    def layout(self, config: "Config") -> SlotLayout | None:
        return self.hist.layout(config.hist_sub_bits) if self.hist else None

    def contract(self) -> dict[str, tuple[int, int]]:
        return {m.name: (m.key_size, m.leaf_size) for m in self.maps}

    def expected_entries(self, config: "Config") -> dict[str, int]:
        return {m.name: m.entries(config) for m in self.maps if m.entries is not None}

    def defines(self, config: "Config") -> dict[str, int | str]:
        """The ``-D`` values derived from the declaration (the probe may add kernel-dependent
        ones: a mask parsed from a format, a field's presence)."""
        out: dict[str, int | str] = {}
        if self.hist is not None:
            out.update(self.hist.defines(config.hist_sub_bits))
        for m in self.maps:
            if m.define is not None and m.entries is not None:
                out[m.define] = m.entries(config)
        if self.params is not None:
            out.update(self.params(config))
        return out


# ---------------------------------------------------------------------------------------------
# small pure helpers the probes' summaries share


def quantile_seconds(h: Histogram | None, q: float, hist: HistSpec) -> float | None:
    """The q-quantile of a histogram in seconds (interpolated as PromQL does); None without
    samples."""
    if h is None or h.count == 0:
        return None
    v = percentile(h.layout, h.counts, q)
    return None if v is None else v * hist.unit_seconds


def count_above_seconds(h: Histogram, seconds: float, hist: HistSpec) -> float:
    return count_above(h.layout, h.counts, seconds / hist.unit_seconds)


def by_owner(values: Mapping[str, Any], owner: Mapping[str, str]) -> dict[str, list]:
    """Group values keyed by local address under the pod uid that owns the address."""
    out: dict[str, list] = {}
    for addr, v in values.items():
        uid = owner.get(addr)
        if uid:
            out.setdefault(uid, []).append(v)
    return out


def merged(hists: Mapping[str, Histogram]) -> Histogram | None:
    return merge_histograms(hists.values())
