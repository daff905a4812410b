"""Log-linear histogram slots, their bounds, percentiles and window differences.

This module is the single definition of the slot rule. ``bpf/common.h`` implements the same
rule in C (``hist_slot``); the probes check after load that both sides agree on SUB_BITS and
the number of slots, and the Prometheus ``le`` bounds are taken from :func:`slot_bounds`.

Rule, with ``SUB = 2**SUB_BITS``:

* a value ``v < 2*SUB`` has its own slot ``v`` (bounds ``[v, v+1)``);
* above that, ``shift = floor(log2 v) - SUB_BITS`` and ``slot = shift*SUB + (v >> shift)``,
  so each power of two ``[2**e, 2**(e+1))`` is split into ``SUB`` equal sub-buckets;
* values beyond the last power of two (``shift > max_shift``) are clamped into the last
  slot, whose upper bound is infinite.

A slot's width is at most ``1/SUB`` of its lower bound, so a percentile interpolated inside
the slot is within ``1/SUB`` (3.1 % for SUB_BITS=5) of the exact sample percentile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

SUB_BITS = 5
SUB = 1 << SUB_BITS


@dataclass(frozen=True)
class SlotLayout:
    """The shape of one histogram: sub-bucket bits and the largest shift kept."""

    sub_bits: int = SUB_BITS
    max_shift: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.sub_bits <= 8:
            raise ValueError(f"sub_bits must be 1..8, got {self.sub_bits!r}")
        if not 0 <= self.max_shift <= 63 - self.sub_bits:
            raise ValueError(f"max_shift must be 0..{63 - self.sub_bits}, got {self.max_shift!r}")

    @property
    def sub(self) -> int:
        return 1 << self.sub_bits

    @property
    def slots(self) -> int:
        """Number of slots: ``(max_shift + 2) * SUB``."""
        return (self.max_shift + 2) * self.sub

    def slot_of(self, value: int) -> int:
        """Slot index of a non-negative integer value (the C ``hist_slot``)."""
        if value < 0:
            raise ValueError(f"histogram values are non-negative, got {value!r}")
        value = int(value)
        if value < self.sub:
            return value
        shift = value.bit_length() - 1 - self.sub_bits
        if shift > self.max_shift:
            return self.slots - 1
        return shift * self.sub + (value >> shift)

    def bounds(self, slot: int) -> tuple[float, float]:
        """``[lower, upper)`` of a slot; the last slot's upper bound is ``inf``."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot must be 0..{self.slots - 1}, got {slot!r}")
        if slot < 2 * self.sub:
            lo, hi = slot, slot + 1
        else:
            shift = slot // self.sub - 1
            m = slot - shift * self.sub
            lo, hi = m << shift, (m + 1) << shift
        if slot == self.slots - 1:
            return float(lo), math.inf
        return float(lo), float(hi)


def percentile(layout: SlotLayout, counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram given as ``{slot: count}``.

    Interpolates linearly inside the slot that holds rank ``q*total``, as PromQL's
    ``histogram_quantile`` does; a rank in the open-ended last slot returns that slot's lower
    bound. Returns ``None`` for an empty histogram.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q!r}")
    items = sorted((s, c) for s, c in counts.items() if c > 0)
    total = sum(c for _, c in items)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for slot, count in items:
        if seen + count >= rank:
            lo, hi = layout.bounds(slot)
            if math.isinf(hi):
                return lo
            return lo + (hi - lo) * max(rank - seen, 0.0) / count
        seen += count
    lo, hi = layout.bounds(items[-1][0])  # q == 1.0 with float rounding
    return lo if math.isinf(hi) else hi


def diff_counts(prev: Mapping, cur: Mapping) -> tuple[dict, bool]:
    """Window difference of two cumulative ``{key: count}`` snapshots.

    Returns ``(delta, reset)``. A key absent from a snapshot counts as 0. If any counter went
    backwards (or vanished) the source was reset (map recreated, probe reloaded): the window is
    then ``cur`` itself, which is what accumulated since the reset, and ``reset`` is True.
    """
    reset = any(cur.get(k, 0) < v for k, v in prev.items())
    if reset:
        return {k: v for k, v in cur.items() if v}, True
    delta = {}
    for k, v in cur.items():
        d = v - prev.get(k, 0)
        if d:
            delta[k] = d
    return delta, False


def merge_counts(many: Iterable[Mapping]) -> dict:
    """Sum several ``{key: count}`` mappings."""
    out: dict = {}
    for m in many:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out


def export_bounds(layout: SlotLayout, per_octave: int, lo: int, hi: int) -> list[int]:
    """Upper bounds for an exported (coarser) histogram, every one a slot boundary of
    ``layout`` so that exported buckets are exact sums of slots.

    ``per_octave`` boundaries per power of two (a power of two dividing SUB) from ``lo`` up to
    ``hi`` (both powers of two).
    """
    if per_octave < 1 or layout.sub % per_octave:
        raise ValueError(f"per_octave must divide {layout.sub}, got {per_octave}")
    if lo < 1 or lo & (lo - 1) or hi & (hi - 1) or hi <= lo:
        raise ValueError(f"lo and hi must be powers of two with lo < hi, got {lo}, {hi}")
    out = []
    e = lo.bit_length() - 1
    while (1 << e) < hi:
        base = 1 << e
        for j in range(per_octave):
            b = base + j * base // per_octave
            if b >= lo and b == int(b):
                out.append(b)
        e += 1
    out.append(hi)
    return sorted(set(out))


def cumulative_buckets(layout: SlotLayout, counts: Mapping[int, int],
                       bounds: list[int]) -> list[int]:
    """Cumulative counts at each upper bound (values < bound), then the total (+Inf)."""
    items = sorted((layout.bounds(s)[1], c) for s, c in counts.items() if c)
    out = []
    i = 0
    running = 0
    for b in bounds:
        while i < len(items) and items[i][0] <= b:
            running += items[i][1]
            i += 1
        out.append(running)
    out.append(sum(c for _, c in items))
    return out
