"""``ebpf-edge-agent top``: the running agent's view of this node, live, from ``/report``.

A node line (score, RTT p50/p99, retransmit rate, drops with their top reasons, run-queue
latency p95, CPU) and a table with one row per pod, refreshed every window. It only reads
``/report``: it never loads a probe.

Keys (full screen): ``c`` CPU, ``m`` memory, ``r`` RTT p99, ``t`` retransmits, ``n`` name,
``<``/``>`` the previous/next column, ``i`` reverse; ``/`` filter by namespace (type, Enter;
an empty filter shows all), ``q`` quits. When stdout is not a terminal it prints the same
table once per window (``--count N`` windows, default until interrupted).

The screen uses the standard library's curses: no dependency to add to a privileged DaemonSet
image, on every Linux terminal, and a table of text needs nothing more.

Columns: every numeric field of the report's pod entries. Those this module knows get a short
title and a unit; a field it does not know (a probe added later) is shown under its own name,
so new per-pod figures appear without a change here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from agent.tools import client


@dataclass(frozen=True)
class Column:
    key: str  # the pod entry's field (or a derived one)
    title: str
    width: int
    fmt: Callable[[Any], str]


def _num(nd: int) -> Callable[[Any], str]:
    return lambda v: f"{v:.{nd}f}"


def _pct(v: Any) -> str:
    return f"{v * 100:.1f}%"


def _bytes(v: Any) -> str:
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(v) >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.0f}"


def _generic(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


# the pod fields known here, in display order (derived: rx_per_s, tx_per_s)
KNOWN = (
    Column("cpu_used", "CPU", 6, _num(2)),
    Column("cpu_limit", "LIMIT", 6, _num(2)),
    Column("cpu_throttled_ratio", "THROT", 6, _pct),
    Column("cpu_pressure", "CPUPSI", 6, _pct),
    Column("memory_used", "MEM", 7, _bytes),
    Column("memory_limit", "MEMLIM", 7, _bytes),
    Column("memory_pressure", "MEMPSI", 6, _pct),
    Column("rtt_p50_ms", "RTT50ms", 8, _num(2)),
    Column("rtt_p99_ms", "RTT99ms", 8, _num(2)),
    Column("rtt_samples", "RTTN", 6, str),
    Column("slo_violation_rate", "SLOVIO", 6, _pct),
    Column("retrans_events", "RETR", 5, str),
    Column("rx_per_s", "RX/s", 7, _bytes),
    Column("tx_per_s", "TX/s", 7, _bytes),
    Column("rtt_slo_ms", "SLOms", 6, _num(0)),
)
KNOWN_KEYS = {c.key for c in KNOWN}
# fields that are not figures, or are shown through a derived column
NOT_COLUMNS = {"uid", "namespace", "pod", "tenant", "host_network", "qos", "net_rx_bytes",
               "net_tx_bytes", "net_seconds", "addresses"}
SORT_KEYS = {"c": "cpu_used", "m": "memory_used", "r": "rtt_p99_ms", "t": "retrans_events",
             "n": "name"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def pod_values(p: Mapping[str, Any]) -> dict[str, Any]:
    """A pod entry's numeric figures, with bytes per second derived from the window's bytes and
    the time they cover (absent when the report does not say how long that was)."""
    out = {k: v for k, v in p.items() if k not in NOT_COLUMNS and _is_number(v)}
    secs = p.get("net_seconds")
    if _is_number(secs) and secs > 0:
        for src, dst in (("net_rx_bytes", "rx_per_s"), ("net_tx_bytes", "tx_per_s")):
            if _is_number(p.get(src)):
                out[dst] = p[src] / secs
    return out


def columns_for(pods: Sequence[Mapping[str, Any]]) -> list[Column]:
    """Known columns that any pod has a value for, then unknown numeric fields by name."""
    present: set[str] = set()
    unknown: list[str] = []
    for p in pods:
        for k, v in p.items():
            if k in NOT_COLUMNS:
                continue
            if k in KNOWN_KEYS:
                if v is not None:
                    present.add(k)
            elif _is_number(v) or v is None:
                if k not in unknown and (v is not None or k in present):
                    unknown.append(k)
                if v is not None:
                    present.add(k)
        secs = p.get("net_seconds")
        if _is_number(secs) and secs > 0:
            present.update(d for s, d in (("net_rx_bytes", "rx_per_s"), ("net_tx_bytes", "tx_per_s"))
                           if _is_number(p.get(s)))
    cols = [c for c in KNOWN if c.key in present]
    cols += [Column(k, k, max(6, min(len(k), 14)), _generic) for k in sorted(set(unknown))
             if k in present]
    return cols


@dataclass(frozen=True)
class View:
    sort: str = "cpu_used"  # a column key, or "name"
    reverse: bool = True  # largest first (names: z..a)
    namespace: str = ""  # "" = every namespace; else a substring of the namespace


def _fmt(col: Column, v: Any) -> str:
    if v is None:
        return "-"
    try:
        return col.fmt(v)
    except (TypeError, ValueError):
        return "?"


def node_line(r: Mapping[str, Any]) -> str:
    def ms(k: str) -> str:
        v = r.get(k)
        return "-" if v is None else f"{v:.2f}ms"

    score = r.get("node_score")
    rr = r.get("retrans_rate")
    drop = r.get("drop_rate")
    reasons = r.get("drop_reason_rates") or {}
    top = sorted(((v, k) for k, v in reasons.items() if _is_number(v) and v > 0), reverse=True)[:3]
    drops = "-" if drop is None else f"{drop:.1f}/s" + (
        " (" + ", ".join(f"{k} {v:.1f}" for v, k in top) + ")" if top else "")
    cpu = r.get("cpu_utilization")
    return (f"score {'-' if score is None else f'{score:.1f}'}  "
            f"RTT p50 {ms('rtt_p50_ms')} p99 {ms('rtt_p99_ms')}  "
            f"retrans {'-' if rr is None else f'{rr * 100:.2f}%'}  drops {drops}  "
            f"runqlat p95 {ms('runqlat_p95_ms')}  CPU {'-' if cpu is None else f'{cpu * 100:.0f}%'}")


def header_line(r: Mapping[str, Any], url: str, age: float | None) -> str:
    probes = r.get("probes") or {}
    down = [f"{n}:{p.get('state')}" for n, p in sorted(probes.items()) if p.get("state") != "up"]
    return (f"{r.get('node_name', '?')}  seq {r.get('sequence', '?')}  window "
            f"{r.get('window_seconds', '?')}s  {r.get('timestamp', '')}"
            + (f"  (fetched {age:.0f}s ago)" if age is not None and age >= 1 else "")
            + f"  {len(r.get('pods') or [])} pods  {url}"
            + ("  probes not up: " + " ".join(down) if down else ""))


def sort_key_of(view: View, cols: Sequence[Column]) -> str:
    keys = ["name"] + [c.key for c in cols]
    return view.sort if view.sort in keys else "cpu_used" if "cpu_used" in keys else "name"


def table(r: Mapping[str, Any], view: View) -> tuple[list[str], list[Column]]:
    """Pure: the table's lines (a header, then one per pod) for a report and a view."""
    pods = [p for p in r.get("pods") or [] if view.namespace in str(p.get("namespace", ""))]
    cols = columns_for(r.get("pods") or [])
    key = sort_key_of(view, cols)
    rows = [(f"{p.get('namespace', '')}/{p.get('pod', '')}", pod_values(p)) for p in pods]
    if key == "name":
        rows.sort(key=lambda x: x[0], reverse=view.reverse)
    else:
        have = [x for x in rows if x[1].get(key) is not None]
        none = sorted((x for x in rows if x[1].get(key) is None), key=lambda x: x[0])
        have.sort(key=lambda x: (x[1][key], x[0]), reverse=view.reverse)
        rows = have + none  # pods without the figure last, whatever the order
    name_w = max([len("NAMESPACE/POD")] + [len(n) for n, _ in rows[:500]])
    name_w = min(name_w, 48)

    def title(c: Column) -> str:
        mark = ("v" if view.reverse else "^") if c.key == key else ""
        return (c.title + mark)[:max(c.width, len(c.title) + 1)]

    head = f"{'NAMESPACE/POD' + (('v' if view.reverse else '^') if key == 'name' else ''):<{name_w}}"
    head += "".join(f" {title(c):>{max(c.width, len(c.title) + 1)}}" for c in cols)
    lines = [head]
    for name, vals in rows:
        line = f"{name[:name_w]:<{name_w}}"
        line += "".join(f" {_fmt(c, vals.get(c.key)):>{max(c.width, len(c.title) + 1)}}" for c in cols)
        lines.append(line)
    return lines, cols


