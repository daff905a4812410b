"""The kernel-matrix table of docs/platforms.md is what scripts/kernel-matrix/matrix.py renders from the
committed per-kernel results (tests/kernels/results/*.json), never hand-edited."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "kernels" / "results"


def _load_matrix():
    spec = importlib.util.spec_from_file_location(
        "kernel_matrix", ROOT / "scripts" / "kernel-matrix" / "matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


matrix = _load_matrix()


def test_platforms_table_is_rendered_from_the_committed_results():
    docs = matrix.load_results(RESULTS)
    assert {d["suite"] for d in docs} >= {"bullseye", "bookworm", "trixie", "host"}
    page = (ROOT / "docs" / "platforms.md").read_text()
    assert matrix.current_block(page) == matrix.expected_block(RESULTS), (
        "docs/platforms.md kernel-matrix table is stale: run `scripts/kernel-matrix/matrix.py "
        "render --results tests/kernels/results --doc docs/platforms.md`")


def test_readme_summary_is_rendered_from_the_committed_results():
    docs = matrix.load_results(RESULTS)
    readme = (ROOT / "README.md").read_text()
    assert matrix.current_block(readme, matrix.SUMMARY_BEGIN_RE, matrix.SUMMARY_END) == \
        matrix.render_summary(docs), (
        "README.md kernel summary is stale: run `scripts/kernel-matrix/matrix.py render --results "
        "tests/kernels/results --doc docs/platforms.md --summary README.md`")


def test_summary_row_counts_the_probes_up_and_names_the_others():
    doc = {"release": "5.10.0-32-amd64", "suite": "bullseye", "smoke_test": {"exit_code": 0, "doc": {
        "probes": {n: {"state": "up", "events": 3} for n in matrix.PROBES}}},
        "pytest": {"counts": {"passed": 35, "skipped": 1}, "tests": {matrix.LIVE_TEST: "passed"}}}
    doc["smoke_test"]["doc"]["probes"]["skb_drop"]["detail"] = {"reason_names": "no reason field"}
    row = matrix.render_summary([doc]).splitlines()[2]
    n = len(matrix.PROBES)
    assert row == (f"| 5.10.0-32-amd64 (Debian 11 bullseye) | {n - 1} of {n} (`skb_drop` degraded "
                   "(no drop `reason` field: every drop counted as `unknown`)) | pass | pass | "
                   "35 passed, 1 skipped |")
    doc["pytest"]["tests"][matrix.LIVE_TEST] = "failed: AssertionError: 90 MiB"
    assert "| FAIL |" in matrix.render_summary([doc])


def test_every_committed_result_names_its_kernel_and_all_probes():
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["suite"] == path.stem
        assert doc["release"], path
        probes = doc["smoke_test"]["doc"]["probes"]
        assert set(probes) <= set(matrix.PROBES), (path, sorted(probes))
        # a probe registered after this kernel's last run is shown as "not run" in the table,
        # never as passing, until `make test-kernels` runs it there
        row = next(ln for ln in matrix.render_block([doc]).splitlines()
                   if ln.startswith(f"| {doc['release']} "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        for i, name in enumerate(matrix.PROBES, start=1):
            if name not in probes:
                assert cells[i] == "not run", (path, name, row)


@pytest.mark.parametrize("probe, cell", [
    ({"state": "up", "events": 5}, "up"),
    ({"state": "up", "events": 5,
      "detail": {"reason_names": "no reason field: counted as 'unknown'"}},
     "degraded (no drop `reason` field: every drop counted as `unknown`)"),
    ({"state": "up", "events": 0, "reason": "attached but saw no events during the smoke load"},
     "degraded (attached but saw no events during the smoke load)"),
    ({"state": "unsupported", "events": 0, "reason": "tracepoint tcp:tcp_probe not found"},
     "unsupported (tracepoint tcp:tcp_probe not found)"),
    ({"state": "down", "events": 0, "reason": "start failed: x"}, "down (start failed: x)"),
    (None, "not run"),
])
def test_probe_cell(probe, cell):
    assert matrix.probe_cell(probe) == cell


def test_skb_drop_without_a_reason_field_is_degraded_by_check_kernels_account_too():
    up = {"state": "up", "events": 16, "top_reasons": {"unknown": 16}}
    none = {"drop reasons": "no reason field on this kernel: drops counted as 'unknown'"}
    assert matrix.probe_cell(up, none, "skb_drop").startswith("degraded (no drop `reason` field")
    assert matrix.probe_cell(up, {"drop reasons": "93 names from btf"}, "skb_drop") == "up"
    assert matrix.probe_cell({"state": "up", "events": 3}, none, "tcp_rtt") == "up"


def test_replace_block_touches_only_the_marked_section():
    text = ("# t\nbefore\n<!-- kernel-matrix:begin (generated) -->\nold\n"
            "<!-- kernel-matrix:end -->\nafter\n")
    out = matrix.replace_block(text, "NEW")
    assert out == ("# t\nbefore\n<!-- kernel-matrix:begin (generated) -->\nNEW\n"
                   "<!-- kernel-matrix:end -->\nafter\n")
    assert matrix.current_block(out) == "NEW"
    with pytest.raises(ValueError):
        matrix.replace_block("no markers", "x")


def test_junit_summary():
    xml = """<?xml version="1.0"?><testsuites><testsuite>
      <testcase classname="tests.bpf.test_lab" name="test_a"/>
      <testcase classname="tests.bpf.test_lab" name="test_b">
        <skipped message="no reason field (&lt; 5.17)"/></testcase>
      <testcase classname="tests.bpf.test_isolation" name="test_c">
        <failure message="assert 1 == 0">trace</failure></testcase>
    </testsuite></testsuites>"""
    s = matrix.parse_junit(xml)
    assert s["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert s["tests"] == {
        "tests/bpf/test_isolation.py::test_c": "failed: assert 1 == 0",
        "tests/bpf/test_lab.py::test_a": "passed",
        "tests/bpf/test_lab.py::test_b": "skipped: no reason field (< 5.17)",
    }


LIVE_FIGURES = {"allocation_bytes": 64 << 20, "window_seconds": 4.1,
                "agent": {"memory_used": 67_400_000, "memory_limit": 128 << 20, "cpu_used": 0.4987,
                          "cpu_limit": 0.5, "cpu_throttled_ratio": 0.97, "cpu_pressure": 0.51,
                          "memory_pressure": 0.0}}


def _doc(outcome, live=None, suite="trixie"):
    tests = {} if outcome is None else {matrix.LIVE_TEST: outcome}
    return {"suite": suite, "pytest": {"tests": tests, "exit_code": 0},
            "check_kernel": {"exit_code": 0}, "smoke_test": {"exit_code": 0},
            "release": "6.12.1", "headers": "6.12.1", "cgroup_live": live}


@pytest.mark.parametrize("outcome, live, cell", [
    ("passed", LIVE_FIGURES,
     "pass: 64.3 MiB working set for 64.0 MiB touched, limit 128.0 MiB; 0.50 of 0.5 core, "
     "97% of periods throttled, CPU pressure 51%"),
    ("passed", None, "pass"),  # a result collected without the figures file
    ("passed", {"error": "cgroup-live.json: Expecting value"}, "pass"),
    ("passed", {"agent": {"cpu_used": None, "cpu_limit": 0.5}}, "pass"),  # garbled figures: no crash
    ("skipped: the cgroup v2 hierarchy at /sys/fs/cgroup/unified has no cpu or memory controller",
     None, "skipped (the cgroup v2 hierarchy at /sys/fs/cgroup/unified has no cpu or memory controller)"),
    ("failed: AssertionError: (0.61, (0.49, 0.51))", LIVE_FIGURES, "FAIL (AssertionError: (0.61, (0.49, 0.51)))"),
    ("error", None, "FAIL"),
    (None, None, "not run"),  # results from before the check existed, or a restricted run
])
def test_live_cell(outcome, live, cell):
    assert matrix.live_cell(_doc(outcome, live)) == cell


def test_live_column_is_rendered_from_the_results():
    block = matrix.render_block([_doc("passed", LIVE_FIGURES)])
    head = next(ln for ln in block.splitlines() if ln.startswith("| kernel "))
    row = next(ln for ln in block.splitlines() if ln.startswith("| 6.12.1 "))
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[cols.index("live pod cgroup")].startswith("pass: 64.3 MiB working set")
    assert "Live pod cgroup: `tests/e2e/test_pod_cgroup_live.py`" in block


def test_a_guest_that_skipped_the_live_check_fails_the_verdict():
    assert matrix.problems(_doc("passed", LIVE_FIGURES)) == []
    assert matrix.problems(_doc(None)) == []  # not in this run's selection
    bad = matrix.problems(_doc("skipped: no cpu controller"))
    assert bad == ["live pod-cgroup test skipped: no cpu controller"]
    # the host binds cpu and memory to cgroup v1: its skip is the truth, not a failure
    assert matrix.problems(_doc("skipped: bound to cgroup v1", suite="host")) == []


def test_collect_takes_the_live_figures_when_the_guest_wrote_them(tmp_path):
    (tmp_path / "env.txt").write_text("release=6.12.1\nbuild_utsrelease=6.12.1\n")
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.e2e.test_pod_cgroup_live" '
        'name="test_agent_pod_limits_match_a_live_cgroup"/></testsuite></testsuites>')
    assert matrix.collect("trixie", tmp_path, 10)["cgroup_live"] is None
    (tmp_path / matrix.LIVE_FILE).write_text(json.dumps(LIVE_FIGURES))
    doc = matrix.collect("trixie", tmp_path, 10)
    assert doc["cgroup_live"] == LIVE_FIGURES
    assert doc["pytest"]["tests"][matrix.LIVE_TEST] == "passed"
    assert matrix.live_cell(doc).startswith("pass: 64.3 MiB")
    (tmp_path / matrix.LIVE_FILE).write_text("{truncated")
    assert "error" in matrix.collect("trixie", tmp_path, 10)["cgroup_live"]


def test_a_restricted_run_says_so_in_the_table_and_claims_no_exclusions(tmp_path):
    sel = ("tests/bpf/test_runq_pods.py tests/bpf/test_compile_child.py::test_x "
           "tests/e2e/test_pod_cgroup_live.py")
    assert matrix.restricted("tests/bpf --deselect tests/bpf/test_a.py::t") == []
    assert matrix.restricted(sel) == ["tests/bpf/test_compile_child.py",
                                      "tests/bpf/test_runq_pods.py",
                                      "tests/e2e/test_pod_cgroup_live.py"]
    (tmp_path / "env.txt").write_text(f"release=6.12.1\nbuild_utsrelease=6.12.1\npytest_selection={sel}\n")
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.bpf.test_runq_pods" name="test_a"/>'
        '</testsuite></testsuites>')
    doc = matrix.collect("trixie", tmp_path, 10)
    assert doc["pytest"]["excluded"] == {}  # exclude.txt did not apply to this run
    doc.update({"check_kernel": {"exit_code": 0}, "smoke_test": {"exit_code": 0}})
    row = next(ln for ln in matrix.render_block([doc]).splitlines() if ln.startswith("| 6.12.1 "))
    assert ("1 passed (a restricted run, KMATRIX_PYTEST: `test_compile_child.py`, "
            "`test_runq_pods.py`, `test_pod_cgroup_live.py` only)") in row


def test_the_block_says_how_long_the_recorded_runs_took():
    docs = [{"release": "5.10.0-32-amd64", "seconds": 2121}, {"release": "6.18.44", "seconds": 90}]
    assert matrix.timing(docs) == "5.10.0-32-amd64 35 min, 6.18.44 2 min: 37 min in all"
    assert matrix.timing(docs[:1]) == "5.10.0-32-amd64 35 min"
    assert "took 5.10.0-32-amd64 35 min" in matrix.HOW_TO_RUN.format(timing=matrix.timing(docs[:1])).replace("\n", " ")
