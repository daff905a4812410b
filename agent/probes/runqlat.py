"""runqlat: run-queue latency (nanoseconds), from sched_wakeup{,_new} and sched_switch."""

from __future__ import annotations

import logging
import time
from typing import Mapping

from agent import loads
from agent.kernel import parse_switch_state_mask
from agent.model import ProbeSnapshot
from agent.probes.base import BccProbe, hist_from_slots
from agent.probes.bpfmaps import Maps
from agent.probes.spec import (Context, Field, Figures, HistSpec, MapSpec, ProbeSpec, Series,
                               Signal, Smoke, merged, quantile_seconds)
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


def summarize(win: ProbeSnapshot, cum: ProbeSnapshot, ctx: Context) -> Figures:
    h = merged(win.hists)
    return Figures(node={"runqlat_p50": quantile_seconds(h, 0.5, HIST),
                         "runqlat_p95": quantile_seconds(h, 0.95, HIST),
                         "runqlat_p99": quantile_seconds(h, 0.99, HIST),
                         "runqlat_hist_total": merged(cum.hists)})


SPEC = ProbeSpec(
    name="runqlat",
    source="runqlat.bpf.c",
    summary="run-queue latency: wakeup (or preemption) to running, node-wide",
    tracepoints=("sched:sched_wakeup", "sched:sched_switch"),
    optional_tracepoints=("sched:sched_wakeup_new",),
    maps=(MapSpec("runq_latency_hist", 4, 16, lambda c: HIST.layout(c.hist_sub_bits).slots),
          MapSpec("runq_enqueued_at", 4, 16, lambda c: c.max_tasks, define="RUNQ_MAX_TASKS"),
          MapSpec("lost_events", 4, 8, lambda c: 1)),
    hist=HIST,
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
    ),
    payload=(
        Field("runqlat_p50_ms", "runqlat_p50", 1000.0),
        Field("runqlat_p95_ms", "runqlat_p95", 1000.0),
        Field("runqlat_p99_ms", "runqlat_p99", 1000.0),
    ),
    availability="runqlat",
    smoke=Smoke(load=loads.cpu_contention, show="percentiles",
                passive="always has samples: every task that wakes up is one"),
    lost_map="lost_events",
)


def decode(layout: SlotLayout, per_slot: Mapping[int, tuple[int, int]], lost: int,
           taken_at: float) -> ProbeSnapshot:
    """``{slot: (count, sum ns)}`` summed over CPUs -> snapshot (pure)."""
    return ProbeSnapshot(SPEC.name, HIST.unit, taken_at,
                         hists={"": hist_from_slots(layout, per_slot)}, lost=lost)


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

    def defines(self) -> dict:
        d: dict = {**super().defines(), "RUNNABLE_STATE_MASK": hex(self.state_mask())}
        if self.kernel.tracepoint("sched:sched_wakeup_new") is not None:
            d["HAVE_WAKEUP_NEW"] = 1
        return d

    def snapshot(self, maps: Maps) -> ProbeSnapshot:
        slots = {slot: (c, t) for slot, (c, t) in maps.items("runq_latency_hist", "I", "QQ") if c}
        return decode(self.layout, slots, self.lost(maps), time.monotonic())
