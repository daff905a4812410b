"""Pure parsers of cgroup v2 files and of the mount table. Text in, dataclasses out; bad input
raises ``ValueError`` quoting the offending text. No IO."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

from agent.cgroups.model import (
    CpuMax,
    CpuStat,
    MemoryMax,
    MemoryStat,
    Pressure,
    PsiLine,
    working_set,
)

__all__ = [
    "parse_cpu_stat",
    "parse_cpu_max",
    "parse_pressure",
    "parse_memory_current",
    "parse_memory_max",
    "parse_memory_stat",
    "parse_cgroup2_mounts",
    "choose_cgroup2_root",
    "working_set",
]

_QUOTE_MAX = 80
_U64_MAX = (1 << 64) - 1


def _q(text: str) -> str:
    """The offending text, quoted and shortened for an error message."""
    if len(text) > _QUOTE_MAX:
        text = text[:_QUOTE_MAX] + "..."
    return repr(text)


def _uint(token: str, what: str, whole: str) -> int:
    # int() accepts "+5", " 5", "5_000" and non-ASCII digits: the kernel writes none of these
    if not token or not token.isascii() or not token.isdigit():
        raise ValueError(f"{what}: {_q(token)} is not a non-negative integer in {_q(whole)}")
    v = int(token)
    if v > _U64_MAX:
        raise ValueError(f"{what}: {_q(token)} does not fit in 64 bits in {_q(whole)}")
    return v


def _flat_keyed(text: str, what: str) -> Dict[str, int]:
    """``key value`` lines (cpu.stat, memory.stat). Blank lines are ignored; a key twice is
    garbled."""
    out: Dict[str, int] = {}
    for line in text.split("\n"):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{what}: line {_q(line)} is not 'key value'")
        key, value = parts
        if key in out:
            raise ValueError(f"{what}: key {_q(key)} appears twice")
        out[key] = _uint(value, what, line)
    return out


def parse_cpu_stat(text: str) -> CpuStat:
    """``cpu.stat``: ``usage_usec``, ``user_usec``, ``system_usec`` are required (the cgroup core
    writes them even without the cpu controller); the throttling counters are optional."""
    kv = _flat_keyed(text, "cpu.stat")
    missing = [k for k in ("usage_usec", "user_usec", "system_usec") if k not in kv]
    if missing:
        raise ValueError(f"cpu.stat: no {missing[0]} in {_q(text)}")
    return CpuStat(
        usage_usec=kv["usage_usec"],
        user_usec=kv["user_usec"],
        system_usec=kv["system_usec"],
        nr_periods=kv.get("nr_periods"),
        nr_throttled=kv.get("nr_throttled"),
        throttled_usec=kv.get("throttled_usec"),
    )


def parse_cpu_max(text: str) -> CpuMax:
    """``cpu.max``: ``"<quota> <period>"``; quota ``max`` means unlimited."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"cpu.max: {_q(text)} is not '<quota|max> <period>'")
    quota_s, period_s = parts
    period = _uint(period_s, "cpu.max period", text)
    if period == 0:
        raise ValueError(f"cpu.max: period 0 in {_q(text)}")
    quota = None if quota_s == "max" else _uint(quota_s, "cpu.max quota", text)
    return CpuMax(quota_usec=quota, period_usec=period)


def _single_value(text: str, what: str) -> str:
    parts = text.split()
    if len(parts) != 1:
        raise ValueError(f"{what}: {_q(text)} is not a single value")
    return parts[0]


def parse_memory_current(text: str) -> int:
    """``memory.current``: bytes."""
    return _uint(_single_value(text, "memory.current"), "memory.current", text)


def parse_memory_max(text: str) -> MemoryMax:
    """``memory.max``: bytes, or ``max`` (unlimited)."""
    token = _single_value(text, "memory.max")
    if token == "max":
        return MemoryMax(limit_bytes=None)
    return MemoryMax(limit_bytes=_uint(token, "memory.max", text))


