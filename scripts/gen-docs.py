#!/usr/bin/env python3
"""docs/metrics.md, generated from the exporters' own declarations and the payload schema.

    .venv/bin/python scripts/gen-docs.py            # write docs/metrics.md
    .venv/bin/python scripts/gen-docs.py --check    # exit 1 when docs/metrics.md is out of date
    make docs                                       # the same as the first

Why a script and not a module of ``agent``: the page documents two programs (the agent and the
extender) and the schema they share, so it belongs to neither package (``agent`` must not import
``extender``), and the image has no use for it. tests/unit/test_docs_reference.py loads it,
regenerates the page and compares it with the committed file (``UPDATE_DOCS=1`` accepts).

How every family is found: a synthetic report in which every probe is up and every figure a
probe declares (``SPEC.series``), every pod reader's value (``POD_READER_SERIES``) and every
optional report field is set, is published into the agent's own registry
(``agent.service.make_registry``) together with the sampler's, the pod source's and the pusher's
families; whatever that registry renders is documented, section by section. Values are never
shown (they are made up): only names, types, labels and help texts, which are the exporter's.

Unit and window are not declared by the exporter; they are derived from the name and the help
text by the rules below, with a small table (``UNITS``, ``WINDOWS``) where the rules cannot
tell. A gauge the rules cannot place stops the generator with a message naming it, so a new
series never gets a guessed entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client.registry import CollectorRegistry  # noqa: E402

from agent.config import Config  # noqa: E402
from agent.export import prometheus as prom  # noqa: E402
from agent.export.extender import Pusher, push_metrics  # noqa: E402
from agent.kube.watch import StandaloneMetadata  # noqa: E402
from agent.model import (Histogram, NodeResources, PodSample, ProbeFigures, ProbeSnapshot,  # noqa: E402
                         ProbeState, ProbeStateKind)
from agent.pods import ClusterPods  # noqa: E402
from agent.probes import registry  # noqa: E402
from agent.report import build_report  # noqa: E402
from agent.sampler import ProbeSet, Sampler  # noqa: E402
from agent.service import ReportBox, make_registry  # noqa: E402

OUT = ROOT / "docs" / "metrics.md"
SCHEMA = ROOT / "schemas" / "node-report.schema.json"

# --------------------------------------------------------------------------------------------
# declarations the exporter does not carry (keep them few: the rules below place the rest)

LAST = "last window"
PROBE_CUM = "cumulative since the probe was loaded (kernel map, never cleared)"
POD_CUM = "cumulative, as the kernel keeps it (restarts when the pod's cgroup or network namespace is made anew)"
AGENT_CUM = "cumulative since the agent process started"
LATEST = "as of the latest report"
NOW = "now (at the scrape)"

# gauges whose help text does not say which window they cover
WINDOWS = {
    "ebpf_drop_rate_weighted": LAST,
    "ebpf_pod_slo_violation_rate": LAST,
    "ebpf_node_score": LAST + " (from that window's signals)",
    "ebpf_dominant_share": LAST + " (CPU over the window, memory read at its end)",
    "ebpf_per_task_fairness": LAST + " (over the tenants' dominant shares)",
    "ebpf_network_namespaces": LATEST,
    "ebpf_cpu_allocatable_cores": LATEST,
    "ebpf_memory_allocatable_bytes": LATEST,
    "ebpf_memory_used_bytes": "read at the end of the last window",
    "ebpf_pod_memory_used_bytes": "read at the end of the last window",
    "ebpf_pod_cpu_limit_cores": LATEST,
    "ebpf_pod_memory_limit_bytes": LATEST,
    "ebpf_report_window_seconds": LATEST,
    "ebpf_report_sequence": LATEST,
    "ebpf_node_info": LATEST,
    "ebpf_probe_up": LATEST,
    "ebpf_probe_state": LATEST,
    "ebpf_agent_sample_duration_seconds": "the last sampling cycle",
    "ebpf_pods": LATEST,
    "ebpf_pods_not_exported": LATEST,
    "ebpf_pod_metadata_synced": NOW,
    "ebpf_push_pending": NOW,
    "ebpf_push_last_success_timestamp_seconds": NOW,
    "ebpf_agent_ready": NOW,
    "process_resident_memory_bytes": NOW,
    "process_virtual_memory_bytes": NOW,
    "process_open_fds": NOW,
    "process_max_fds": NOW,
    "process_start_time_seconds": "fixed for the process",
    "process_cpu_seconds": AGENT_CUM,
    "ebpf_probe_program_run_seconds": PROBE_CUM + "; counted only while kernel.bpf_stats_enabled=1",
    "ebpf_probe_program_runs": PROBE_CUM + "; counted only while kernel.bpf_stats_enabled=1",
    # the extender (docs/extender.md)
    "ebpf_extender_nodes_known": NOW,
    "ebpf_extender_nodes_fresh": NOW,
    "ebpf_extender_scores": "cumulative since the extender started",
    "ebpf_extender_request_duration_seconds": "cumulative since the extender started",
}

# units the name and help cannot tell
UNITS = {
    "ebpf_dominant_share": "ratio 0..1",
    "ebpf_per_task_fairness": "ratio 0..1 (Jain's index)",
    "ebpf_node_score": "score 0..100",
    "ebpf_extender_scores": "score 0..10",
    "ebpf_probe_state": "1 for the current state, else 0",
    "ebpf_node_info": "always 1 (the labels carry the value)",
    "process_start_time_seconds": "Unix time, seconds",
}

# labels whose values are a closed set the code makes (the rendered samples show them all);
# the others (reason, reader, program, namespace, pod, endpoint ...) carry data
CLOSED_LABELS = ("probe", "state", "cause", "kind", "verb", "result")


def unit_of(name: str, kind: str, help_: str) -> str:
    if name in UNITS:
        return UNITS[name]
    h = help_.lower()
    for suffix, unit in (("_timestamp_seconds", "Unix time, seconds"),
                         ("_bytes_per_second", "bytes per second"),
                         ("_seconds_per_second", "seconds per second"),
                         ("_milliseconds", "milliseconds"), ("_seconds", "seconds"),
                         ("_bytes", "bytes"), ("_cores", "CPU cores"), ("_ratio", "ratio 0..1")):
        if name.endswith(suffix):
            return unit
    if "share" in h or "0..1" in h:
        return "ratio 0..1"
    if "per second" in h:
        return "per second"
    if name.endswith(("_up", "_ready", "_synced", "_pending")) or h.startswith("1 "):
        return "1 or 0"
    if kind == "counter" or name.endswith(("_pods", "_not_exported", "_namespaces", "_sequence",
                                           "_fds", "_known", "_fresh")):
        return "count"
    raise ValueError(f"{name}: no unit can be derived from its name or help; declare it in "
                     f"scripts/gen-docs.py UNITS")


def window_of(name: str, kind: str, help_: str, section: str) -> str:
    if name in WINDOWS:
        return WINDOWS[name]
    if kind in ("counter", "histogram"):
        if section.startswith("probe") or section == "health":
            return PROBE_CUM
        if section == "pods":
            return POD_CUM
        if section == "extender":
            return "cumulative since the extender started"
        return AGENT_CUM
    if "window" in help_.lower():
        return LAST
    raise ValueError(f"{name}: its help text does not say which window it covers; declare it "
                     f"in scripts/gen-docs.py WINDOWS")


# --------------------------------------------------------------------------------------------
# every family the agent can render


def _fill_none(obj, **extra):
    """A copy of a dataclass with every None field set to 1 (numbers only, for rendering)."""
    changes = {f.name: 1 for f in dataclasses.fields(obj) if getattr(obj, f.name) is None}
    changes.update(extra)
    return dataclasses.replace(obj, **changes)


def synthetic_report(config: Config, specs):
    """A report with every probe up and every declared figure set (made-up values)."""
    states = {s.name: ProbeState(s.name, ProbeStateKind.UP) for s in specs}
    pod = PodSample("uid-0", "namespace", "pod", "tenant", addresses=("10.0.0.1",))
    pod = _fill_none(pod)
    base = build_report(
        config, node_name="node", sequence=1, timestamp="2000-01-01T00:00:00.000000Z",
        window_seconds=1.0, states=states, windows={},
        cumulative={s.name: ProbeSnapshot(s.name, "", 0.0) for s in specs},
        tcp_segments=(100, 1), resources=NodeResources(1.0, 1, 0.5, 0.5, 1), network_namespaces=1,
        pods=[pod], program_stats={s.name: {"program": (1, 1)} for s in specs},
        sample_duration_seconds=0.01, agent_instance="reference", specs=specs)
    figures, pod_figures = {}, {}
    for spec in specs:
        node = {}
        for s in spec.series:
            if s.per_pod:
                pod_figures.setdefault(spec.name, {})[s.figure] = 1.0
            elif s.kind == "histogram":
                node[s.figure] = Histogram(spec.hist.layout(config.hist_sub_bits), {0: 1}, 1)
            elif s.label:
                node[s.figure] = {s.label: 1.0}
            else:
                node[s.figure] = 1.0
        figures[spec.name] = ProbeFigures(node=node, pods={"uid-0": pod_figures.get(spec.name, {})})
    pods = tuple(_fill_none(p, figures=pod_figures) for p in base.pods)
    return _fill_none(base, figures=figures, pods=pods)


@dataclasses.dataclass
class Family:
    name: str  # as exposed: counters with _total
    kind: str
    labels: tuple[str, ...]
    values: dict  # closed label -> its values, in the order rendered
    help: str
    unit: str
    window: str
    section: str


def _labels(m) -> tuple[str, ...]:
    out = list(getattr(m, "_labelnames", ()) or ())
    for s in m.samples:
        for k in s.labels:
            if k not in out and k not in ("le", "quantile"):
                out.append(k)
    return tuple(out)


def _values(m) -> dict:
    out: dict = {}
    for s in m.samples:
        for k, v in s.labels.items():
            if k in CLOSED_LABELS and v not in out.setdefault(k, []):
                out[k].append(v)
    return out


def _family(m, section: str, labels: tuple[str, ...] | None = None) -> Family:
    shown = m.name + "_total" if m.type == "counter" else m.name
    return Family(shown, m.type, labels if labels is not None else _labels(m), _values(m),
                  m.documentation,
                  unit_of(m.name, m.type, m.documentation),
                  window_of(m.name, m.type, m.documentation, section), section)


def agent_sections(config: Config = Config()) -> list[tuple[str, str, list[Family]]]:
    """(section key, title, families) for everything the agent's /metrics can render."""
    specs = registry.specs()
    r = synthetic_report(config, specs)
    options = prom.ExportOptions.from_config(config)
    pods_src = ClusterPods(config, None, StandaloneMetadata("node"))
    sampler = Sampler(config, ProbeSet([]), pods_src)
    pusher = Pusher("http://extender.invalid:8888", 1.0)
    pusher.last_success = 1.0  # rendered only once a push succeeded
    box = ReportBox()
    box.publish(r)
    reg = make_registry(box, [sampler.metrics, pods_src.metrics, pusher.metrics], options)
    rendered = {m.name: m for m in reg.collect()}

    sections: list[tuple[str, str, list[Family]]] = []
    placed: set[str] = set()

    def take(key: str, title: str, names) -> None:
        fams = []
        for n in names:
            if n in rendered and n not in placed:
                placed.add(n)
                fams.append(_family(rendered[n], key))
        sections.append((key, title, fams))

    for spec in specs:
        take(f"probe:{spec.name}", f"Probe `{spec.name}` — {spec.summary}",
             [s.name for s in spec.series])
    take("node", "Node readers (`/proc`, SNMP counters of every network namespace, the Node's allocatable)",
         [m.name for m in prom.node_gauges(r)])
    take("health", "Probe health", [m.name for m in prom.probe_health(r)])
    take("pods", "Per pod (cgroup v2 and network-namespace readers) and the series budget",
         [m.name for m in prom.pod_series(r, specs, options)])
    take("sampler", "Sampler and pod source",
         [m.name for m in sampler.metrics()] + [m.name for m in pods_src.metrics()])
    take("push", "Push to the scheduler extender", [m.name for m in push_metrics([pusher])])
    take("agent", "The agent process (readiness, rendering, `process_*` from prometheus_client)",
         [n for n in rendered])  # the rest: ebpf_agent_ready, render errors, process_*
    missing = set(rendered) - placed
    assert not missing, missing  # the last section takes the rest
    return sections