def screen_lines(r: Mapping[str, Any] | None, view: View, url: str, age: float | None,
                 error: str | None) -> list[str]:
    """Pure: everything the screen shows, top to bottom."""
    filt = f"  filter: namespace ~ {view.namespace!r}" if view.namespace else ""
    keys = "q quit  c/m/r/t/n sort  </> column  i reverse  / namespace" + filt
    if r is None:
        return [f"ebpf-edge-agent top  {url}", error or "waiting for the first report ...", "", keys]
    lines = [header_line(r, url, age), node_line(r)]
    if error:
        lines.append(f"! {error} (showing the last report)")
    lines.append(keys)
    tl, _ = table(r, view)
    return lines + tl


def plain_lines(r: Mapping[str, Any], view: View, url: str) -> list[str]:
    """Pure: one window's block when stdout is not a terminal (no key help)."""
    filt = [f"filter: namespace ~ {view.namespace!r}"] if view.namespace else []
    return [header_line(r, url, None), node_line(r)] + filt + table(r, view)[0]


def apply_key(view: View, key: str, cols: Sequence[Column]) -> View | None:
    """Pure: the view after a key press; None means quit."""
    if key in ("q", "Q"):
        return None
    if key in SORT_KEYS:
        new = SORT_KEYS[key]
        if new == view.sort:
            return replace(view, reverse=not view.reverse)
        return replace(view, sort=new, reverse=new != "name")
    if key == "i":
        return replace(view, reverse=not view.reverse)
    if key in ("<", ">"):
        keys = ["name"] + [c.key for c in cols]
        cur = sort_key_of(view, cols)
        i = keys.index(cur) if cur in keys else 0
        i = (i + (1 if key == ">" else -1)) % len(keys)
        return replace(view, sort=keys[i], reverse=keys[i] != "name")
    return view


