"""skb_drop: dropped skbs by reason, from skb:kfree_skb; reason names from the running kernel."""

from __future__ import annotations

import time

from agent.model import ProbeSnapshot
from agent.probes.base import BccProbe

DROP_SLOTS = 512  # reason numbers the array can hold; 6.18 defines ~128
UNKNOWN = "unknown"  # kernel without a reason field (< 5.17)
OUT_OF_RANGE = "REASON_OUT_OF_RANGE"


class SkbDropProbe(BccProbe):
    name = "skb_drop"
    source = "skb_drop.bpf.c"
    required = ("skb:kfree_skb",)
    unit = ""
    contract = {"drops_by_reason": (4, 8)}

    @property
    def has_reason(self) -> bool:
        return self.kernel.tracepoint("skb:kfree_skb").has("reason")

    def defines(self) -> dict:
        d: dict = {"DROP_SLOTS": DROP_SLOTS, "HIST_SUB_BITS": 5, "HIST_MAX_SHIFT": 0}
        if self.has_reason:
            d["HAVE_REASON"] = 1
        return d

    def start(self) -> None:
        self.check_supported()
        self.detail["reason_names"] = (self.kernel.drop_reasons.source if self.has_reason
                                       else "no reason field: counted as 'unknown'")
        super().start()

    def expected_entries(self):
        return {"drops_by_reason": DROP_SLOTS}

    def reason_name(self, slot: int) -> str | None:
        """Name of an array slot, or None for a slot that is not a drop."""
        if slot == DROP_SLOTS - 1:
            return UNKNOWN
        if slot == DROP_SLOTS - 2:
            return OUT_OF_RANGE
        reasons = self.kernel.drop_reasons
        return reasons.name(slot) if reasons.is_drop(slot) else None

    def snapshot(self, bpf) -> ProbeSnapshot:
        counts: dict[str, int] = {}
        for k, per_cpu in bpf[b"drops_by_reason"].items():
            total = self.percpu_sum(per_cpu)
            if not total:
                continue
            name = self.reason_name(int(k.value))
            if name is not None:
                counts[name] = counts.get(name, 0) + total
        return ProbeSnapshot(self.name, self.unit, time.monotonic(), counts=counts)
