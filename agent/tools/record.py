"""``ebpf-edge-agent record --out FILE``: DepCon2's training rows (seed 002), one per pod per
window, from the running agent's ``/report``, as CSV.

- Appends to FILE (the header is written once, to a new or empty file; a file whose header is
  not this one is refused, never mixed).
- Rotates between windows, never inside one: when FILE has reached ``--rotate-bytes`` it is
  renamed FILE.1 (FILE.1 -> FILE.2 ..., ``--keep`` old files) and a new FILE starts with a header.
- A window is written as one block and flushed; SIGINT/SIGTERM only set a flag that the loop
  checks between windows, so a stop never leaves a torn row.
- A jump in the report's ``sequence`` (missed windows) or a new ``agent_instance`` (the agent
  restarted) is written as a ``gap`` row saying so, never silently. Appending to an existing
  file continues from its last row, so the time the recorder was not running is a gap too.

Columns: see :data:`COLUMNS`. Units: cores, share 0..1, bytes per second, milliseconds,
retransmitted skbs in the window. An empty cell is a figure the agent does not have (probe
down, host-network pod, no cpu controller) -- never written as 0.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from agent.tools import client

COLUMNS = (
    "kind",  # "window" (a data row) or "gap" (a marked discontinuity; the data cells are empty)
    "time",  # the report's timestamp (RFC 3339, UTC): the end of the window
    "node", "agent_instance", "sequence", "window_seconds",
    "namespace", "pod", "uid",
    "cpu_quota_cores",  # the pod's CPU limit (cpu.max quota / period); empty: unlimited
    "cpu_used_cores",
    "cpu_throttled_ratio",  # share of CFS periods throttled in the window
    "tx_bytes_per_second", "rx_bytes_per_second",
    "rtt_p50_ms", "rtt_p99_ms",
    "retrans_events",
    "note",  # on gap rows: what happened
)
HEADER = ",".join(COLUMNS) + "\n"


@dataclass(frozen=True)
class Position:
    """Where the recording stands: the last report written."""

    instance: str
    sequence: int


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _per_second(n: Any, seconds: Any) -> float | None:
    if n is None or not isinstance(seconds, (int, float)) or seconds <= 0:
        return None
    return n / seconds


def rows_for(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Pure: one row per pod of one report."""
    base = {"kind": "window", "time": report.get("timestamp"), "node": report.get("node_name"),
            "agent_instance": report.get("agent_instance"), "sequence": report.get("sequence"),
            "window_seconds": report.get("window_seconds")}
    out = []
    for p in sorted(report.get("pods") or [], key=lambda p: (p.get("namespace", ""), p.get("pod", ""),
                                                               p.get("uid", ""))):
        secs = p.get("net_seconds")
        out.append({**base, "namespace": p.get("namespace"), "pod": p.get("pod"), "uid": p.get("uid"),
                    "cpu_quota_cores": p.get("cpu_limit"), "cpu_used_cores": p.get("cpu_used"),
                    "cpu_throttled_ratio": p.get("cpu_throttled_ratio"),
                    "tx_bytes_per_second": _per_second(p.get("net_tx_bytes"), secs),
                    "rx_bytes_per_second": _per_second(p.get("net_rx_bytes"), secs),
                    "rtt_p50_ms": p.get("rtt_p50_ms"), "rtt_p99_ms": p.get("rtt_p99_ms"),
                    "retrans_events": p.get("retrans_events")})
    return out


def gap_for(prev: Position | None, report: dict[str, Any]) -> str | None:
    """Pure: why there is a discontinuity before ``report``, or None."""
    if prev is None:
        return None
    inst, seq = report.get("agent_instance"), report.get("sequence")
    if inst != prev.instance:
        return f"new agent instance {inst} (was {prev.instance}, last sequence {prev.sequence})"
    if isinstance(seq, int) and seq > prev.sequence + 1:
        n = seq - prev.sequence - 1
        return f"sequence {prev.sequence} -> {seq}: {n} window{'s' if n != 1 else ''} not recorded"
    if isinstance(seq, int) and seq < prev.sequence:
        return f"sequence went back {prev.sequence} -> {seq} in the same agent instance"
    return None


def is_new(prev: Position | None, report: dict[str, Any]) -> bool:
    """Whether ``report`` is one not written yet (the same report is polled many times)."""
    if prev is None:
        return True
    return report.get("agent_instance") != prev.instance or report.get("sequence") != prev.sequence