class Source:
    """Fetches /report at most once per window (``interval`` or the report's window_seconds)."""

    def __init__(self, url: str, interval: float | None, timeout: float,
                 fetch: Callable[[str, float], dict | None] = client.fetch_report,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.fetch = fetch
        self.clock = clock
        self.report: dict | None = None
        self.error: str | None = None
        self.fetched_at: float | None = None
        self.next_at = clock()

    def period(self) -> float:
        if self.interval is not None:
            return self.interval
        w = (self.report or {}).get("window_seconds")
        return float(w) if _is_number(w) and w > 0 else 2.0

    def poll(self) -> bool:
        """Fetch when due; True when there is something new to show."""
        now = self.clock()
        if now < self.next_at:
            return False
        try:
            r = self.fetch(self.url, self.timeout)
            self.error = None if r is not None else "the agent has no report yet"
            if r is not None:
                self.report = r
                self.fetched_at = now
        except client.AgentUnreachable as e:
            self.error = str(e)
        # retry sooner while there is nothing to show
        self.next_at = now + (self.period() if self.report is not None else min(1.0, self.period()))
        return True

    def age(self) -> float | None:
        return None if self.fetched_at is None else self.clock() - self.fetched_at


def run_plain(src: Source, view: View, count: int | None, out=print,
              sleep: Callable[[float], None] = time.sleep) -> int:
    shown = 0
    last_seq = None
    try:
        while count is None or shown < count:
            src.poll()
            r = src.report
            key = None if r is None else (r.get("agent_instance"), r.get("sequence"))
            if r is None:
                print(f"top: {src.error}", file=sys.stderr, flush=True)
            elif key != last_seq:
                last_seq = key
                out("\n".join(plain_lines(r, view, src.url)) + "\n")
                shown += 1
                if count is not None and shown >= count:
                    break
            sleep(max(0.05, src.next_at - src.clock()))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        try:
            sys.stdout = None  # no flush of a closed pipe at exit
        except Exception:  # noqa: BLE001
            pass
    return 0


def _fit(curses, scr) -> tuple[int, int]:  # pragma: no cover - driven in tmux by tests
    """The screen's size, following the terminal's real one: a resize that arrived without a
    KEY_RESIZE (found in the tmux test: a pane made 80 columns wide and widened at once stayed
    80 columns to curses) is applied here."""
    import os

    try:
        cols, rows = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return scr.getmaxyx()
    if (rows, cols) != scr.getmaxyx():
        curses.resizeterm(rows, cols)
    return scr.getmaxyx()


def run_curses(src: Source, view: View) -> int:  # pragma: no cover - driven in tmux by tests
    import curses

    def main(scr) -> int:
        nonlocal view
        curses.curs_set(0)
        scr.timeout(100)
        editing: str | None = None
        dirty = True
        while True:
            repaint = False
            if src.poll():
                # a full repaint once a window: whatever else wrote to the terminal (a stray
                # log line, a resize curses missed) is gone by the next window
                dirty = repaint = True
            if dirty:
                size = scr.getmaxyx()
                h, w = _fit(curses, scr)
                repaint = repaint or (h, w) != size
                lines = screen_lines(src.report, view, src.url, src.age(), src.error)
                if editing is not None:
                    lines.insert(min(3, len(lines)), f"namespace filter: {editing}_")
                if repaint:
                    scr.clear()
                else:
                    scr.erase()
                for y, line in enumerate(lines[:h]):
                    try:
                        scr.addnstr(y, 0, line, w - 1, curses.A_REVERSE if y == 0 else 0)
                    except curses.error:
                        pass
                scr.refresh()
                dirty = False
            ch = scr.getch()
            if ch == -1:
                continue
            dirty = True
            if ch == curses.KEY_RESIZE:
                continue
            if editing is not None:
                if ch in (10, 13, curses.KEY_ENTER):
                    view = replace(view, namespace=editing.strip())
                    editing = None
                elif ch == 27:
                    editing = None
                elif ch in (curses.KEY_BACKSPACE, 127, 8):
                    editing = editing[:-1]
                elif 32 <= ch < 127:
                    editing += chr(ch)
                continue
            key = chr(ch) if 0 <= ch < 256 else ""
            if key == "/":
                editing = view.namespace
                continue
            cols = columns_for((src.report or {}).get("pods") or [])
            nv = apply_key(view, key, cols)
            if nv is None:
                return 0
            view = nv

    try:
        return curses.wrapper(main)
    except KeyboardInterrupt:
        return 0


def run(url: str, *, interval: float | None, sort: str, namespace: str, count: int | None,
        plain: bool | None = None, timeout: float = client.DEFAULT_TIMEOUT) -> int:
    sort_field = SORT_KEYS.get(sort, sort)
    view = View(sort=sort_field, reverse=sort_field != "name", namespace=namespace)
    src = Source(url, interval, timeout)
    if plain is None:
        plain = not (sys.stdout.isatty() and sys.stdin.isatty())
    if plain:
        return run_plain(src, view, count)
    return run_curses(src, view)