def extender_section() -> list[Family]:
    """The extender's own /metrics (docs/extender.md): its registry, labels from its metric
    objects (a labelled metric without children renders no sample)."""
    from extender.app import Extender

    ext = Extender()
    labelled = {}
    for collector in list(ext.registry._collector_to_names):
        for n in ext.registry._collector_to_names[collector]:
            labelled[n] = tuple(getattr(collector, "_labelnames", ()) or ())
    out = []
    for m in ext.registry.collect():
        labels = labelled.get(m.name) or labelled.get(m.name + "_total") or ()
        out.append(_family(m, "extender", tuple(dict.fromkeys(labels + _labels(m)))))
    return out


def exposed_names(config: Config = Config()) -> set[str]:
    """Every family name the page documents for the agent, as exposed (counters with _total)."""
    return {f.name for _, _, fams in agent_sections(config) for f in fams}


# --------------------------------------------------------------------------------------------
# the payload, from the schema


def _type_of(prop: dict, defs: dict) -> str:
    ref = prop.get("$ref")
    if ref:
        d = defs[ref.rsplit("/", 1)[1]]
        return {"nnum": "number ≥ 0 or null", "share": "number 0..1 or null",
                "nint": "integer ≥ 0 or null", "probe": "object", "pod": "object"}.get(
            ref.rsplit("/", 1)[1], _type_of(d, defs))
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    t = prop.get("type", "any")
    t = " or ".join(t) if isinstance(t, list) else t
    if t == "object" and isinstance(prop.get("additionalProperties"), dict):
        return "object of " + _type_of(prop["additionalProperties"], defs)
    if t == "array" and "items" in prop:
        return "array of " + _type_of(prop["items"], defs)
    bounds = []
    if "minimum" in prop and "maximum" in prop:
        bounds.append(f"{prop['minimum']}..{prop['maximum']}")
    elif "minimum" in prop:
        bounds.append(f"≥ {prop['minimum']}")
    elif "exclusiveMinimum" in prop:
        bounds.append(f"> {prop['exclusiveMinimum']}")
    return t + (" " + bounds[0] if bounds else "")


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if "`" in text else text.replace("<", "&lt;").replace(">", "&gt;")


