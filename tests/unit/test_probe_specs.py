"""Every probe is declared once, and its declaration is consistent with itself, its C file, the
schema and the rest of the agent; decoding raw map contents is pure and tested here."""

import ast
import json
import re
from array import array
from pathlib import Path

import pytest

from agent.config import Config
from agent.model import Histogram, ProbeSnapshot, ProbeState, ProbeStateKind
from agent.probes import registry
from agent.probes import connect, runqlat, skb_drop, tcp_retrans, tcp_rtt
from agent.probes.spec import Context, PodView, cgroup_key
from agent.stats.histogram import SlotLayout

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "node-report.schema.json").read_text())
SPECS = registry.specs()


def test_one_name_everywhere():
    for s in SPECS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", s.name)
        assert s.source == f"{s.name}.bpf.c" and (ROOT / "bpf" / s.source).is_file()
        assert registry.probe_class(s.name).spec is s
        assert (ROOT / "agent" / "probes" / f"{s.name}.py").is_file()


def test_declared_maps_and_defines_are_in_the_c_file():
    """A map the spec declares is defined in the C text BCC compiles, and every -D it derives
    is used there (a renamed map or define fails here, not at load on a node)."""
    from agent.probes.base import load_source

    cfg = Config()
    for s in SPECS:
        text = load_source(cfg.bpf_dir / s.source)
        for h in re.findall(r'^#include "([\w.]+\.h)"', text, re.M):  # common.h, hist.h
            text += (cfg.bpf_dir / h).read_text()
        for m in s.maps:
            assert re.search(rf"\b{m.name}\b", text), (s.name, m.name)
        for d in s.defines(cfg):
            assert re.search(rf"\b{d}\b", text), (s.name, d)
        if s.lost_map:
            assert s.lost_map in {m.name for m in s.maps} and "count_lost()" in text
        if s.hist is None:
            assert '#include "hist.h"' not in text and "HIST_SUB_BITS" not in s.defines(cfg)
        for tp in s.tracepoints:
            system, event = tp.split(":")
            assert f"TRACEPOINT_PROBE({system}, {event})" in text, (s.name, tp)


def test_fields_name_declared_tracepoints_and_attribution_is_known():
    for s in SPECS:
        assert set(s.fields) <= set(s.tracepoints), s.name
        assert s.attribution in ("address", "cgroup", "none")


def test_the_registry_is_the_union_and_has_no_duplicates():
    tps = registry.tracepoints()
    assert len(tps) == len(set(tps))
    assert set(tps) == {tp for s in SPECS for tp in s.all_tracepoints()}
    series = [x.name for s in SPECS for x in s.series]
    assert len(series) == len(set(series)), "two probes export the same series"
    keys = [f.key for s in SPECS for f in s.payload]
    assert len(keys) == len(set(keys)), "two probes write the same payload key"
    sigs = registry.signals()
    assert len(sigs) == len(set(sigs))


def _ctx():
    pods = (PodView("uid-a", ("10.0.0.5",), False, 100.0, (100, 101)),
            PodView("uid-h", ("192.168.1.10",), True, 100.0, (300,)),
            PodView("uid-c", ("10.0.0.9",), False, 50.0, (200, 202)))
    return Context(pods=pods, default_rtt_slo_ms=100.0, window_seconds=10.0, score=Config().score)


