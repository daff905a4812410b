"""skb_drop: dropped skbs by reason, from skb:kfree_skb; reason names from the running kernel."""

from __future__ import annotations

import time
from typing import Callable, Mapping

from agent import loads
from agent.kernel import DropReasons, read_btf_enum, resolve_drop_reasons
from agent.model import ProbeSnapshot
from agent.probes.base import BccProbe
from agent.probes.bpfmaps import Maps
from agent.probes.loader import CompileRequest
from agent.probes.spec import Context, Field, Figures, MapSpec, ProbeSpec, Series, Signal, Smoke
from agent.stats.scoring import weighted_drop_rate

DROP_SLOTS = 512  # reason numbers the array can hold; 6.18 defines ~128
UNKNOWN = "unknown"  # kernel without a reason field (< 5.17)
OUT_OF_RANGE = "REASON_OUT_OF_RANGE"


def summarize(win: ProbeSnapshot, cum: ProbeSnapshot, ctx: Context) -> Figures:
    """Drops per second by reason over the time between the two reads, and weighted."""
    seconds = win.seconds or ctx.window_seconds
    rates = {r: n / seconds for r, n in sorted(win.counts.items())}
    return Figures(node={
        "drop_rate": sum(win.counts.values()) / seconds,
        "drop_reason_rates": rates,
        "drop_rate_weighted": weighted_drop_rate(rates, ctx.score.drop_reason_weights,
                                                 ctx.score.default_drop_weight),
        "drops_total": dict(sorted(cum.counts.items())),
    })


SPEC = ProbeSpec(
    name="skb_drop",
    source="skb_drop.bpf.c",
    summary="dropped skbs by kernel drop reason",
    tracepoints=("skb:kfree_skb",),
    maps=(MapSpec("drops_by_reason", 4, 8, lambda c: DROP_SLOTS, define="DROP_SLOTS"),),
    summarize=summarize,
    signals=(Signal("drop_rate", "drop_rate_weighted"),),
    series=(
        Series("ebpf_drop_rate", "Dropped skbs per second over the last window (all reasons; "
               "NOT_DROPPED_YET and CONSUMED are not drops)", "drop_rate"),
        Series("ebpf_drop_reason_rate",
               "Dropped skbs per second over the last window, by kernel drop reason",
               "drop_reason_rates", label="reason"),
        Series("ebpf_drop_rate_weighted", "Drop rate weighted by reason (score input), per second",
               "drop_rate_weighted"),
        Series("ebpf_skb_drops", "Dropped skbs by kernel drop reason (skbs, not packets: one GRO "
               "skb can carry many)", "drops_total", kind="counter", label="reason"),
    ),
    payload=(
        Field("drop_rate", "drop_rate"),
        Field("drop_rate_weighted", "drop_rate_weighted"),
        Field("drop_reason_rates", "drop_reason_rates", mapping=True),
    ),
    availability="drops",
    smoke=Smoke(load=loads.closed_port_connects, show="top_keys",
                passive="counts whatever the node drops; a quiet node is healthy"),
)


def reason_namer(names: Callable[[int], str], is_drop: Callable[[int], bool]) -> Callable[[int], str | None]:
    """Array slot -> reason name, or None for a slot that is not a drop."""
    def name(slot: int) -> str | None:
        if slot == DROP_SLOTS - 1:
            return UNKNOWN
        if slot == DROP_SLOTS - 2:
            return OUT_OF_RANGE
        return names(slot) if is_drop(slot) else None
    return name


def decode(per_slot: Mapping[int, int], name: Callable[[int], str | None],
           taken_at: float) -> ProbeSnapshot:
    """Counts by array slot -> counts by reason name (pure); non-drops are left out."""
    counts: dict[str, int] = {}
    for slot, total in per_slot.items():
        if not total:
            continue
        n = name(slot)
        if n is not None:
            counts[n] = counts.get(n, 0) + total
    return ProbeSnapshot(SPEC.name, "", taken_at, counts=counts)


class SkbDropProbe(BccProbe):
    spec = SPEC
    _reasons: DropReasons | None = None

    @property
    def reasons(self) -> DropReasons:
        """The running kernel's reason names: the tracepoint's own table, completed from BTF's
        ``enum skb_drop_reason`` (read once)."""
        if self._reasons is None:
            btf_enum = None
            if self.kernel.btf_path is not None:
                try:
                    btf_enum = read_btf_enum(self.kernel.btf_path, "skb_drop_reason")
                except (ValueError, OSError) as e:
                    self.detail["btf"] = f"unreadable: {e}"
            self._reasons = resolve_drop_reasons(self.kernel.tracepoint("skb:kfree_skb"), btf_enum)
        return self._reasons

    @reasons.setter
    def reasons(self, value: DropReasons) -> None:
        self._reasons = value

    def kernel_notes(self) -> list[tuple[str, str]]:
        fmt = self.kernel.tracepoint("skb:kfree_skb")
        if fmt is None:
            return []
        if not fmt.has("reason"):
            return [("drop reasons", "no reason field on this kernel: drops counted as 'unknown'")]
        return [("drop reasons", f"{len(self.reasons.names)} names from {self.reasons.source}")]

    @property
    def has_reason(self) -> bool:
        return self.kernel.tracepoint("skb:kfree_skb").has("reason")

    def defines(self) -> dict:
        return {**super().defines(), **({"HAVE_REASON": 1} if self.has_reason else {})}

    def compile_request(self) -> CompileRequest:
        # here, not in start(): the agent's start-up compiles every probe in one child
        # (ProbeSet.start_all: compile_request, then adopt) and never calls start()
        self.check_supported()
        self.detail["reason_names"] = (self.reasons.source if self.has_reason
                                       else "no reason field: counted as 'unknown'")
        return super().compile_request()

    def reason_name(self, slot: int) -> str | None:
        reasons = self.reasons
        return reason_namer(reasons.name, reasons.is_drop)(slot)

    def snapshot(self, maps: Maps) -> ProbeSnapshot:
        per_slot = dict(maps.items("drops_by_reason", "I", "Q"))
        return decode(per_slot, self.reason_name, time.monotonic())
