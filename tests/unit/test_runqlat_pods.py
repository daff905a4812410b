"""runqlat per pod without a kernel: the coarse row slot rule in C against Python, decode of
the cgroup rows, the per-pod figures, the cgroup ids the readers record, and the exporters."""

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cgroups.read import CgroupReader, cgroup_ids
from agent.config import Config
from agent.export.payload import build_payload
from agent.export.prometheus import render_report
from agent.model import Histogram, PodSample, ProbeSnapshot, ProbeState, ProbeStateKind
from agent.probes import runqlat
from agent.probes.spec import Context, PodView, cgroup_key
from agent.report import build_report
from agent.stats.histogram import SlotLayout
from tests.unit import report_fixture as F

ROOT = Path(__file__).resolve().parents[2]
NODE = SlotLayout(5, 30)
CG = runqlat.CGROUP_LAYOUT


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no host C compiler to build runqlat's cg_slot for comparison")
def test_c_row_slot_rule_matches_the_python_layout(tmp_path):
    """cg_slot() as written in bpf/runqlat.bpf.c, built with the defines the spec passes, and
    CGROUP_LAYOUT.slot_of agree on every tested value."""
    text = (ROOT / "bpf" / "runqlat.bpf.c").read_text()
    fn = re.search(r"static __always_inline u32 cg_slot\(u64 v\)\n\{.*?\n\}\n", text, re.S)
    assert fn, "cg_slot() not found in runqlat.bpf.c"
    defines = runqlat.SPEC.params(Config())
    src = tmp_path / "harness.c"
    src.write_text(
        "#include <stdio.h>\n#include <stdint.h>\n"
        "typedef uint32_t u32; typedef uint64_t u64;\n"
        "#define __always_inline inline __attribute__((always_inline))\n"
        "#define HIST_SUB_BITS 5\n#define HIST_MAX_SHIFT 30\n"
        '#include "hist.h"\n'
        "#define CG_SUB (1u << CG_SUB_BITS)\n#define CG_SLOTS ((CG_MAX_SHIFT + 2) * CG_SUB)\n"
        + fn.group(0) +
        "int main(void){ unsigned long long v; printf(\"%u\\n\", (unsigned)CG_SLOTS);\n"
        " while (scanf(\"%llu\", &v) == 1) printf(\"%u\\n\", cg_slot(v)); return 0; }\n")
    exe = tmp_path / "harness"
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-O2", f"-I{ROOT / 'bpf'}", *(f"-D{k}={v}" for k, v in defines.items()),
                    str(src), "-o", str(exe)], check=True)
    r = random.Random(11)
    values = (list(range(0, 64)) + [2**k + d for k in range(1, 63) for d in (-1, 0, 1)]
              + [r.randrange(0, 2**40) for _ in range(3000)] + [2**64 - 1])
    out = subprocess.run([str(exe)], input="\n".join(map(str, values)), text=True,
                         capture_output=True, check=True).stdout.split()
    assert int(out[0]) == CG.slots
    assert [int(x) for x in out[1:]] == [CG.slot_of(v) for v in values]


def test_row_words_and_cpu_state_are_the_c_layout(tmp_path):
    """A row is {sum, count by slot} padded to whole cache lines; the per-CPU elements are as
    many as the kernel's possible CPU ids; the CPU state is the C struct's size."""
    assert runqlat.CGROUP_ROW_WORDS == 80 and runqlat.CGROUP_ROW_WORDS * 8 % 64 == 0
    assert runqlat.CGROUP_ROW_WORDS >= 1 + CG.slots
    assert runqlat.CPU_STATE_BYTES == 64 + 16 * 64
    text = (ROOT / "bpf" / "runqlat.bpf.c").read_text()
    assert "#define CG_ROW_WORDS (((1 + CG_SLOTS) + 7) / 8 * 8)" in text
    for content, want in (("0-1\n", 2), ("0-3,8-11\n", 12), ("0\n", 1)):
        (tmp_path / "possible").write_text(content)
        assert runqlat.possible_cpus(str(tmp_path / "possible")) == want
    (tmp_path / "possible").write_text("garbage")
    with pytest.raises(ValueError, match="cannot parse"):
        runqlat.possible_cpus(str(tmp_path / "possible"))