def render(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    return buf.getvalue()


def block_for(prev: Position | None, report: dict[str, Any]) -> str:
    """Pure: the text one new report adds (a gap row first when there is one)."""
    rows = []
    why = gap_for(prev, report)
    if why is not None:
        rows.append({"kind": "gap", "time": report.get("timestamp"), "node": report.get("node_name"),
                     "agent_instance": report.get("agent_instance"),
                     "sequence": report.get("sequence"), "note": why})
    rows += rows_for(report)
    return render(rows)


def last_position(text: str) -> Position | None:
    """Pure: the last report a file's tail (with or without its header) recorded."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        try:
            cells = next(csv.reader([ln]))
        except (csv.Error, StopIteration):
            continue
        if len(cells) != len(COLUMNS) or cells[0] not in ("window", "gap"):
            continue
        row = dict(zip(COLUMNS, cells))
        try:
            return Position(row["agent_instance"], int(row["sequence"]))
        except ValueError:
            continue
    return None


class RecordFile:
    """The CSV file, appended to; rotation between blocks."""

    def __init__(self, path: str, rotate_bytes: int, keep: int) -> None:
        if rotate_bytes <= 0:
            raise ValueError(f"--rotate-bytes {rotate_bytes!r}: must be positive")
        if keep < 1:
            raise ValueError(f"--keep {keep!r}: at least 1 old file")
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.rotations = 0
        self.position = self._open_existing()

    def _open_existing(self) -> Position | None:
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return None
        if size == 0:
            return None
        with open(self.path, "rb") as f:
            head = f.read(len(HEADER) + 1).decode("utf-8", "replace")
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", "replace")
        if not head.startswith(HEADER):
            raise ValueError(f"{self.path}: exists and is not a record file of these columns "
                             f"(first line {head.splitlines()[0][:100]!r}); not appending to it")
        if not tail.endswith("\n"):
            raise ValueError(f"{self.path}: its last line is incomplete (not written by record, or "
                             "the disk filled); fix or move the file, nothing was written")
        return last_position(tail)

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        self.rotations += 1

    def write(self, block: str, position: Position) -> None:
        """Append one block (whole rows) and flush it to the file."""
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            size = 0
        if size >= self.rotate_bytes:
            self._rotate()
            size = 0
        data = (HEADER if size == 0 else "") + block
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.position = position


class Stop:
    """Set by SIGINT/SIGTERM; checked by the loop between blocks."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def run(url: str, out: str, *, rotate_bytes: int, keep: int, poll: float | None = None,
        max_windows: int | None = None, timeout: float = client.DEFAULT_TIMEOUT,
        stop: Stop | None = None, fetch: Callable[[str, float], dict | None] = client.fetch_report,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Record until stopped (or ``max_windows`` reports). Exit status 0 on a clean stop,
    2 on bad input."""
    try:
        f = RecordFile(out, rotate_bytes, keep)
    except ValueError as e:
        log(f"record: {e}")
        return 2
    if stop is None:
        stop = Stop()
        stop.install()
    written = rows = 0
    unreachable = None
    log(f"record: {url}/report -> {out} (rotating at {rotate_bytes} bytes, keeping {keep}); "
        "stop with Ctrl-C or SIGTERM")
    while not stop:
        try:
            report = fetch(url, timeout)
            if unreachable is not None:
                log(f"record: agent reachable again ({unreachable})")
                unreachable = None
        except client.AgentUnreachable as e:
            if unreachable is None:
                log(f"record: cannot read the agent: {e} (retrying; the missed windows will be a gap row)")
            unreachable = str(e)
            report = None
        if report is not None and is_new(f.position, report):
            try:
                pos = Position(str(report["agent_instance"]), int(report["sequence"]))
            except (KeyError, TypeError, ValueError):
                log("record: report without agent_instance/sequence skipped")
            else:
                block = block_for(f.position, report)
                f.write(block, pos)
                written += 1
                rows += block.count("\n")
                if max_windows is not None and written >= max_windows:
                    break
        interval = poll if poll is not None else max(0.2, min(1.0, (report or {}).get("window_seconds", 4) / 4))
        deadline = time.monotonic() + interval
        while not stop and time.monotonic() < deadline:
            sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    why = f"signal {stop.signum}" if stop else "done"
    log(f"record: stopped ({why}): {written} windows, {rows} rows, {f.rotations} rotations")
    return 0
