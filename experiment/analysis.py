"""Pure analysis of a run: client requests and pushed reports joined per agent window,
Spearman's ρ with ties, per-scenario summaries. Values in, values out; no IO."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping, Sequence

# the report's figures carried into each window's row (name in the row, key in the report)
SIGNALS = {
    "rtt_p50_ms": "rtt_p50_ms",
    "rtt_p99_ms": "rtt_p99_ms",
    "retrans_rate": "retrans_rate",
    "drop_rate": "drop_rate",
    "drop_rate_weighted": "drop_rate_weighted",
    "runqlat_p95_ms": "runqlat_p95_ms",
    "cpu_utilization": "cpu_utilization",
    "slo_violation_rate": "slo_violation_rate",
}
# the score's own inputs (normalised 0..1, what the weights multiply)
SCORE_INPUTS = ("rtt_p99", "retrans_rate", "drop_rate", "runqlat_p95", "cpu_util")


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        r = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = r
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n != len(y):
        raise ValueError(f"pearson: {n} x values but {len(y)} y values")
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None  # a constant series has no correlation
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> tuple[float | None, int]:
    """Spearman's ρ (Pearson's r of the tie-averaged ranks) over the pairs where both values
    are present; returns (ρ, pairs used). ρ is None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None
             and not (isinstance(a, float) and math.isnan(a)) and not (isinstance(b, float) and math.isnan(b))]
    if len(pairs) < 3:
        return None, len(pairs)
    xs, ys = zip(*pairs)
    return pearson(ranks(xs), ranks(ys)), len(pairs)