def test_decode_keys_rows_by_cgroup_and_leaves_empty_rows_out():
    snap = runqlat.decode(NODE, {10: (4, 40)}, lost=3, taken_at=1.0,
                          cgroup_rows={77: (40, {3: 4, 5: 0}), 78: (0, {})}, misses=(3, 1))
    assert snap.hists[""].counts == {10: 4}
    h = snap.hists[cgroup_key(77)]
    assert h.layout == CG and h.counts == {3: 4} and h.total == 40
    assert cgroup_key(78) not in snap.hists
    assert snap.counts == {runqlat.NO_ROW: 3, runqlat.PID_MISMATCH: 1} and snap.lost == 3


def _win(rows, no_row=0, seconds=2.0):
    hists = {"": F.hist(NODE, [(1000, 10)])}
    for cgid, pairs in rows.items():
        counts = {}
        for v, n in pairs:
            counts[CG.slot_of(v)] = counts.get(CG.slot_of(v), 0) + n
        hists[cgroup_key(cgid)] = Histogram(CG, counts, sum(v * n for v, n in pairs))
    return ProbeSnapshot("runqlat", "ns", 10.0, hists=hists,
                         counts={runqlat.NO_ROW: no_row, runqlat.PID_MISMATCH: 0},
                         since=10.0 - seconds)


def _ctx(*pods):
    return Context(pods=pods, default_rtt_slo_ms=100.0, window_seconds=2.0, score=Config().score)


def test_pod_figures_sum_the_pods_containers_and_divide_by_the_snapshots_own_interval():
    win = _win({11: [(1_000_000, 90)], 12: [(20_000_000, 10)], 21: [(5_000, 4)]}, seconds=2.0)
    pods = (PodView("a", (), False, 100.0, (10, 11, 12)), PodView("b", (), False, 100.0, (20, 21)),
            PodView("idle", (), True, 100.0, (30, 31)), PodView("unknown", (), False, 100.0))
    f = runqlat.summarize(win, win, _ctx(*pods))
    a = f.pods["a"]
    assert a["runqlat_wait_per_second"] == pytest.approx((90 * 1e-3 + 10 * 20e-3) / 2.0)
    assert 0.6e-3 < a["runqlat_p50"] < 1.4e-3  # the 1 ms bucket, at the coarse resolution
    assert 13e-3 < a["runqlat_p99"] < 27e-3  # the 20 ms bucket
    assert f.pods["b"]["runqlat_wait_per_second"] == pytest.approx(4 * 5e-6 / 2.0)
    # no samples in its cgroups while every cgroup had a row: it did not wait
    assert f.pods["idle"] == {"runqlat_p50": None, "runqlat_p99": None,
                              "runqlat_wait_per_second": 0.0}
    assert "unknown" not in f.pods  # no cgroup known: nothing said
    assert f.node["runqlat_p50"] is not None and f.node["runqlat_hist_total"].layout == NODE


def test_a_pod_without_samples_is_unknown_once_some_cgroup_found_no_row():
    win = _win({11: [(1_000, 5)]}, no_row=7)
    f = runqlat.summarize(win, win, _ctx(PodView("a", (), False, 1.0, (11,)),
                                         PodView("b", (), False, 1.0, (40,))))
    assert f.pods["a"]["runqlat_wait_per_second"] == pytest.approx(5e-6 / 2.0)
    assert f.pods["b"]["runqlat_wait_per_second"] is None


def test_a_cgroup_id_claimed_by_two_pods_goes_to_neither():
    ctx = _ctx(PodView("a", (), False, 1.0, (1, 2)), PodView("b", (), False, 1.0, (2, 3)))
    assert ctx.cgroup_owner() == {1: "a", 3: "b"}