def _snapshot(spec):
    """A small window of the shape the probe's decode() makes."""
    if spec.hist is not None:
        lay = spec.hist.layout(5)
        keys = {"address": ("10.0.0.5", "192.168.1.10"),
                "cgroup": ("", cgroup_key(101), cgroup_key(202), cgroup_key(300))}.get(
                    spec.attribution, ("",))
        return ProbeSnapshot(spec.name, spec.hist.unit, 10.0, since=0.0, hists={
            k: Histogram(lay, {lay.slot_of(1000): 3}, 3000) for k in keys})
    keys = ("10.0.0.5", "192.168.1.10") if spec.attribution == "address" else ("NO_SOCKET",)
    return ProbeSnapshot(spec.name, "", 10.0, since=0.0, counts={k: 4 for k in keys})


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_declared_figure_is_produced(spec):
    """Series, payload fields and signals name figures the probe's summary really makes."""
    snap = _snapshot(spec)
    f = spec.summarize(snap, snap, _ctx())
    for x in [*(s for s in spec.series if not s.per_pod), *spec.payload, *spec.signals]:
        assert x.figure in f.node, (spec.name, x.figure)
    pod_figures = set().union(*(set(v) for v in f.pods.values())) if f.pods else set()
    for x in [*(s for s in spec.series if s.per_pod), *spec.pod_payload]:
        assert x.figure in pod_figures, (spec.name, x.figure)
    if spec.attribution == "address":
        assert "uid-h" not in f.pods, "a host-network pod got the host's traffic"
        assert set(f.pods) == {"uid-a", "uid-c"}
    if spec.attribution == "cgroup":  # a pod's CPU wait is its own, host network or not
        assert set(f.pods) == {"uid-a", "uid-c", "uid-h"}
    for s in spec.series:
        if s.kind == "histogram":
            assert spec.hist is not None and isinstance(f.node[s.figure], Histogram)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_payload_fields_are_in_the_schema(spec):
    props = SCHEMA["properties"]
    pod_props = SCHEMA["$defs"]["pod"]["properties"]
    for f in spec.payload:
        assert f.key in props, (spec.name, f.key)
    for f in spec.pod_payload:
        assert f.key in pod_props, (spec.name, f.key)
    assert re.fullmatch(r"[a-z_]+", spec.availability)  # the schema takes any key: boolean


def test_no_module_outside_the_specs_dispatches_on_a_probe_name():
    """Contract values may name probes (the schema, dashboards, rules, the example config);
    the runtime modules that read the registry may not."""
    names = registry.names()
    for rel in ("agent/report.py", "agent/export/prometheus.py", "agent/export/payload.py",
                "agent/smoke.py", "agent/kernel.py", "agent/config.py", "agent/sampler.py",
                "agent/service.py", "agent/cli.py"):
        tree = ast.parse((ROOT / rel).read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        hits = {s for s in strings for name in names if re.search(rf"\b{name}\b", s)}
        assert not hits, f"{rel} names a probe: {sorted(hits)}"


def test_configuration_names_come_from_the_registry():
    from agent.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="one of " + ", ".join(registry.names())):
        load_config(None, {}, {"probes": "tcp_rtt,nope"}, registry.known())
    with pytest.raises(ConfigError, match="score.weights.latency"):
        registry.check_config(Config(score=Config().score.__class__(
            weights={"rtt_p99": 0.7, "latency": 0.3})))
    assert [s.name for s in registry.selected(Config(probes=("runqlat", "tcp_rtt")))] == [
        "tcp_rtt", "runqlat"]  # registry order, whatever the order asked


def test_report_payload_and_metrics_follow_a_new_spec_without_other_changes():
    """A probe added the new way (a spec only, here a fake one) shows in the report, the payload
    and /metrics with no edit anywhere else."""
    import dataclasses

    from agent.export.payload import build_payload
    from agent.export.prometheus import render_report
    from agent.model import NodeResources
    from agent.probes.spec import Field, Figures, ProbeSpec, Series
    from agent.report import build_report

    def summarize(win, cum, ctx):
        return Figures(node={"widgets_per_second": sum(win.counts.values()) / win.seconds,
                             "widgets_total": sum(cum.counts.values())})

    widget = ProbeSpec(name="widget", source="widget.bpf.c", summary="widgets",
                       tracepoints=("w:widget",), summarize=summarize,
                       series=(Series("ebpf_widgets_per_second", "Widgets", "widgets_per_second"),
                               Series("ebpf_widgets", "Widgets", "widgets_total", kind="counter")),
                       payload=(Field("widget_rate", "widgets_per_second"),),
                       availability="widgets")
    snap = ProbeSnapshot("widget", "", 10.0, counts={"": 20}, since=5.0)
    r = build_report(Config(), node_name="n", sequence=1, timestamp="t", window_seconds=5.0,
                     states={"widget": ProbeState("widget", ProbeStateKind.UP)},
                     windows={"widget": snap}, cumulative={"widget": dataclasses.replace(snap, counts={"": 90})},
                     tcp_segments=None, pods=[], specs=(widget,),
                     resources=NodeResources(None, None, None, None, None))
    assert r.figure("widget", "widgets_per_second") == 4.0
    p = build_payload(r, specs=(widget,))
    assert p["widget_rate"] == 4.0 and p["availability"]["widgets"] is True
    fams = {m.name: m for m in render_report(r, specs=(widget,))}
    assert fams["ebpf_widgets_per_second"].samples[0].value == 4.0
    assert fams["ebpf_widgets"].samples[0].value == 90


