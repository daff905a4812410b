"""Node-wide readers from /proc: CPU time, memory, and TCP segment counters of every network
namespace. ``parse_*`` are pure and raise ValueError quoting the text; ``read_*`` do the IO
below a root taken from Config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class CpuTimes:
    total: int  # jiffies, all CPUs, all states
    idle: int  # idle + iowait


def parse_proc_stat(text: str) -> CpuTimes:
    for line in text.splitlines():
        if line.startswith("cpu "):
            parts = line.split()[1:]
            try:
                vals = [int(x) for x in parts]
            except ValueError:
                raise ValueError(f"/proc/stat: non-numeric cpu line {line!r}") from None
            if len(vals) < 4:
                raise ValueError(f"/proc/stat: short cpu line {line!r}")
            # user nice system idle iowait irq softirq steal (guest times are inside user/nice)
            total = sum(vals[:8])
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            return CpuTimes(total, idle)
    raise ValueError(f"/proc/stat: no aggregate 'cpu ' line in {text[:60]!r}")


def cpu_utilization(prev: CpuTimes | None, cur: CpuTimes) -> float | None:
    """Busy share of all CPUs between two readings (0..1); None without a usable window."""
    if prev is None:
        return None
    dt = cur.total - prev.total
    di = cur.idle - prev.idle
    if dt <= 0 or di < 0:
        return None
    return min(max(1.0 - di / dt, 0.0), 1.0)


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes."""
    vals = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            parts = rest.split()
            if not parts or not parts[0].isdigit():
                raise ValueError(f"/proc/meminfo: bad line {line!r}")
            vals[name] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    if len(vals) != 2:
        raise ValueError(f"/proc/meminfo: MemTotal/MemAvailable missing in {text[:60]!r}")
    return vals["MemTotal"], vals["MemAvailable"]


def parse_snmp_tcp(text: str) -> dict[str, int]:
    """The ``Tcp:`` header/value pair of /proc/net/snmp as {counter: value}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("Tcp:")]
    if len(lines) < 2:
        raise ValueError(f"/proc/net/snmp: no Tcp lines in {text[:60]!r}")
    names, values = lines[0].split()[1:], lines[1].split()[1:]
    if len(names) != len(values):
        raise ValueError(f"/proc/net/snmp: Tcp header/value mismatch {lines[:2]!r}")
    try:
        return {n: int(v) for n, v in zip(names, values)}
    except ValueError:
        raise ValueError(f"/proc/net/snmp: non-numeric Tcp value in {lines[1]!r}") from None


@dataclass(frozen=True)
class TcpSegments:
    out_segs: int
    retrans_segs: int


def read_netns_tcp(proc_root: Path) -> dict[int, TcpSegments]:
    """TCP segment counters of every network namespace that has a process, keyed by
    :func:`netns_key`. (A namespace without any process has no TCP endpoint to count.)"""
    out: dict[int, TcpSegments] = {}
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(proc_root / name / "net" / "snmp") as f:
                key = os.fstat(f.fileno()).st_ino
                if key in out:
                    continue
                c = parse_snmp_tcp(f.read())
            out[key] = TcpSegments(c["OutSegs"], c["RetransSegs"])
        except (OSError, ValueError, KeyError):
            continue  # process gone or unreadable: another process of that netns may do
    return out


def tcp_window(prev: Mapping[int, TcpSegments] | None,
               cur: Mapping[int, TcpSegments]) -> tuple[int, int] | None:
    """(sent, retransmitted) segments over a window, summed over namespaces seen at both ends.

    A namespace seen for the first time contributes from the next window on; one whose
    counters went backwards (inode reused) is skipped for this window.
    """
    if prev is None:
        return None
    sent = retrans = 0
    for ino, c in cur.items():
        p = prev.get(ino)
        if p is None or c.out_segs < p.out_segs or c.retrans_segs < p.retrans_segs:
            continue
        sent += c.out_segs - p.out_segs
        retrans += c.retrans_segs - p.retrans_segs
    return sent, retrans


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """/proc/<pid>/net/dev as {interface: (rx_bytes, tx_bytes)}."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"/proc/net/dev: bad line {line!r}")
        fields = rest.split()
        if len(fields) < 9 or not (fields[0].isdigit() and fields[8].isdigit()):
            raise ValueError(f"/proc/net/dev: bad line {line!r}")
        out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def netns_key(proc_root: Path, pid: int | str) -> int | None:
    """A stable identity of the network namespace ``pid`` is in: the inode of its
    ``net/snmp`` entry, which procfs creates once per namespace. Unlike the ``ns/net`` link this
    needs no ptrace access to the process, so it also works from a container for host
    processes with more capabilities than the agent."""
    try:
        return os.stat(proc_root / str(pid) / "net" / "snmp").st_ino
    except OSError:
        return None


def read_netns_bytes(proc_root: Path, pid: int) -> tuple[int, int] | None:
    """(rx, tx) bytes over every interface but loopback, in the network namespace of ``pid``."""
    try:
        devs = parse_net_dev((proc_root / str(pid) / "net" / "dev").read_text())
    except (OSError, ValueError):
        return None
    rx = sum(r for name, (r, _) in devs.items() if name != "lo")
    tx = sum(t for name, (_, t) in devs.items() if name != "lo")
    return rx, tx
