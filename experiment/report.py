"""The summary as markdown (from summary.json's document)."""

from __future__ import annotations


def _f(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown(doc: dict) -> str:
    runs = doc["runs"]
    first = runs[0]
    p = doc["parameters"]
    out = ["# Experiment summary (seed 001)", "",
           f"{len(runs)} run(s); run 1 is the one the CSV and plot come from. Windows of "
           f"{p['sample_interval']:g} s (the agent's sample interval); client {p['rate']:g} req/s, "
           f"{p['response_bytes']} B answers, timeout {p['timeout']:g} s. Elapsed "
           f"{doc['elapsed_seconds']:.0f} s.", "", "Scenarios:", ""]
    out += [f"- **{k}**: {v}" for k, v in doc["scenarios"].items()]
    out += ["", "## Score against the client's p99 (Spearman's ρ, every window)", "",
            "| run | windows | ρ(node score, client p99) | target ≤ −0.6 |", "|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r['run']} | {r['windows']} | {_f(r['rho_score_p99'], '{:.3f}')} | "
                   f"{'met' if r['targets']['rho_le_-0.6'] else 'not met'} |")
    out += ["", "Per signal, run 1 (a *badness* signal tracks latency with ρ > 0; the score with "
            "ρ < 0):", "", "| signal | ρ with client p99 | windows |", "|---|---|---|"]
    for k, v in first["rho_per_signal"].items():
        out.append(f"| {k} | {_f(v['rho'], '{:.3f}')} | {v['n']} |")
    out += ["", "## Per scenario, run 1 (windows ≥ 75 % inside their phase)", "",
            "| phase | windows | mean score | client p50 ms | client p99 ms | errors | ping ms | "
            "agent rtt p99 ms | retrans | drops/s (w) | runqlat p95 ms | cpu |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, v in first["phases"].items():
        out.append(
            f"| {k} | {v['windows']} | {_f(v['mean_score'])} | {_f(v['mean_client_p50_ms'])} | "
            f"{_f(v['mean_client_p99_ms'])} | {_f(v['client_error_rate'], '{:.2%}')} | "
            f"{_f(v['mean_ping_ms'])} | {_f(v['mean_rtt_p99_ms'])} | "
            f"{_f(v['mean_retrans_rate'], '{:.4f}')} | {_f(v['mean_drop_rate_weighted'])} | "
            f"{_f(v['mean_runqlat_p95_ms'])} | {_f(v['mean_cpu_utilization'])} |")
    below = first["targets"]["scenario_below_baseline"]
    out += ["", "Mean score below the baseline windows': " + ", ".join(
        f"{k} {'yes' if v else '**no**'}" for k, v in below.items()) + "."]
    out += ["", "## Placement replay", "",
            "**A replay of measured windows, not a live cluster**: simulated nodes, each replaying "
            "the recorded reports of one scenario; pods placed by LeastAllocated alone (baseline) "
            "or LeastAllocated + scorer × weight × 10 (extender); each pod's requests drawn from "
            "the client's measured requests in its node's scenario.", ""]
    for r, rep in ((r, rep) for r in runs for rep in r.get("replays", [])):
        out.append(f"Run {r['run']}: scorer **{rep.get('scorer')}**, weight {rep.get('weight')}, "
                   f"{rep.get('trials')} trials per mix.")
        out += ["", "| mix | nodes | pods | p99 ms baseline | p99 ms extender | change | "
                "errors baseline | errors extender |", "|---|---|---|---|---|---|---|---|"]
        for m in rep.get("mixes", []):
            b, e = m["baseline"], m["extender"]
            nodes = ", ".join(f"{k}×{v}" for k, v in m["nodes"].items())
            out.append(f"| {m['mix']} | {nodes} | {m['pods']} | {_f(b['p99_ms'])} | "
                       f"{_f(e['p99_ms'])} | {_f(e['p99_change'], '{:+.1%}')} | "
                       f"{_f(b['error_rate'], '{:.2%}')} | {_f(e['error_rate'], '{:.2%}')} |")
        out.append("")
    return "\n".join(out) + "\n"