# ---------------------------------------------------------------------------------------------
# decoding raw map contents (pure)


def test_tcp_rtt_decode_merges_rows_and_spill_per_address():
    lay = SlotLayout(5, 21)
    words = array("Q", [0] * lay.slots)
    words[lay.slot_of(300)] = 4
    snap = tcp_rtt.decode(lay, {0: "10.0.0.5"}, {0: words}, {0: 1200},
                          [("10.0.0.5", lay.slot_of(900), 1, 900), ("::1", 3, 2, 6), ("::1", 7, 0, 0)],
                          lost=5, taken_at=1.0)
    h = snap.hists["10.0.0.5"]
    assert h.counts == {lay.slot_of(300): 4, lay.slot_of(900): 1} and h.total == 2100
    assert snap.hists["::1"].counts == {3: 2} and snap.lost == 5 and snap.unit == "us"


def test_tcp_retrans_decode_sums_row_and_spill():
    snap = tcp_retrans.decode({0: "10.0.0.5", 1: "10.0.0.6"}, {0: 3, 1: 0},
                              [("10.0.0.5", 2), ("fd00::1", 1)], lost=1, taken_at=1.0)
    assert snap.counts == {"10.0.0.5": 5, "10.0.0.6": 0, "fd00::1": 1} and snap.lost == 1


def test_skb_drop_decode_names_slots_and_leaves_out_non_drops():
    names = {2: "NO_SOCKET", 0: "NOT_DROPPED_YET"}
    namer = skb_drop.reason_namer(lambda n: names.get(n, f"REASON_{n}"),
                                  lambda n: names.get(n) != "NOT_DROPPED_YET")
    snap = skb_drop.decode({0: 7, 2: 3, 5: 0, skb_drop.DROP_SLOTS - 1: 2,
                            skb_drop.DROP_SLOTS - 2: 1}, namer, taken_at=1.0)
    assert snap.counts == {"NO_SOCKET": 3, skb_drop.UNKNOWN: 2, skb_drop.OUT_OF_RANGE: 1}


def test_runqlat_decode_is_one_node_histogram():
    lay = SlotLayout(5, 30)
    snap = runqlat.decode(lay, {10: (4, 40), 11: (0, 0)}, lost=2, taken_at=1.0)
    assert snap.hists[""].counts == {10: 4} and snap.hists[""].total == 40 and snap.lost == 2


def test_connect_decode_keys_latency_by_address_and_counts_by_kind():
    lay = SlotLayout(5, 21)
    snap = connect.decode(lay, [("10.0.0.5", lay.slot_of(20_000), 3, 60_300),
                                ("10.0.0.5", lay.slot_of(40_000), 1, 40_000),
                                ("fd00::5", 9, 0, 0)],
                          [("10.0.0.5", 2, 0), ("fd00::5", 1, 4), ("10.0.0.9", 0, 0)],
                          lost=3, taken_at=1.0)
    h = snap.hists["10.0.0.5"]
    assert h.counts == {lay.slot_of(20_000): 3, lay.slot_of(40_000): 1} and h.total == 100_300
    assert "fd00::5" not in snap.hists  # no sample: no histogram
    assert snap.counts == {"failed/10.0.0.5": 2, "failed/fd00::5": 1, "passive/fd00::5": 4}
    assert connect.split_counts(snap.counts) == {"failed": {"10.0.0.5": 2, "fd00::5": 1},
                                                 "passive": {"fd00::5": 4}}
    assert snap.lost == 3 and snap.unit == "us"