def quantile(sorted_vals: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default, R type 7)."""
    n = len(sorted_vals)
    if n == 0:
        return None
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} outside 0..1")
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


@dataclass(frozen=True)
class Request:
    due: float  # epoch seconds the request was due
    latency_ms: float
    ok: bool


def parse_requests(lines: Iterable[str]) -> list[Request]:
    out = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            due, lat, ok = line.split(",")
            out.append(Request(float(due), float(lat), ok == "1"))
        except ValueError:
            raise ValueError(f"bad request line {line!r}") from None
    out.sort(key=lambda r: r.due)
    return out


def _due(r: Request) -> float:
    return r.due


def requests_between(reqs: Sequence[Request], start: float, end: float) -> Sequence[Request]:
    """The requests due in [start, end) of a list sorted by due time (parse_requests sorts)."""
    return reqs[bisect.bisect_left(reqs, start, key=_due):bisect.bisect_left(reqs, end, key=_due)]


def client_stats(reqs: Sequence[Request], seconds: float) -> dict:
    """p50/p99 over every request due in the window (an error counts at its time to failure,
    which is at least the client's timeout for a timeout), errors and completed requests/s."""
    lat = sorted(r.latency_ms for r in reqs)
    errors = sum(not r.ok for r in reqs)
    return {"client_requests": len(reqs), "client_p50_ms": _r(quantile(lat, 0.5)),
            "client_p99_ms": _r(quantile(lat, 0.99)), "client_errors": errors,
            "client_error_rate": _r(errors / len(reqs)) if reqs else None,
            "client_rps": _r((len(reqs) - errors) / seconds) if seconds > 0 else None}


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


@dataclass(frozen=True)
class Phase:
    name: str  # "baseline" or a scenario name
    start: float
    end: float
    fault_on: tuple[tuple[float, float], ...] = ()  # S5: the intervals its fault was on


def label(start: float, end: float, phases: Sequence[Phase]) -> tuple[str | None, float, float]:
    """(phase with the largest overlap, share of the window in it, share of the window with
    an intermittent fault on)."""
    best, best_ov, on = None, 0.0, 0.0
    span = max(end - start, 1e-9)
    for p in phases:
        ov = max(0.0, min(end, p.end) - max(start, p.start))
        if ov > best_ov:
            best, best_ov = p.name, ov
        for a, b in p.fault_on:
            on += max(0.0, min(end, b) - max(start, a))
    return best, best_ov / span, on / span


def parse_time(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def join_windows(reports: Sequence[Mapping], requests: Sequence[Request], phases: Sequence[Phase],
                 pings: Sequence[tuple[float, float]] = (), run: int = 1) -> list[dict]:
    """One row per report: its window [timestamp − window_seconds, timestamp), the client's
    figures over the same window, the phase it falls in, and the report's score and signals."""
    rows = []
    ping_t = [t for t, _ in pings]
    for rep in reports:
        end = parse_time(rep["timestamp"])
        start = end - float(rep["window_seconds"])
        phase, purity, on = label(start, end, phases)
        if phase is None:
            continue
        row = {"run": run, "sequence": rep["sequence"], "t_start": round(start, 3),
               "t_end": round(end, 3), "phase": phase, "purity": round(purity, 3),
               "fault_on_share": round(on, 3)}
        row.update(client_stats(requests_between(requests, start, end), end - start))
        ps = sorted(v for _, v in pings[bisect.bisect_left(ping_t, start):bisect.bisect_left(ping_t, end)])
        row["ping_ms_median"] = _r(quantile(ps, 0.5), 3)
        row["node_score"] = rep.get("node_score")
        for col, key in SIGNALS.items():
            row[col] = rep.get(key)
        inputs = rep.get("score_inputs") or {}
        for k in SCORE_INPUTS:
            row[f"norm_{k}"] = inputs.get(k)
        rows.append(row)
    return rows


def parse_loadavg(lines: Iterable[str]) -> list[tuple[float, float, int]]:
    """``epoch load1 running/total ...`` lines (the experiment's /proc/loadavg samples) ->
    (time, 1-minute load average, runnable tasks)."""
    out = []
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        try:
            out.append((float(parts[0]), float(parts[1]), int(parts[4].split("/")[0])))
        except (ValueError, IndexError):
            raise ValueError(f"bad loadavg line {line!r}") from None
    return sorted(out)


def attach_load(rows: Sequence[dict], samples: Sequence[tuple[float, float, int]]) -> None:
    """Per window: the mean 1-minute load average and the mean/max runnable tasks sampled in it
    (the whole machine's load, the experiment's own processes included: a reader can see when
    other work shared the machine)."""
    ts = [t for t, _, _ in samples]
    for row in rows:
        sel = samples[bisect.bisect_left(ts, row["t_start"]):bisect.bisect_left(ts, row["t_end"])]
        row["load1"] = _r(_mean(l for _, l, _ in sel), 2)
        row["runnable_mean"] = _r(_mean(r for _, _, r in sel), 2)
        row["runnable_max"] = max((r for _, _, r in sel), default=None)


def _mean(xs: Iterable[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return sum(v) / len(v) if v else None


def score_summary(rows: Sequence[Mapping], column: str, min_purity: float = 0.0) -> dict:
    """For one score column: ρ(score, client p99) over every window, the per-phase mean score
    (windows ≥ ``min_purity`` inside their phase) and the two score targets."""
    rho, n = spearman([r.get(column) for r in rows], [r["client_p99_ms"] for r in rows])
    means = {}
    for name in dict.fromkeys(r["phase"] for r in rows):
        means[name] = _r(_mean(r.get(column) for r in rows if r["phase"] == name and r["purity"] >= min_purity), 2)
    base = means.get("baseline")
    below = {k: v is not None and base is not None and v < base for k, v in means.items() if k != "baseline"}
    return {"rho_score_p99": _r(rho, 3), "rho_pairs": n, "mean_score": means,
            "targets": {"rho_le_-0.6": rho is not None and rho <= -0.6,
                        "every_scenario_mean_score_below_baseline": bool(below) and all(below.values()),
                        "scenario_below_baseline": below}}


def summarize(rows: Sequence[Mapping], min_purity: float = 0.0) -> dict:
    """ρ(score, client p99) overall and per signal, per-phase means, and the issue's targets.

    Per-phase figures use windows at least ``min_purity`` inside their phase; ρ uses every
    window (transitions included: they are measured too)."""
    p99 = [r["client_p99_ms"] for r in rows]
    rho, n = spearman([r["node_score"] for r in rows], p99)
    per_signal = {}
    for col in list(SIGNALS) + [f"norm_{k}" for k in SCORE_INPUTS] + ["ping_ms_median"]:
        s, m = spearman([r.get(col) for r in rows], p99)
        per_signal[col] = {"rho": _r(s, 3), "n": m}
    phases: dict[str, dict] = {}
    for name in dict.fromkeys(r["phase"] for r in rows):
        sel = [r for r in rows if r["phase"] == name and r["purity"] >= min_purity]
        phases[name] = {
            "windows": len(sel),
            "mean_score": _r(_mean(r["node_score"] for r in sel), 2),
            "mean_client_p50_ms": _r(_mean(r["client_p50_ms"] for r in sel), 2),
            "mean_client_p99_ms": _r(_mean(r["client_p99_ms"] for r in sel), 2),
            "client_error_rate": _r(_mean(r["client_error_rate"] for r in sel), 4),
            "mean_ping_ms": _r(_mean(r["ping_ms_median"] for r in sel), 2),
            **{f"mean_{c}": _r(_mean(r.get(c) for r in sel), 4) for c in SIGNALS},
            "mean_load1": _r(_mean(r.get("load1") for r in sel), 2),
            "mean_runnable": _r(_mean(r.get("runnable_mean") for r in sel), 2),
        }
    base = phases.get("baseline", {}).get("mean_score")
    below = {k: (v["mean_score"] is not None and base is not None and v["mean_score"] < base)
             for k, v in phases.items() if k != "baseline"}
    return {
        "windows": len(rows), "rho_score_p99": _r(rho, 3), "rho_pairs": n,
        "rho_per_signal": per_signal, "phases": phases,
        "targets": {"rho_le_-0.6": rho is not None and rho <= -0.6,
                    "every_scenario_mean_score_below_baseline": bool(below) and all(below.values()),
                    "scenario_below_baseline": below},
    }
