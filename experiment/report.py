"""The summary as markdown (from summary.json's document)."""

from __future__ import annotations


def _f(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _yes(v: bool) -> str:
    return "met" if v else "**not met**"


def _replay(run: dict, profile: str, weight: float) -> dict | None:
    for rep in run.get("replays", []):
        if rep.get("profile") == profile and rep.get("weight") == weight:
            return rep
    return None


def _mix(rep: dict | None, name: str) -> dict | None:
    for m in (rep or {}).get("mixes", []):
        if m["mix"] == name:
            return m
    return None


def _label(run: dict) -> str:
    return "tuning run" if run["run"] == "tuning" else f"run {run['run']}"


def _targets(runs: list[dict], profiles: list[str], weight: float) -> list[str]:
    out = ["| run | profile | ρ(score, client p99) | ρ ≤ −0.6 | scenarios with mean score below "
           "baseline | replay p99 change, all mix | ≥ 10 % lower in every mix |",
           "|---|---|---|---|---|---|---|"]
    for r in runs:
        for p in profiles:
            s = r["profiles"].get(p)
            if s is None:
                continue
            below = s["targets"]["scenario_below_baseline"]
            rep = _replay(r, p, weight)
            mixes = (rep or {}).get("mixes", [])
            allm = _mix(rep, "all")
            changes = [m["extender"]["p99_change"] for m in mixes if m["extender"]["p99_change"] is not None]
            every = bool(changes) and all(c <= -0.10 for c in changes)
            out.append(
                f"| {_label(r)} | {p} | {_f(s['rho_score_p99'], '{:.3f}')} | {_yes(s['targets']['rho_le_-0.6'])} | "
                f"{sum(below.values())} of {len(below)} "
                f"({', '.join(k for k, v in below.items() if not v) or 'all below'}"
                f"{' not below' if not all(below.values()) else ''}) | "
                f"{_f(allm['extender']['p99_change'] if allm else None, '{:+.1%}')} | {_yes(every)} |")
    return out


def _replay_table(rep: dict) -> list[str]:
    out = ["| mix | nodes | pods | p99 ms baseline | p99 ms extender | change | errors baseline | "
           "errors extender | pods on healthy nodes (baseline → extender) | oracle p99 change |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for m in rep.get("mixes", []):
        b, e = m["baseline"], m["extender"]
        o = m.get("oracle") or {}
        nodes = ", ".join(f"{k}×{v}" for k, v in m["nodes"].items())
        hb = b["mean_pods_per_scenario"].get("baseline", 0)
        he = e["mean_pods_per_scenario"].get("baseline", 0)
        out.append(f"| {m['mix']} | {nodes} | {m['pods']} | {_f(b['p99_ms'])} | {_f(e['p99_ms'])} | "
                   f"{_f(e['p99_change'], '{:+.1%}')} | {_f(b['error_rate'], '{:.2%}')} | "
                   f"{_f(e['error_rate'], '{:.2%}')} | {hb:g} → {he:g} | "
                   f"{_f(o.get('p99_change'), '{:+.1%}')} |")
    pushes = {}
    for m in rep.get("mixes", []):
        for k, v in m.get("pushes", {}).items():
            if isinstance(v, int):
                pushes[k] = pushes.get(k, 0) + v
    if pushes:
        out.append("")
        out.append("Replayed pushes answered by the extender: " +
                   ", ".join(f"{k} {v}" for k, v in sorted(pushes.items())) + ".")
    return out


def markdown(doc: dict) -> str:
    runs = doc["runs"]
    first = runs[0]
    p = doc["parameters"]
    profiles = list(doc.get("profiles", {"default": {}}))
    weights = p.get("weights", [])
    mw = doc.get("manifest_weight")
    tuning = doc.get("tuning_run")
    all_runs = ([tuning] if tuning else []) + runs
    out = ["# Experiment summary (seed 001)", "",
           f"{len(runs)} fresh run(s); run 1 is the one the CSV, the plot and the raw records "
           f"(`run1-*`) come from. Windows of {p['sample_interval']:g} s (the agent's sample "
           f"interval); client {p['rate']:g} req/s, {p['response_bytes']} B answers, timeout "
           f"{p['timeout']:g} s; scenarios {p['scenario_seconds']:g} s, baselines "
           f"{p['baseline_seconds']:g} s. Elapsed {doc['elapsed_seconds']:.0f} s in all; per run: " +
           ", ".join(f"run {r['run']} {_f(r.get('elapsed_seconds'), '{:.0f}')} s" for r in runs) + ".",
           "", "**Measured** (real kernel, real traffic, the real agent): every window's client latency, "
           "the agent's report, the ping witness, the machine's load. **Replayed** (not a live cluster): "
           "the placement comparison, which feeds the recorded reports to the real in-process extender "
           "as a simulated cluster. Score profiles other than `default` are the agent's score "
           "recomputed offline from each report's own raw signals (config/score-profiles/).", "",
           "Scenarios:", ""]
    out += [f"- **{k}**: {v}" for k, v in doc["scenarios"].items()]
    if doc.get("produced_by"):
        out += ["", f"Produced by: {doc['produced_by']}."]
    if tuning:
        out += ["", f"The **tuning run** ({tuning.get('source', '')}) is the run the tuned profiles were "
                "tuned on (recorded before they existed); the fresh runs played no part in the tuning."]
    out += ["", "Profiles:", ""]
    for name, prof in doc.get("profiles", {}).items():
        w = ", ".join(f"{k} {v:g}" for k, v in prof["weights"].items())
        b = ", ".join(f"{k} [{lo:g}, {hi:g}]" for k, (lo, hi) in prof["bounds"].items())
        out.append(f"- **{name}**: weights {w}; bounds {b}")

    out += ["", f"## Targets (extender weight {mw:g}, manifests/scheduler's)", ""]
    out += _targets(all_runs, profiles, mw)

    out += ["", "## Score against the client's p99 (Spearman's ρ, every window)", "",
            "Per signal (a *badness* signal tracks latency with ρ > 0; the score with ρ < 0):", "",
            "| signal | " + " | ".join(_label(r) for r in all_runs) + " |",
            "|---|" + "---|" * len(all_runs)]
    for k in first["rho_per_signal"]:
        out.append(f"| {k} | " + " | ".join(_f(r["rho_per_signal"].get(k, {}).get("rho"), "{:.3f}")
                                            for r in all_runs) + " |")
    out.append(f"| **node score (default)** | " +
               " | ".join(_f(r["rho_score_p99"], "{:.3f}") for r in all_runs) + " |")
    out.append("")
    out.append("Offline re-scoring under `default` against the agent's own score, largest "
               "difference: " + ", ".join(f"{_label(r)} {_f(r.get('rescore_max_abs_diff_default'), '{:g}')}"
                                          for r in all_runs) + " points.")

    for r in all_runs:
        out += ["", f"## Per scenario, {_label(r)} (windows ≥ 75 % inside their phase)", "",
                "| phase | windows | " + " | ".join(f"mean score {pn}" for pn in profiles) +
                " | client p50 ms | client p99 ms | errors | ping ms | agent rtt p99 ms | retrans | "
                "drops/s (w) | runqlat p95 ms | cpu | load1 | runnable |",
                "|---|---|" + "---|" * len(profiles) + "---|---|---|---|---|---|---|---|---|---|---|"]
        for k, v in r["phases"].items():
            scores = " | ".join(_f(r["profiles"][pn]["mean_score"].get(k)) for pn in profiles if pn in r["profiles"])
            out.append(
                f"| {k} | {v['windows']} | {scores} | {_f(v['mean_client_p50_ms'])} | "
                f"{_f(v['mean_client_p99_ms'])} | {_f(v['client_error_rate'], '{:.2%}')} | "
                f"{_f(v['mean_ping_ms'])} | {_f(v['mean_rtt_p99_ms'])} | "
                f"{_f(v['mean_retrans_rate'], '{:.4f}')} | {_f(v['mean_drop_rate_weighted'])} | "
                f"{_f(v['mean_runqlat_p95_ms'])} | {_f(v['mean_cpu_utilization'])} | "
                f"{_f(v.get('mean_load1'))} | {_f(v.get('mean_runnable'))} |")
        if r["run"] == "tuning" and all(v.get("mean_load1") is None for v in r["phases"].values()):
            out += ["", "(The tuning run was recorded before the machine's load was sampled.)"]

    out += ["", "## Placement replay", "",
            "**A replay of measured windows, not a live cluster**: simulated nodes, each replaying "
            "the recorded reports of one scenario under its own name, instance and sequence, pushed "
            "to the real in-process extender (`extender.Extender`, policy `node-score`) with the "
            "replay's virtual clock (TTL and sequence rules apply); pods placed by LeastAllocated "
            "alone (baseline) or LeastAllocated + the extender's prioritize score × weight × 10 "
            "(extender); each pod's requests drawn from the client's measured requests in its node's "
            "scenario.", ""]
    out += ["p99 change (extender vs baseline placement) per mix, every run and profile. The "
            "*oracle bound* ranks nodes by their scenario's measured client p99 (perfect knowledge): "
            "no score can do better in that mix, since once the healthy nodes are full the rest of "
            "the pods must go to degraded ones.", "",
            "| run | profile | weight | " + " | ".join(m["mix"] for m in
                                                       (_replay(first, "default", mw) or {}).get("mixes", [])) + " |",
            "|---|---|---|" + "---|" * len((_replay(first, "default", mw) or {}).get("mixes", []))]
    for r in all_runs:
        rep = _replay(r, "default", mw)
        if rep is not None:
            out.append(f"| {_label(r)} | *oracle bound* | – | " + " | ".join(
                _f((m.get("oracle") or {}).get("p99_change"), "{:+.1%}") for m in rep.get("mixes", [])) + " |")
        for pn in profiles:
            for w in weights:
                rep = _replay(r, pn, w)
                if rep is None:
                    continue
                out.append(f"| {_label(r)} | {pn} | {w:g} | " + " | ".join(
                    _f(m["extender"]["p99_change"], "{:+.1%}") for m in rep.get("mixes", [])) + " |")
    for pn in profiles:
        for w in weights:
            rep = _replay(first, pn, w)
            if rep is None:
                continue
            out += ["", f"### Run 1, profile {pn}, weight {w:g}{' (manifests/scheduler)' if w == mw else ''}", "",
                    f"Scorer **{rep.get('scorer')}**, {rep.get('trials')} trials per mix.", ""]
            out += _replay_table(rep)
    return "\n".join(out) + "\n"
