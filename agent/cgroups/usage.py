"""Pure window math over two cgroup readings: CPU cores used, throttling, pressure. No IO.

Counter-reset rule (the same as the probes' windows): a cumulative counter that goes backwards
(a cgroup removed and created again under the same path) restarts the window, and the window's
figure is what accumulated since the reset, divided by the whole elapsed time -- a lower bound
of the true average, exact when the cgroup was recreated at the start of the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from agent.cgroups.model import CgroupReading, CgroupSample, Pressure


def counter_delta(prev: int, cur: int) -> int:
    """``cur - prev`` of a cumulative counter; on a reset (``cur < prev``) ``cur``."""
    if prev < 0 or cur < 0:
        raise ValueError(f"counter values must be non-negative, got prev={prev!r} cur={cur!r}")
    return cur - prev if cur >= prev else cur


def cpu_cores(prev_usage_usec: int, cur_usage_usec: int, elapsed_seconds: float) -> float:
    """Average CPU cores used over a window: Δusage_usec / 1e6 / elapsed."""
    if not elapsed_seconds > 0:
        raise ValueError(f"elapsed_seconds must be positive, got {elapsed_seconds!r}")
    return counter_delta(prev_usage_usec, cur_usage_usec) / 1e6 / elapsed_seconds


def stall_fraction(prev_total_usec: int, cur_total_usec: int, elapsed_seconds: float) -> float:
    """Share of wall time (0..1) some task of the cgroup was stalled, from two PSI totals."""
    if not elapsed_seconds > 0:
        raise ValueError(f"elapsed_seconds must be positive, got {elapsed_seconds!r}")
    return min(1.0, counter_delta(prev_total_usec, cur_total_usec) / 1e6 / elapsed_seconds)


@dataclass(frozen=True)
class CgroupWindow:
    """One cgroup's figures over a window. None: not available (file absent or unparsed in one
    of the two readings)."""

    path: str
    elapsed_seconds: float
    cpu_cores: Optional[float] = None
    cpu_limit_cores: Optional[float] = None  # from cpu.max at the end of the window; None = unlimited or unknown
    throttled_periods_ratio: Optional[float] = None  # Δnr_throttled / Δnr_periods (0 when no periods ran)
    throttled_seconds: Optional[float] = None  # Δthrottled_usec in seconds
    cpu_some_stall: Optional[float] = None  # cpu.pressure "some", share of wall time
    memory_some_stall: Optional[float] = None
    memory_working_set_bytes: Optional[int] = None
    memory_limit_bytes: Optional[int] = None
    reset: bool = False


def _stall(prev: Optional[Pressure], cur: Optional[Pressure], elapsed: float) -> Optional[float]:
    if prev is None or cur is None:
        return None
    return stall_fraction(prev.some.total_usec, cur.some.total_usec, elapsed)


def cgroup_window(prev: CgroupSample, cur: CgroupSample) -> Optional[CgroupWindow]:
    """The window between two readings of the same cgroup; None when no time passed."""
    elapsed = cur.taken_at - prev.taken_at
    if not elapsed > 0:
        return None
    cores = throttled_ratio = throttled_s = None
    reset = False
    if prev.cpu_stat is not None and cur.cpu_stat is not None:
        p, c = prev.cpu_stat, cur.cpu_stat
        reset = c.usage_usec < p.usage_usec
        cores = cpu_cores(p.usage_usec, c.usage_usec, elapsed)
        if None not in (p.nr_periods, c.nr_periods, p.nr_throttled, c.nr_throttled):
            periods = counter_delta(p.nr_periods, c.nr_periods)
            throttled = counter_delta(p.nr_throttled, c.nr_throttled)
            throttled_ratio = min(1.0, throttled / periods) if periods else 0.0
        if p.throttled_usec is not None and c.throttled_usec is not None:
            throttled_s = counter_delta(p.throttled_usec, c.throttled_usec) / 1e6
    return CgroupWindow(
        path=cur.path,
        elapsed_seconds=elapsed,
        cpu_cores=cores,
        cpu_limit_cores=cur.cpu_max.limit_cores if cur.cpu_max is not None else None,
        throttled_periods_ratio=throttled_ratio,
        throttled_seconds=throttled_s,
        cpu_some_stall=_stall(prev.cpu_pressure, cur.cpu_pressure, elapsed),
        memory_some_stall=_stall(prev.memory_pressure, cur.memory_pressure, elapsed),
        memory_working_set_bytes=cur.working_set_bytes,
        memory_limit_bytes=cur.memory_max.limit_bytes if cur.memory_max is not None else None,
        reset=reset,
    )


def pod_windows(prev: CgroupReading, cur: CgroupReading) -> Dict[str, CgroupWindow]:
    """Pod-level windows keyed by pod uid (and standalone cgroups keyed by path). A pod present
    in only one of the readings has no window yet (it is new, or it is gone)."""
    out: Dict[str, CgroupWindow] = {}
    for uid, ps in cur.pods.items():
        pp = prev.pods.get(uid)
        if pp is not None:
            w = cgroup_window(pp.pod, ps.pod)
            if w is not None:
                out[uid] = w
    for path, s in cur.others.items():
        p = prev.others.get(path)
        if p is not None:
            w = cgroup_window(p, s)
            if w is not None:
                out[path] = w
    return out
