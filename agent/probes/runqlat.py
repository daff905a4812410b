"""runqlat: run-queue latency (nanoseconds), from sched_wakeup{,_new} and sched_switch;
node-wide, and per cgroup (the pods' containers) in coarser rows attributed to pods."""

from __future__ import annotations

import logging
import time
from typing import Mapping

from agent import loads
from agent.kernel import parse_switch_state_mask
from agent.model import ProbeSnapshot
from agent.probes.base import BccProbe, ProbeError, hist_from_slots
from agent.probes.bpfmaps import Maps
from agent.model import Histogram, merge_histograms
from agent.probes.spec import (Context, Field, Figures, HistSpec, MapSpec, ProbeSpec, Series,
                               Signal, Smoke, by_cgroup_owner, cgroup_key, quantile_seconds)
from agent.stats.histogram import SlotLayout

log = logging.getLogger(__name__)

# TASK_REPORT_MAX - 1 on every kernel since 4.14; used only if the format cannot be parsed
FALLBACK_STATE_MASK = 0xFF

HIST = HistSpec(
    unit="ns", unit_seconds=1e-9,
    value_bits=36,  # latencies up to 2**36 ns (68 s) get their own slot
    metric="ebpf_runqlat_seconds",
    help="Run-queue latency: time from wakeup (or preemption) to running",
    export_lo=1 << 10, export_hi=1 << 34)

# The per-cgroup rows: 2 sub-buckets per power of two (a slot spans at most a third of its
# value, and p50/p99 interpolate within it) over the node histogram's range. A row is
# {sum, 72 counts} in u64 words padded to whole cache lines: 80 words = 640 bytes per CPU, so
# 512 rows take 320 KiB per CPU; at the node's resolution (hist_sub_bits 5: 1,024 slots of
# 16 bytes) it would be 16 KiB a row.
CGROUP_SUB_BITS = 1
CGROUP_LAYOUT = SlotLayout(CGROUP_SUB_BITS, HIST.value_bits - CGROUP_SUB_BITS - 1)
CGROUP_ROW_WORDS = (1 + CGROUP_LAYOUT.slots + 7) // 8 * 8  # the C's CG_ROW_WORDS
CGROUP_CACHE_SLOTS = 64  # bpf/cgroup_rows.bpf.h
CPU_STATE_BYTES = 64 + 16 * CGROUP_CACHE_SLOTS  # struct runq_cpu


# A task's cgroup row is looked up (bpf_get_current_cgroup_id(), the row cache) at most once
# per ROW_TTL_NS of its switch-ins and kept in its enqueue entry meanwhile: the helper's pointer
# chase was most of the per-event cost. A task moved to another cgroup (a write to cgroup.procs)
# is counted in its old cgroup for up to this long; a new task (sched_wakeup_new) or another
# pid in the entry starts without one.
ROW_TTL_NS = 100_000_000


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPU ids the kernel may use (the highest id of the possible range, plus one):
    the number of per-CPU elements of runqlat's plain arrays."""
    with open(path) as f:
        text = f.read().strip()
    try:
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except ValueError:
        raise ValueError(f"{path}: cannot parse {text!r}") from None


# snapshot counts: per-pod samples the kernel could not attribute (cumulative, per kind)
NO_ROW = "cgroup_no_row"  # the cgroup found no free row (also in lost)
PID_MISMATCH = "cgroup_pid_mismatch"  # the slot's pid was not the task switched out


def pod_figures(win: ProbeSnapshot, ctx: Context) -> dict[str, dict]:
    """Per pod: p50/p99 of its cgroups' samples in the window and the total wait per second.

    A pod whose cgroups have no row waited 0 s/s while every cgroup got a row; once some did not
    (``cgroup_no_row`` in the window) its wait is unknown (None), never a guessed 0."""
    groups = by_cgroup_owner(win.hists, ctx.cgroup_owner())
    seconds = win.seconds
    overflow = win.counts.get(NO_ROW, 0) > 0
    out = {}
    for p in ctx.pods:
        if not p.cgroup_ids:
            continue
        h = merge_histograms(groups.get(p.uid, ()))
        if h is None:
            wait = None if overflow or not seconds else 0.0
        else:
            wait = h.total * HIST.unit_seconds / seconds if seconds else None
        out[p.uid] = {"runqlat_p50": quantile_seconds(h, 0.5, HIST),
                      "runqlat_p99": quantile_seconds(h, 0.99, HIST),
                      "runqlat_wait_per_second": wait}
    return out