def schema_tables(schema: dict) -> list[str]:
    defs = schema["$defs"]

    def table(obj: dict) -> list[str]:
        req = set(obj.get("required", ()))
        rows = ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
        for k, p in obj["properties"].items():
            if "description" not in p:
                raise ValueError(f"schema property {k!r} has no description")
            rows.append(f"| `{k}` | {_cell(_type_of(p, defs))} | {'yes' if k in req else ''} | "
                        f"{_cell(p['description'])} |")
        return rows

    out = ["## The push payload (`/report` and `POST <extender_url>/metrics/report`)", "",
           f"From [`schemas/node-report.schema.json`](../schemas/node-report.schema.json) "
           f"(every pushed payload is validated against it in the tests). "
           + _cell(schema["description"]), "", "### Top level", ""]
    out += table(schema)
    out += ["", "### `pods[]`: one entry per pod", ""]
    out += table(defs["pod"])
    out += ["", "### `probes.<name>`", ""]
    out += table(defs["probe"])
    return out


# --------------------------------------------------------------------------------------------
# the page

PREFACE = """\
# Metrics and payload reference

<!-- generated by scripts/gen-docs.py from the exporters' declarations and the schema;
     do not edit by hand: run `make docs` (a unit test fails when this file is stale) -->

Everything the agent serves at `/metrics` (default port 9810), then the extender's own series,
then the pushed JSON document. Counters are shown with their `_total` suffix, histograms by
their base name (exposed as `_bucket{le}`, `_sum` and `_count`).

How to read the numbers:

- **Windows.** The agent samples every `sample_interval` (10 s by default); a *last window*
  figure covers the time between the last two samples (`ebpf_report_window_seconds` says how
  long it was). Counters and histograms are *cumulative*: use `rate()`/`increase()` and
  `histogram_quantile()` over them. The kernel's maps are never cleared; a counter that goes
  backwards (a probe reloaded) restarts the window.
- **Absent, never 0.** A figure whose probe is down (or whose reader failed) is absent from
  `/metrics` and `null` in the payload (with `availability.<signal>: false`); `ebpf_probe_up`
  and `ebpf_probe_state` say why (`/readyz` and `ebpf-edge-agent status` show the reason).
- **Seed names.** The seed design's gauges keep their names and units
  (`ebpf_rtt_p50_milliseconds`, `ebpf_rtt_p99_milliseconds`, `ebpf_runqlat_p95_milliseconds`,
  `ebpf_tcp_retrans_rate`, `ebpf_drop_rate`, `ebpf_drop_reason_rate`, `ebpf_cpu_utilization`);
  newer series use base units (seconds, bytes).
- **Histograms** (`ebpf_tcp_rtt_seconds`, `ebpf_runqlat_seconds`) have
  `export_buckets_per_octave` buckets per power of two (default 4), every `le` a slot boundary of
  the in-kernel log-linear histogram, so `histogram_quantile()` agrees with the agent's own
  percentiles to within one bucket.
- **Retransmit rate** (`ebpf_tcp_retrans_rate`) is the share of TCP *segments* sent that were
  retransmissions, `RetransSegs ÷ (OutSegs + RetransSegs)` (Linux's `OutSegs` excludes
  retransmissions), from the kernel's own SNMP counters summed over every network namespace that
  has a process (`ebpf_network_namespaces` says how many). The `tcp_retrans` probe's counters
  count retransmitted *skbs* (one TSO/GSO skb can carry many segments) and give the per-address
  and per-pod breakdown.
- **Drop rate** is dropped skbs per second over the window; reasons are the running kernel's
  `enum skb_drop_reason` names (`NOT_DROPPED_YET` and `CONSUMED` are not drops). Kernels before
  5.17 have no reason: every drop is `reason="unknown"`. The score uses the rate weighted per
  reason (`score.drop_reason_weights`: `NO_SOCKET` 0, `QDISC_DROP` 1, …). Drops are node-wide
  only: `kfree_skb` carries no address a probe could attribute.
- **CPU utilisation** is the busy share of all CPUs from `/proc/stat`; **dominant share** is
  max(CPU used ÷ allocatable, memory used ÷ allocatable); **fairness** is Jain's index over the
  tenants' dominant shares (1.0 with one tenant or none); the **SLO violation rate** is the share
  of RTT samples above their pod's SLO (annotation `ebpf-edge-agent.io/rtt-slo-ms`, else
  `default_rtt_slo_ms`; host traffic against the default); **node score** =
  100·(1 − Σ wᵢ·normᵢ) with the weights and bounds of `score:`, leaving out (and re-weighting
  around) signals that are unavailable.
- **Per pod** series carry `namespace` and `pod`; RTT, SLO and retransmits are attributed by the
  pod's IP (never by the current task: the ACK and retransmit paths run in softirq);
  `hostNetwork` pods share the node's addresses and get no address-attributed series. Pods that
  are gone stop appearing.
- **Series budget.** `pod_series` (per-pod series at all), `max_exported_pods` (default 110, the
  kubelet's default maxPods; beyond it the busiest by CPU are kept and `ebpf_pods_not_exported`
  counts the rest) and `export_buckets_per_octave` (1, 2, 4 or 8). 110 pods with every signal
  stay under 3,000 series (`pytest -s tests/unit/test_series_budget.py` holds it and prints the
  count); what that costs a Prometheus at 500 and
  5,000 nodes is in [BENCHMARKS.md](../BENCHMARKS.md), section 5. The report and the push always
  carry every pod.
- **Push series** are labelled `endpoint` (the URL) and `address` (the IP it was reached at, ""
  for the URL's own host): one set per scheduler replica behind a headless Service.
"""


def family_rows(fams: list[Family]) -> list[str]:
    rows = ["| series | type | unit | labels | window | meaning |",
            "| --- | --- | --- | --- | --- | --- |"]
    for f in fams:
        labels = []
        for lab in f.labels:
            values = ", ".join(f.values.get(lab, ()))
            labels.append(f"`{lab}`" + (f" ({values})" if values else ""))
        rows.append(f"| `{f.name}` | {f.kind} | {f.unit} | {', '.join(labels) or '—'} | "
                    f"{f.window} | {_cell(f.help)} |")
    return rows


def render(config: Config = Config()) -> str:
    lines = [PREFACE, "## Agent `/metrics`", ""]
    for _, title, fams in agent_sections(config):
        if not fams:
            continue
        lines += [f"### {title}", ""] + family_rows(fams) + [""]
    lines += ["## Extender `/metrics` (`ebpf-edge-extender`, [docs/extender.md](extender.md))", ""]
    lines += family_rows(extender_section()) + [""]
    lines += schema_tables(json.loads(SCHEMA.read_text())) + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file is out of date")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        old = a.out.read_text() if a.out.exists() else ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       str(a.out), "generated"))
            print(f"{a.out} is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    a.out.write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