def test_connect_summary_per_node_and_pod_with_failure_rates():
    lay = SlotLayout(5, 21)
    win = connect.decode(lay, [("10.0.0.5", lay.slot_of(20_000), 4, 80_000),
                               ("192.168.1.10", lay.slot_of(500), 6, 3_000)],
                         [("10.0.0.5", 2, 1), ("192.168.1.10", 1, 0), ("10.0.0.9", 0, 5)],
                         lost=0, taken_at=10.0)
    cum = connect.decode(lay, [("10.0.0.5", lay.slot_of(20_000), 16, 320_000)],
                         [("10.0.0.5", 7, 1), ("10.0.0.9", 3, 9)], lost=0, taken_at=10.0)
    f = connect.summarize(win, cum, _ctx())
    n = f.node
    assert (n["connects"], n["connect_failures"], n["passive_opens"]) == (10, 3, 6)
    assert n["connect_failure_rate"] == pytest.approx(3 / 13)
    assert n["connect_p50"] == pytest.approx(0.000_5, rel=0.05)  # 4 at 20 ms, 6 at 0.5 ms
    assert n["connect_p99"] == pytest.approx(0.020, rel=0.05)
    assert (n["connect_failures_total"], n["passive_opens_total"]) == (10, 10)
    assert n["connect_hist_total"].count == 16
    a, c = f.pods["uid-a"], f.pods["uid-c"]
    assert (a["connects"], a["connect_failures"], a["passive_opens"]) == (4, 2, 1)
    assert a["connect_failure_rate"] == pytest.approx(2 / 6)
    assert a["connect_p99"] == pytest.approx(0.020, rel=0.05)
    assert (a["connect_failures_total"], a["passive_opens_total"]) == (7, 1)
    # a pod with passive opens only: no active open, so no latency and no failure rate
    assert (c["connects"], c["passive_opens"], c["connect_p99"], c["connect_failure_rate"]) == (
        0, 5, None, None)
    assert "uid-h" not in f.pods  # the host's 192.168.1.10 traffic is not the host-network pod's


def test_connect_summary_of_a_quiet_window_is_unknown_not_zero():
    lay = SlotLayout(5, 21)
    quiet = connect.decode(lay, [], [], lost=0, taken_at=10.0)
    n = connect.summarize(quiet, quiet, _ctx()).node
    assert n["connect_p50"] is None and n["connect_failure_rate"] is None
    assert (n["connects"], n["connect_failures"], n["passive_opens"]) == (0, 0, 0)


def test_connect_failure_rate_is_a_score_signal_of_weight_0_unless_configured():
    from dataclasses import replace

    from agent.config import ScoreConfig
    from tests.unit import report_fixture as F

    lay = SlotLayout(5, 21)
    win = {**F.windows(), "connect": connect.decode(
        lay, [("10.0.0.5", lay.slot_of(20_000), 30, 600_000)], [("10.0.0.5", 10, 0)], 0, 10.0)}
    st = {**F.states(), "connect": ProbeState("connect", ProbeStateKind.UP)}
    seed = F.report()
    r = F.report(st=st, win=win)
    assert r.figure("connect", "connect_failure_rate") == pytest.approx(0.25)
    assert r.score_inputs["connect_failure_rate"] == pytest.approx(1.0)  # 0.25 on [0, 0.25]
    assert r.score == seed.score  # weight 0: the seed's score is unchanged
    weighted = replace(Config(), score=ScoreConfig(
        weights={"rtt_p99": 0.3, "retrans_rate": 0.2, "drop_rate": 0.1, "runqlat_p95": 0.15,
                 "cpu_util": 0.15, "connect_failure_rate": 0.1}))
    registry.check_config(weighted)  # its default bounds make the weight valid
    assert F.report(config=weighted, st=st, win=win).score < seed.score
