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
