"""The run's PNG: time series with scenario bands, and score against client p99.
Needs matplotlib (the optional extra ``experiment``: ``pip install -e .[experiment]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"S1": "tab:blue", "S2": "tab:orange", "S3": "tab:green", "S4": "tab:red", "S5": "tab:purple"}


def plot(rows: Sequence[Mapping], phases: Sequence[Mapping], path: Path) -> None:
    t0 = min(p["start"] for p in phases)
    fig, axes = plt.subplots(4, 1, figsize=(13, 13.5), gridspec_kw={"height_ratios": [2, 1.3, 0.8, 2]})
    ax, ax_sig, ax_load, ax_sc = axes
    t = [(r["t_end"] - t0) for r in rows]
    for a in (ax, ax_sig, ax_load):
        for p in phases:
            if p["name"] == "baseline":
                continue
            a.axvspan(p["start"] - t0, p["end"] - t0, color=COLORS.get(p["name"], "grey"), alpha=0.12)
            for on0, on1 in p.get("fault_on", []):
                a.axvspan(on0 - t0, on1 - t0, color=COLORS.get(p["name"], "grey"), alpha=0.15)
            a.text((p["start"] + p["end"]) / 2 - t0, 1.0, p["name"], transform=a.get_xaxis_transform(),
                   ha="center", va="bottom", fontsize=9)
    ax.plot(t, [r["client_p99_ms"] for r in rows], "k.-", label="client p99 (ms)")
    ax.plot(t, [r["client_p50_ms"] for r in rows], ".-", color="grey", label="client p50 (ms)")
    ax.set_yscale("log")
    ax.set_ylabel("client latency (ms, log)")
    ax2 = ax.twinx()
    ax2.plot(t, [r["node_score"] for r in rows], "-", color="tab:cyan", lw=2, label="node score (agent, default)")
    for col, style in (("score_tuned-bounds", ":"), ("score_tuned", "--")):
        if any(r.get(col) is not None for r in rows):
            ax2.plot(t, [r.get(col) for r in rows], style, color="tab:cyan", lw=1.2,
                     label=f"{col[6:]} profile (offline)")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("node score (0..100)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title("Client latency per agent window and the agent's node score (bands: scenarios)")
    for k in ("rtt_p99", "retrans_rate", "drop_rate", "runqlat_p95", "cpu_util"):
        ax_sig.plot(t, [r.get(f"norm_{k}") for r in rows], ".-", label=k, ms=3)
    ax_sig.set_ylim(-0.05, 1.05)
    ax_sig.set_ylabel("normalised signal (0..1)")
    ax_sig.legend(loc="upper left", fontsize=8, ncol=5)
    ax_load.plot(t, [r.get("load1") for r in rows], "-", color="tab:brown", label="load average (1 min)")
    ax_load.plot(t, [r.get("runnable_max") for r in rows], ".", color="tab:gray", ms=3,
                 label="runnable tasks (max in window)")
    ax_load.set_ylabel("machine load")
    ax_load.set_xlabel("seconds since the first phase")
    ax_load.legend(loc="upper left", fontsize=8, ncol=2)
    for name in dict.fromkeys(r["phase"] for r in rows):
        sel = [r for r in rows if r["phase"] == name]
        ax_sc.scatter([r["node_score"] for r in sel], [r["client_p99_ms"] for r in sel],
                      label=name, s=18, color=COLORS.get(name, "black"), alpha=0.8)
    ax_sc.set_yscale("log")
    ax_sc.set_xlabel("node score")
    ax_sc.set_ylabel("client p99 (ms, log)")
    ax_sc.set_title("Score against client p99, one point per window")
    ax_sc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