def test_cgroup_ids_are_the_directory_inodes_breadth_first_and_bounded(tmp_path):
    pod = tmp_path / "pod"
    for d in ("c1", "c2", "c1/nested"):
        (pod / d).mkdir(parents=True)
    (pod / "cpu.stat").write_text("usage_usec 1\nuser_usec 1\nsystem_usec 0\n")  # a file: no id
    ids = cgroup_ids(str(pod))
    want = [os.stat(pod / d).st_ino for d in ("", "c1", "c2", "c1/nested")]
    assert ids[0] == want[0] and sorted(ids) == sorted(want)
    assert len(cgroup_ids(str(pod), limit=2)) == 2
    assert len(cgroup_ids(str(pod), depth=1)) == 3
    assert cgroup_ids(str(tmp_path / "gone")) == ()


def test_the_reader_records_the_ids_with_each_reading(tmp_path):
    """Standalone: a top-level cgroup's reading carries its own and its children's inodes."""
    (tmp_path / "cgroup.procs").write_text("")
    lab = tmp_path / "lab"
    (lab / "worker").mkdir(parents=True)
    (lab / "cpu.stat").write_text("usage_usec 5\nuser_usec 4\nsystem_usec 1\n")
    r = CgroupReader(str(tmp_path), standalone_depth=1).read()
    assert set(r.others["lab"].cgroup_ids) == {os.stat(lab).st_ino, os.stat(lab / "worker").st_ino}


def _report(pods, runq_figs=True):
    win = F.windows()
    if runq_figs:
        win["runqlat"] = _win({11: [(2_000_000, 50)]})
    states = F.states()
    return build_report(Config(), node_name="n", sequence=1, timestamp="2026-12-01T00:00:00Z",
                        window_seconds=2.0, states=states, windows=win, cumulative=dict(win),
                        tcp_segments=None, resources=F.RESOURCES, pods=pods)


def test_pod_runqlat_reaches_metrics_as_gauges_and_the_payload_in_ms():
    pods = [PodSample("u1", "ns", "busy", "ns", cgroup_ids=(10, 11)),
            PodSample("u2", "ns", "quiet", "ns", cgroup_ids=(20,))]
    r = _report(pods)
    fams = {m.name: m for m in render_report(r)}
    wait = fams["ebpf_pod_runqlat_wait_seconds_per_second"]
    assert wait.type == "gauge"
    got = {s.labels["pod"]: s.value for s in wait.samples}
    assert got == {"busy": pytest.approx(50 * 2e-3 / 2.0), "quiet": 0.0}
    p99 = {s.labels["pod"]: s.value for s in fams["ebpf_pod_runqlat_p99_seconds"].samples}
    assert set(p99) == {"busy"}  # no samples: absent, not 0
    doc = build_payload(r)
    by = {p["pod"]: p for p in doc["pods"]}
    assert by["busy"]["runqlat_wait_ms_per_second"] == pytest.approx(50.0)
    assert by["quiet"]["runqlat_p50_ms"] is None and by["quiet"]["runqlat_wait_ms_per_second"] == 0.0
    assert 1.3 < by["busy"]["runqlat_p50_ms"] < 2.7


def test_pod_runqlat_is_null_while_the_probe_is_down():
    pods = [PodSample("u1", "ns", "busy", "ns", cgroup_ids=(10, 11))]
    win = F.windows()
    win["runqlat"] = _win({11: [(2_000_000, 50)]})
    states = dict(F.states())
    states["runqlat"] = ProbeState("runqlat", ProbeStateKind.DOWN, "attach failed")
    r = build_report(Config(), node_name="n", sequence=1, timestamp="2026-12-01T00:00:00Z",
                     window_seconds=2.0, states=states, windows=win, cumulative=dict(win),
                     tcp_segments=None, resources=F.RESOURCES, pods=pods)
    assert build_payload(r)["pods"][0]["runqlat_wait_ms_per_second"] is None
    assert "ebpf_pod_runqlat_wait_seconds_per_second" not in {m.name for m in render_report(r)}


def test_a_kernel_whose_possible_cpus_cannot_be_read_leaves_runqlat_down(tmp_path):
    from agent.probes.base import ProbeError

    probe = runqlat.RunqlatProbe(Config(sys_root=tmp_path), kernel=None)
    with pytest.raises(ProbeError, match="possible CPUs"):
        probe.expected_entries()