def summarize(win: ProbeSnapshot, cum: ProbeSnapshot, ctx: Context) -> Figures:
    h = win.hists.get("")
    return Figures(node={"runqlat_p50": quantile_seconds(h, 0.5, HIST),
                         "runqlat_p95": quantile_seconds(h, 0.95, HIST),
                         "runqlat_p99": quantile_seconds(h, 0.99, HIST),
                         "runqlat_hist_total": cum.hists.get("")},
                   pods=pod_figures(win, ctx))


SPEC = ProbeSpec(
    name="runqlat",
    source="runqlat.bpf.c",
    summary="run-queue latency: wakeup (or preemption) to running, node-wide and per pod",
    tracepoints=("sched:sched_wakeup", "sched:sched_switch"),
    optional_tracepoints=("sched:sched_wakeup_new",),
    maps=(MapSpec("runq_enqueued_at", 4, 32, lambda c: c.max_tasks, define="RUNQ_MAX_TASKS"),
          MapSpec("lost_events", 4, 8, lambda c: 1),
          # by CPU (entries: possible CPUs x ..., checked by the probe class)
          MapSpec("runq_latency_hist", 4, 16),
          MapSpec("runq_cpu_state", 4, CPU_STATE_BYTES),
          MapSpec("runq_cgroup_words", 4, 8),
          MapSpec("runq_cgroup_misses", 4, 8, lambda c: 2),
          MapSpec("cgroup_row_of", 8, 4, lambda c: 2 * c.max_cgroups),
          MapSpec("cgroup_row_owner", 4, 8, lambda c: c.max_cgroups, define="CGROUP_ROWS")),
    params=lambda c: {"CG_SUB_BITS": CGROUP_LAYOUT.sub_bits, "CG_MAX_SHIFT": CGROUP_LAYOUT.max_shift,
                      "RUNQ_ROW_TTL_NS": ROW_TTL_NS},
    hist=HIST,
    attribution="cgroup",
    summarize=summarize,
    signals=(Signal("runqlat_p95", "runqlat_p95", 1000.0),),  # bounds in ms
    series=(
        Series("ebpf_runqlat_p50_seconds", "Run-queue latency p50 over the last window",
               "runqlat_p50"),
        Series("ebpf_runqlat_p95_milliseconds", "Run-queue latency p95 over the last window (ms)",
               "runqlat_p95", scale=1000.0),
        Series("ebpf_runqlat_p99_seconds", "Run-queue latency p99 over the last window",
               "runqlat_p99"),
        Series(HIST.metric, HIST.help, "runqlat_hist_total", kind="histogram"),
        Series("ebpf_pod_runqlat_p50_seconds",
               "Run-queue latency p50 of the pod's tasks over the last window", "runqlat_p50",
               per_pod=True),
        Series("ebpf_pod_runqlat_p99_seconds",
               "Run-queue latency p99 of the pod's tasks over the last window", "runqlat_p99",
               per_pod=True),
        Series("ebpf_pod_runqlat_wait_seconds_per_second",
               "Time the pod's tasks waited for a CPU per second over the last window (summed "
               "over its tasks)", "runqlat_wait_per_second", per_pod=True),
    ),
    payload=(
        Field("runqlat_p50_ms", "runqlat_p50", 1000.0),
        Field("runqlat_p95_ms", "runqlat_p95", 1000.0),
        Field("runqlat_p99_ms", "runqlat_p99", 1000.0),
    ),
    pod_payload=(
        Field("runqlat_p50_ms", "runqlat_p50", 1000.0),
        Field("runqlat_p99_ms", "runqlat_p99", 1000.0),
        Field("runqlat_wait_ms_per_second", "runqlat_wait_per_second", 1000.0),
    ),
    availability="runqlat",
    smoke=Smoke(load=loads.cpu_contention, show="percentiles",
                passive="always has samples: every task that wakes up is one"),
    lost_map="lost_events",
)


