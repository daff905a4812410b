"""runqlat: run-queue latency (nanoseconds), from sched_wakeup{,_new} and sched_switch."""

from __future__ import annotations

import logging
import time

from agent.kernel import parse_switch_state_mask
from agent.model import ProbeSnapshot
from agent.probes.base import BccProbe, hist_from_slots
from agent.stats.histogram import SlotLayout

log = logging.getLogger(__name__)

# latencies up to 2**36 ns (68 s) get their own slot
RUNQ_VALUE_BITS = 36
# TASK_REPORT_MAX - 1 on every kernel since 4.14; used only if the format cannot be parsed
FALLBACK_STATE_MASK = 0xFF


class RunqlatProbe(BccProbe):
    name = "runqlat"
    source = "runqlat.bpf.c"
    required = ("sched:sched_wakeup", "sched:sched_switch")
    unit = "ns"
    contract = {"runq_latency_hist": (4, 16), "runq_enqueued_at": (4, 16), "runq_lost": (4, 8)}

    @property
    def layout(self) -> SlotLayout:
        sub = self.config.hist_sub_bits
        return SlotLayout(sub, RUNQ_VALUE_BITS - sub - 1)

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
        d: dict = {
            "HIST_SUB_BITS": self.layout.sub_bits,
            "HIST_MAX_SHIFT": self.layout.max_shift,
            "RUNQ_MAX_TASKS": self.config.max_tasks,
            "RUNNABLE_STATE_MASK": hex(self.state_mask()),
        }
        if self.kernel.tracepoint("sched:sched_wakeup_new") is not None:
            d["HAVE_WAKEUP_NEW"] = 1
        return d

    def attached(self) -> list[str]:
        tps = list(self.required)
        if self.kernel.tracepoint("sched:sched_wakeup_new") is not None:
            tps.append("sched:sched_wakeup_new")
        return tps

    def expected_entries(self):
        return {"runq_latency_hist": self.layout.slots, "runq_enqueued_at": self.config.max_tasks}

    def snapshot(self, bpf) -> ProbeSnapshot:
        slots = {}
        for k, per_cpu in bpf[b"runq_latency_hist"].items():
            c = self.percpu_sum(per_cpu, "count")
            if c:
                slots[int(k.value)] = (c, self.percpu_sum(per_cpu, "sum"))
        return ProbeSnapshot(self.name, self.unit, time.monotonic(),
                             hists={"": hist_from_slots(self.layout, slots)},
                             lost=self.lost(bpf, "runq_lost"))