def parse_memory_stat(text: str) -> MemoryStat:
    """``memory.stat``: requires ``inactive_file`` (what the working set subtracts)."""
    kv = _flat_keyed(text, "memory.stat")
    if "inactive_file" not in kv:
        raise ValueError(f"memory.stat: no inactive_file in {_q(text)}")
    return MemoryStat(
        inactive_file=kv["inactive_file"],
        active_file=kv.get("active_file"),
        anon=kv.get("anon"),
        file=kv.get("file"),
    )


def _avg(token: str, line: str) -> float:
    # the kernel prints "%lu.%02lu": digits, a dot, two digits; within 0..100
    whole, dot, frac = token.partition(".")
    if not dot or not whole.isascii() or not whole.isdigit() or not frac.isascii() or not frac.isdigit():
        raise ValueError(f"pressure: {_q(token)} is not a decimal percentage in {_q(line)}")
    v = float(token)
    if not math.isfinite(v) or v > 100.0:
        raise ValueError(f"pressure: {_q(token)} is not within 0..100 in {_q(line)}")
    return v


def _psi_line(line: str) -> tuple[str, PsiLine]:
    parts = line.split()
    if len(parts) != 5 or parts[0] not in ("some", "full"):
        raise ValueError(f"pressure: line {_q(line)} is not 'some|full avg10= avg60= avg300= total='")
    fields = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq or key not in ("avg10", "avg60", "avg300", "total") or key in fields:
            raise ValueError(f"pressure: {_q(part)} is not an expected field in {_q(line)}")
        fields[key] = value
    return parts[0], PsiLine(
        avg10=_avg(fields["avg10"], line),
        avg60=_avg(fields["avg60"], line),
        avg300=_avg(fields["avg300"], line),
        total_usec=_uint(fields["total"], "pressure total", line),
    )


def parse_pressure(text: str) -> Pressure:
    """``cpu.pressure`` / ``memory.pressure`` / ``io.pressure``: a ``some`` line and, on most
    kernels, a ``full`` line."""
    seen: Dict[str, PsiLine] = {}
    for line in text.split("\n"):
        if not line.strip():
            continue
        kind, psi = _psi_line(line)
        if kind in seen:
            raise ValueError(f"pressure: {kind!r} appears twice in {_q(text)}")
        seen[kind] = psi
    if "some" not in seen:
        raise ValueError(f"pressure: no 'some' line in {_q(text)}")
    return Pressure(some=seen["some"], full=seen.get("full"))


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \040 \011 \012 \134
    out = []
    i = 0
    while i < len(field):
        c = field[i]
        if c == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isascii() and field[i + 1 : i + 4].isdigit():
            try:
                out.append(chr(int(field[i + 1 : i + 4], 8)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return "".join(out)


def parse_cgroup2_mounts(text: str) -> List[str]:
    """Mount points of every ``cgroup2`` file system in a ``/proc/<pid>/mounts`` text, in order.
    Lines that are not mount entries are ignored (the table is the kernel's, not user input)."""
    points = []
    for line in text.split("\n"):
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            points.append(_unescape_mount(parts[1]))
    return points


def choose_cgroup2_root(mount_points: Iterable[str], candidates: Sequence[str]) -> Optional[str]:
    """The cgroup v2 root to read, given the cgroup2 mount points and the configured candidates.

    1. the first candidate that is itself a cgroup2 mount point (a pure v2 node: ``/sys/fs/cgroup``;
       the DaemonSet: ``/host/sys/fs/cgroup``);
    2. else the first cgroup2 mount point below a candidate (hybrid layout:
       ``/sys/fs/cgroup/unified`` below ``/sys/fs/cgroup``);
    3. else None (no v2 hierarchy where we were told to look).
    """
    points = [p.rstrip("/") or "/" for p in mount_points]
    cands = [c.rstrip("/") or "/" for c in candidates]
    for c in cands:
        if c in points:
            return c
    for c in cands:
        prefix = c if c.endswith("/") else c + "/"
        for p in points:
            if p.startswith(prefix):
                return p
    return None
