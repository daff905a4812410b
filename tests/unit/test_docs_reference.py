"""docs/metrics.md is what scripts/gen-docs.py renders from the exporters' declarations and the
schema (UPDATE_DOCS=1 accepts a new rendering), and it documents every family the agent can
render, found independently of the generator; every payload property has a description."""

import dataclasses
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from agent.export.prometheus import POD_READER_SERIES
from agent.probes import registry
from agent.probes.spec import Series

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
SCHEMA = ROOT / "schemas" / "node-report.schema.json"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen-docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()


def documented(text: str) -> set[str]:
    """The series names in the doc's tables (first column)."""
    return set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \|", text, re.M))


def test_the_committed_page_is_what_the_generator_renders():
    text = gen.render()
    if os.environ.get("UPDATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/metrics.md is stale: run `make docs` (or UPDATE_DOCS=1)"


def test_every_family_the_exporter_renders_for_a_full_report_is_documented():
    # the budget test's report, built through build_report from probe snapshots: not the
    # generator's synthetic one
    from prometheus_client.registry import CollectorRegistry

    from agent.export.prometheus import ExportOptions, ReportCollector
    from tests.unit.test_series_budget import full_report

    reg = CollectorRegistry()
    reg.register(ReportCollector(lambda: full_report(3), options=ExportOptions()))
    rendered = {m.name + ("_total" if m.type == "counter" else "") for m in reg.collect()}
    doc = documented(DOC.read_text())
    assert rendered - doc == set()
    assert len(rendered) > 40  # the report really rendered


def test_every_declared_series_is_documented_with_its_type():
    doc = DOC.read_text()
    names = documented(doc)
    for spec in registry.specs():
        for s in spec.series:
            shown = s.name + ("_total" if s.kind == "counter" else "")
            assert shown in names, f"{spec.name}: {shown} is not in docs/metrics.md"
            row = next(ln for ln in doc.splitlines() if ln.startswith(f"| `{shown}` |"))
            assert f"| {s.kind} |" in row
    for name, _, counter, _ in POD_READER_SERIES.values():
        assert name + ("_total" if counter else "") in names
    for must in ("ebpf_agent_ready", "process_resident_memory_bytes", "ebpf_push_failures_total",
                 "ebpf_agent_render_errors_total", "ebpf_cgroup_read_problems_total",
                 "ebpf_extender_reports_rejected_total"):
        assert must in names


def test_every_documented_series_has_unit_window_and_meaning():
    for _, _, fams in gen.agent_sections():
        for f in fams:
            assert f.unit and f.window and f.help.strip(), f


def test_the_retransmit_rate_row_says_what_it_counts():
    row = next(ln for ln in DOC.read_text().splitlines()
               if ln.startswith("| `ebpf_tcp_retrans_rate` |"))
    assert "RetransSegs / (OutSegs + RetransSegs)" in row and "last window" in row


def _with_series(monkeypatch, extra: Series):
    spec, cls = registry.PROBES["tcp_retrans"]
    monkeypatch.setitem(registry.PROBES, "tcp_retrans",
                        (dataclasses.replace(spec, series=spec.series + (extra,)), cls))


def test_a_new_series_changes_the_page(monkeypatch):
    _with_series(monkeypatch, Series("ebpf_tcp_retrans_made_up_per_second",
                                     "Made-up figure per second over the last window",
                                     "retrans_events"))
    text = gen.render()
    assert "ebpf_tcp_retrans_made_up_per_second" in documented(text)
    assert text != DOC.read_text()  # so the golden comparison above fails until regenerated


def test_a_gauge_whose_window_cannot_be_told_stops_the_generator(monkeypatch):
    _with_series(monkeypatch, Series("ebpf_tcp_retrans_mystery_ratio", "A mystery", "retrans_events"))
    with pytest.raises(ValueError, match="ebpf_tcp_retrans_mystery_ratio.*WINDOWS"):
        gen.render()


def test_every_payload_property_has_a_description_and_is_documented():
    schema = json.loads(SCHEMA.read_text())
    doc = DOC.read_text()
    objects = {"top": schema["properties"], "pod": schema["$defs"]["pod"]["properties"],
               "probe": schema["$defs"]["probe"]["properties"]}
    for where, props in objects.items():
        for key, prop in props.items():
            assert prop.get("description", "").strip(), f"{where}.{key} has no description"
            assert f"| `{key}` |" in doc, f"{where}.{key} is not in docs/metrics.md"


def test_a_property_without_description_stops_the_generator():
    schema = json.loads(SCHEMA.read_text())
    del schema["properties"]["node_name"]["description"]
    with pytest.raises(ValueError, match="node_name"):
        gen.schema_tables(schema)