def decode(layout: SlotLayout, per_slot: Mapping[int, tuple[int, int]], lost: int,
           taken_at: float, cgroup_rows: Mapping[int, tuple[int, Mapping[int, int]]] | None = None,
           misses: tuple[int, int] = (0, 0)) -> ProbeSnapshot:
    """``{slot: (count, sum ns)}`` summed over CPUs, the cgroup rows ``{cgroup id: (sum ns,
    {coarse slot: count})}`` summed over CPUs and the misses ``(no row, pid mismatch)`` ->
    snapshot (pure). The node histogram is keyed ``""``, a cgroup's by ``cgroup_key(id)``;
    rows without samples are left out."""
    hists = {"": hist_from_slots(layout, per_slot)}
    for cgid, (total, counts) in (cgroup_rows or {}).items():
        counts = {s: c for s, c in counts.items() if c}
        if counts:
            hists[cgroup_key(cgid)] = Histogram(CGROUP_LAYOUT, counts, total)
    return ProbeSnapshot(SPEC.name, HIST.unit, taken_at, hists=hists,
                         counts={NO_ROW: misses[0], PID_MISMATCH: misses[1]}, lost=lost)


class RunqlatProbe(BccProbe):
    spec = SPEC

    def state_mask(self) -> int:
        fmt = self.kernel.tracepoint("sched:sched_switch")
        try:
            mask = parse_switch_state_mask(fmt.print_fmt)
            self.detail["state_mask"] = f"{mask:#x} (from format)"
        except ValueError as e:
            log.warning("runqlat: %s; assuming prev_state mask %#x", e, FALLBACK_STATE_MASK)
            mask = FALLBACK_STATE_MASK
            self.detail["state_mask"] = f"{mask:#x} (fallback)"
        return mask

    def cpus(self) -> int:
        """Possible CPU ids of the running kernel (sizes the by-CPU arrays); ProbeError (the
        probe is down, the others keep working) when sysfs does not say."""
        n = self.__dict__.get("_cpus")
        if n is None:
            path = self.config.sys_root / "devices/system/cpu/possible"
            try:
                n = self.__dict__["_cpus"] = possible_cpus(str(path))
            except (OSError, ValueError) as e:
                raise ProbeError(f"cannot tell the possible CPUs from {path}: {e}") from None
        return n

    def expected_entries(self) -> dict:
        n = self.cpus()
        return {**super().expected_entries(), "runq_cpu_state": n,
                "runq_latency_hist": n * self.layout.slots,
                "runq_cgroup_words": n * self.config.max_cgroups * CGROUP_ROW_WORDS}

    def defines(self) -> dict:
        d: dict = {**super().defines(), "RUNNABLE_STATE_MASK": hex(self.state_mask()),
                   "RUNQ_CPUS": self.cpus()}
        if self.kernel.tracepoint("sched:sched_wakeup_new") is not None:
            d["HAVE_WAKEUP_NEW"] = 1
        return d

    def snapshot(self, maps: Maps) -> ProbeSnapshot:
        # the cgroup rows first: they are few, so a reader that brackets the snapshot by its
        # own readings (tests/bpf/test_runq_pods.py) sees them read at the start of the call
        ncpu, nrows, width = self.cpus(), self.config.max_cgroups, CGROUP_ROW_WORDS
        rows: dict[int, tuple[int, dict[int, int]]] = {}
        for row, cgroup in maps.items("cgroup_row_owner", "I", "Q"):
            if row >= nrows:
                continue
            total, counts = 0, {}
            for cpu in range(ncpu):
                w = maps.words("runq_cgroup_words", (cpu * nrows + row) * width, 1 + CGROUP_LAYOUT.slots)
                total += w[0]
                for s, c in enumerate(w[1:]):
                    if c:
                        counts[s] = counts.get(s, 0) + c
            rows[cgroup] = (total, counts)
        m = dict(maps.items("runq_cgroup_misses", "I", "Q"))
        misses = (m.get(0, 0), m.get(1, 0))
        # the node histogram by (CPU, slot): CPU * slots + slot, summed over CPUs
        nslots = self.layout.slots
        slots: dict[int, tuple[int, int]] = {}
        for at, (c, t) in maps.items("runq_latency_hist", "I", "QQ"):
            if c:
                s = at % nslots
                c0, t0 = slots.get(s, (0, 0))
                slots[s] = (c0 + c, t0 + t)
        return decode(self.layout, slots, self.lost(maps), time.monotonic(), rows, misses)
