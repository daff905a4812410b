"""Score profiles: the agent's node score recomputed offline from a report's own raw signals
under other normalisation bounds / weights, and the grid search that tuned them.

A *profile* is an agent configuration's ``score`` section (weights and bounds). ``default`` is
the agent's built-in one (the seed's weights; read from ``agent.config``, not copied). The
tuned profiles live as agent configuration files in ``config/score-profiles/`` so an operator
can run the agent with one (``ebpf-edge-agent --config config/score-profiles/tuned.yaml run``,
or by merging its ``score:`` section into their own file); this module reads them through the
agent's own ``load_config``, so what the experiment judges is what the agent would compute.

:func:`rescore` recomputes a report's ``node_score`` and ``score_inputs`` with the agent's own
``normalize`` and ``node_score`` from the raw signals the report carries (a signal the agent
reported unavailable stays unavailable). Under ``default`` it reproduces the agent's score
(tests/experiment/test_tuning.py checks that on recorded reports).

:func:`tune` is how the tuned profiles were found: a grid over the bounds (default weights),
then a grid over the weights (each ≥ 0.05, step 0.05) with the chosen bounds, minimising
Spearman's ρ(score, client p99) over the windows of the *tuning* runs only. The judging runs
must be recorded after the profile is fixed (docs/experiment.md says which runs were which).

``python -m experiment.tuning RAW_DIR...`` runs the search on recorded runs (directories with
reports.jsonl, requests.csv, phases.json, ping.txt, plain or .gz) and prints both profiles.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from agent.config import ScoreConfig, load_config
from agent.stats.scoring import node_score, normalize
from experiment.analysis import spearman

# score input -> the report's raw figure it is normalised from (agent/report.py score_inputs)
SOURCES = {"rtt_p99": "rtt_p99_ms", "retrans_rate": "retrans_rate", "drop_rate": "drop_rate_weighted",
           "runqlat_p95": "runqlat_p95_ms", "cpu_util": "cpu_utilization"}
PROFILE_DIR = Path(__file__).resolve().parent.parent / "config" / "score-profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    weights: Mapping[str, float]
    bounds: Mapping[str, tuple[float, float]]


def _from_score(name: str, s: ScoreConfig) -> Profile:
    return Profile(name, dict(s.weights), {k: tuple(v) for k, v in s.bounds.items()})


def default_profile() -> Profile:
    return _from_score("default", ScoreConfig())


def load_profile(name: str) -> Profile:
    """``default`` or a file ``config/score-profiles/<name>.yaml`` read by the agent's loader."""
    if name == "default":
        return default_profile()
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ["default"] + sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ValueError(f"unknown score profile {name!r}: choose from {', '.join(known)}")
    return _from_score(name, load_config(str(path), env={}).score)


def profile_names() -> list[str]:
    """``default``, the bounds-only profile, the weight profile, then any other file."""
    files = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    first = [n for n in ("tuned-bounds", "tuned") if n in files]
    return ["default"] + first + [n for n in files if n not in first]


def inputs_of(report: Mapping, profile: Profile) -> dict[str, float | None]:
    avail = report.get("score_inputs") or {}
    out = {}
    for k, src in SOURCES.items():
        raw = report.get(src)
        # unavailable in the agent's report (None input) stays unavailable
        out[k] = None if avail.get(k) is None or raw is None else normalize(float(raw), *profile.bounds[k])
    return out


def score_of(report: Mapping, profile: Profile) -> float | None:
    return node_score(inputs_of(report, profile), profile.weights)


def rescore(report: Mapping, profile: Profile) -> dict:
    """A copy of ``report`` whose ``node_score``/``score_inputs`` follow ``profile``."""
    doc = dict(report)
    doc["score_inputs"] = inputs_of(report, profile)
    doc["node_score"] = node_score(doc["score_inputs"], profile.weights)
    return doc


# --- the search ---------------------------------------------------------------------------------

BOUND_GRID = {
    "rtt_p99": [(1.0, hi) for hi in (20.0, 50.0, 100.0, 200.0)],
    "retrans_rate": [(0.0, hi) for hi in (0.01, 0.02, 0.05)],
    "drop_rate": [(0.0, hi) for hi in (20.0, 50.0, 100.0, 200.0)],
    "runqlat_p95": [(0.1, hi) for hi in (5.0, 10.0, 20.0)],
    "cpu_util": [(lo, 1.0) for lo in (0.5, 0.7, 0.9)],
}


def rho(pairs: Sequence[tuple[Mapping, float | None]], profile: Profile) -> float | None:
    """ρ(score under ``profile``, client p99) over (report, p99) pairs."""
    return spearman([score_of(r, profile) for r, _ in pairs], [p for _, p in pairs])[0]


def _weight_grid(keys: Sequence[str], step: float = 0.05, minimum: float = 0.05) -> Iterable[dict]:
    units = round(1 / step)
    lo = round(minimum / step)
    n = len(keys)
    for combo in itertools.product(range(lo, units + 1), repeat=n - 1):
        last = units - sum(combo)
        if last < lo:
            continue
        yield {k: round(u * step, 4) for k, u in zip(keys, (*combo, last))}


def tune(pairs: Sequence[tuple[Mapping, float | None]]) -> dict:
    """Bounds first (default weights), then weights with those bounds; lowest ρ wins (ties:
    the earlier candidate, i.e. the grid's order, closest to the defaults first)."""
    base = default_profile()
    keys = list(BOUND_GRID)
    best_b, best_rho = dict(base.bounds), rho(pairs, base)
    default_rho = best_rho
    for combo in itertools.product(*(BOUND_GRID[k] for k in keys)):
        b = dict(zip(keys, combo))
        r = rho(pairs, Profile("c", base.weights, b))
        if r is not None and (best_rho is None or r < best_rho - 1e-9):
            best_b, best_rho = b, r
    bounds_rho = best_rho
    best_w = dict(base.weights)
    wkeys = list(base.weights)
    for w in _weight_grid(wkeys):
        r = rho(pairs, Profile("c", w, best_b))
        if r is not None and r < best_rho - 1e-9:
            best_w, best_rho = w, r
    return {"windows": len(pairs), "default_rho": default_rho,
            "tuned_bounds": {"bounds": best_b, "rho": bounds_rho},
            "tuned": {"bounds": best_b, "weights": best_w, "rho": best_rho}}


def pairs_from_rows(reports: Sequence[Mapping], rows: Sequence[Mapping]) -> list[tuple[Mapping, float | None]]:
    by_seq = {r["sequence"]: r for r in reports}
    return [(by_seq[row["sequence"]], row["client_p99_ms"]) for row in rows if row["sequence"] in by_seq]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from experiment.analysis import join_windows
    from experiment.run import load_raw

    ap = argparse.ArgumentParser(prog="python -m experiment.tuning", description=__doc__.split("\n")[0])
    ap.add_argument("raw", nargs="+", help="recorded run directories (the tuning runs)")
    a = ap.parse_args(argv)
    pairs = []
    for d in a.raw:
        reports, reqs, phases, pings = load_raw(Path(d))
        pairs += pairs_from_rows(reports, join_windows(reports, reqs, phases, pings))
    res = tune(pairs)
    print(f"{res['windows']} windows; rho(default) {res['default_rho']:.3f}")
    print(f"tuned-bounds: rho {res['tuned_bounds']['rho']:.3f} bounds {res['tuned_bounds']['bounds']}")
    print(f"tuned: rho {res['tuned']['rho']:.3f} weights {res['tuned']['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
