"""Node-level figures from the seed design: dominant share, Jain's fairness, SLO violation
share, normalisation and the node score. Pure functions of plain values."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from agent.stats.histogram import SlotLayout


def dominant_share(cpu_used: float | None, cpu_alloc: float | None,
                   mem_used: float | None, mem_alloc: float | None) -> float | None:
    """max(cpu_used/cpu_alloc, mem_used/mem_alloc), clamped to 0..1; a resource whose figures
    are unavailable is left out; None when neither is available."""
    shares = []
    for used, alloc in ((cpu_used, cpu_alloc), (mem_used, mem_alloc)):
        if used is not None and alloc:
            shares.append(min(max(used / alloc, 0.0), 1.0))
    return max(shares) if shares else None


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²) over non-negative values.

    1.0 for no values, a single value, or all zeros (nobody has more than anybody else);
    1/n when one value holds everything.
    """
    xs = [float(v) for v in values]
    if any(v < 0 or math.isnan(v) for v in xs):
        raise ValueError(f"Jain's index needs non-negative values, got {xs!r}")
    n = len(xs)
    sq = sum(v * v for v in xs)
    if n <= 1 or sq == 0:
        return 1.0
    return sum(xs) ** 2 / (n * sq)


def count_above(layout: SlotLayout, counts: Mapping[int, int], threshold: float) -> float:
    """How many histogram values exceed ``threshold``, interpolating linearly inside the slot
    that contains it (the same assumption the percentile code makes)."""
    above = 0.0
    for slot, c in counts.items():
        if c <= 0:
            continue
        lo, hi = layout.bounds(slot)
        if lo >= threshold:
            above += c
        elif hi > threshold and not math.isinf(hi):
            above += c * (hi - threshold) / (hi - lo)
    return above


def normalize(value: float | None, lo: float, hi: float) -> float | None:
    """Map ``value`` linearly from [lo, hi] to [0, 1], clamped; None stays None."""
    if value is None:
        return None
    if hi <= lo:
        raise ValueError(f"normalisation bounds must have lo < hi, got [{lo}, {hi}]")
    return min(max((value - lo) / (hi - lo), 0.0), 1.0)


def node_score(normalized: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """100·(1 − badness), badness = Σ wᵢ·normᵢ.

    Signals that are unavailable (None) are left out and the remaining weights are rescaled
    to their original total, so a probe that is down neither helps nor hurts a node. None when
    no signal is available.
    """
    total_w = sum(weights.values())
    avail = {k: v for k, v in normalized.items() if v is not None and weights.get(k, 0) > 0}
    w_avail = sum(weights[k] for k in avail)
    if not avail or w_avail <= 0:
        return None
    badness = sum(weights[k] * v for k, v in avail.items()) * (total_w / w_avail)
    return round(100.0 * (1.0 - min(max(badness, 0.0), 1.0)), 3)


def weighted_drop_rate(rates: Mapping[str, float], weights: Mapping[str, float],
                       default_weight: float) -> float:
    """Σ weight(reason) · rate(reason)."""
    return sum(rate * weights.get(reason, default_weight) for reason, rate in rates.items())
