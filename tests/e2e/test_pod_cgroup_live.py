"""Per-pod memory, CPU limit and throttling read by the agent from a live cgroup v2 pod.

A kubelet-shaped pod cgroup (tests/e2e/podcgroup.py) gets ``cpu.max`` "50000 100000" and
``memory.max`` 128 MiB; a process in its container cgroup allocates and touches 64 MiB, then
spins. The agent's own path -- ``ClusterPods`` (its CgroupReader) feeding its ``Sampler``, the
report rendered by ``build_payload`` as /report serves it -- must agree with the pod's files read
by an independent witness just before and just after each of the agent's two readings: the
figure lies within the bounds those bracketing readings allow. The working set must be the
allocation within 10 %.

Needs the cpu and memory controllers in cgroup v2. This host binds them to cgroup v1 (DESIGN.md
§5), so here the test skips with that reason; the kernel matrix runs it in each guest, where
virtme-ng mounts a pure cgroup2 and guest-run.sh lets the test enable both controllers at its
root for its own run (KMATRIX_ROOT_CONTROLLERS=1; the lab disables them again).
With ``KMATRIX_OUT`` set (guest-run.sh does), the figures go to ``$KMATRIX_OUT/cgroup-live.json``
for the table in docs/platforms.md.
"""

import json
import os
import time
from pathlib import Path

import pytest

from agent.cgroups import read_cgroup2_root
from agent.config import Config
from agent.export.payload import build_payload
from agent.pods import ClusterPods
from agent.sampler import ProbeSet, Sampler
from tests.e2e.podcgroup import (PodCgroupLab, rate_bounds, ratio_bounds, read_files,
                                 why_unavailable)

ALLOCATION = 64 << 20
MEMORY_MAX = 128 << 20
CPU_MAX = "50000 100000"  # 0.5 core
WINDOW = 4.0  # seconds between the agent's two readings
RESULTS_FILE = "cgroup-live.json"


def _root() -> str:
    if os.geteuid() != 0:
        pytest.skip("creates cgroups: needs root")
    root = read_cgroup2_root(("/sys/fs/cgroup",))
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted at or below /sys/fs/cgroup")
    return root


def _read(path: str):
    try:
        return Path(path).read_text()
    except OSError:
        return None


# set by scripts/kernel-matrix/guest-run.sh in a guest only: its cgroup2 is throwaway, so the lab
# may enable cpu and memory at its root for this test (and disables them again afterwards)
ENABLE_ROOT = os.environ.get("KMATRIX_ROOT_CONTROLLERS") == "1"


def _why(root: str, may_enable_root: bool = ENABLE_ROOT):
    return why_unavailable(root, _read(f"{root}/cgroup.controllers") or "",
                           _read(f"{root}/cgroup.subtree_control") or "", _read("/proc/cgroups"),
                           may_enable_root=may_enable_root)


@pytest.fixture
def live_root() -> str:
    root = _root()
    why = _why(root)
    if why:
        pytest.skip(why)
    return root


def _within(value, bounds, slack=1e-6):
    lo, hi = bounds
    return lo - slack <= value <= hi + slack


def _clamp(bounds):
    return (min(1.0, bounds[0]), min(1.0, bounds[1]))


def test_agent_pod_limits_match_a_live_cgroup(live_root):
    with PodCgroupLab(live_root, controllers=True, enable_root=ENABLE_ROOT, cpu_max=CPU_MAX,
                      memory_max=MEMORY_MAX) as lab:
        # the limits as the kernel holds them
        assert (lab.pod / "cpu.max").read_text().split() == CPU_MAX.split()
        assert int((lab.pod / "memory.max").read_text()) == MEMORY_MAX
        hog = lab.spawn_hog(ALLOCATION)
        own = Path(f"/proc/{hog.pid}/cgroup").read_text()
        assert str(lab.container)[len(live_root):] in own, own
        before_alloc = read_files(lab.pod)
        hog.stdin.write("go\n")
        hog.stdin.flush()
        lab.expect(hog, "TOUCHED")
        time.sleep(1.0)  # spinning against the quota from here on

        config = Config(cgroup_root=str(lab.top), kubernetes="off")
        pods = ClusterPods.from_config(config)
        sampler = Sampler(config, ProbeSet([]), pods)
        sampler.start()  # node baselines (/proc); the pods' window starts with pods.start()
        b1 = read_files(lab.pod)
        pods.start()  # the agent's first reading of the pod cgroups
        a1 = read_files(lab.pod)
        time.sleep(WINDOW)
        b2 = read_files(lab.pod)
        report = sampler.tick()  # the agent's second reading and its report
        a2 = read_files(lab.pod)
        payload = build_payload(report)

        entry = [p for p in payload["pods"] if p["uid"] == lab.uid]
        assert len(entry) == 1, payload["pods"]
        p = entry[0]
        bounds = {
            "cpu_used": rate_bounds(b1, a1, b2, a2, "usage_usec"),
            "cpu_throttled_ratio": ratio_bounds(b1, a1, b2, a2, "nr_throttled", "nr_periods"),
            "cpu_pressure": rate_bounds(b1, a1, b2, a2, "cpu_some_usec"),
            "memory_pressure": rate_bounds(b1, a1, b2, a2, "memory_some_usec"),
        }
        for k in ("cpu_pressure", "memory_pressure"):
            bounds[k] = _clamp(bounds[k]) if bounds[k] is not None else None
        ws = [b2.values["working_set"], a2.values["working_set"]]
        ws = sorted(ws) if None not in ws else [None, None]
        doc = {
            "release": os.uname().release,
            "allocation_bytes": ALLOCATION,
            "working_set_before_allocation": before_alloc.values["working_set"],
            "window_seconds": payload["window_seconds"],
            # how long the witness's brackets around the agent's two readings took
            "bracket_seconds": [round(a1.t_after - b1.t_before, 3), round(a2.t_after - b2.t_before, 3)],
            "agent": {k: p[k] for k in ("cpu_used", "cpu_limit", "cpu_throttled_ratio",
                                        "cpu_pressure", "memory_pressure", "memory_used",
                                        "memory_limit")},
            "witness": {**bounds, "memory_used": ws, "memory_limit": a2.values["memory_max"],
                        "cpu_limit": a2.values["cpu_max_cores"]},
        }
        print(json.dumps(doc, sort_keys=True))
        if os.environ.get("KMATRIX_OUT"):
            Path(os.environ["KMATRIX_OUT"], RESULTS_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

        # limits: the agent's report against the files, and against what the test wrote
        assert p["memory_limit"] == a2.values["memory_max"] == MEMORY_MAX
        assert p["cpu_limit"] == a2.values["cpu_max_cores"] == 0.5
        # CPU over the same window: within what the bracketing readings allow
        assert bounds["cpu_used"] is not None, "cpu.stat has no usage_usec"
        assert _within(p["cpu_used"], bounds["cpu_used"]), (p["cpu_used"], bounds["cpu_used"])
        assert p["cpu_used"] > 0
        # the limit is live: a spinning process got at most its quota, plus the two periods the
        # window's edges cut into (0.05 s each)
        assert p["cpu_used"] <= 0.5 + 0.1 / (b2.t_after - a1.t_before) + 1e-6, p["cpu_used"]
        # throttling: the cpu controller's counters, the same window
        assert bounds["cpu_throttled_ratio"] is not None, "cpu.stat has no nr_periods/nr_throttled"
        assert _within(p["cpu_throttled_ratio"], bounds["cpu_throttled_ratio"]), (
            p["cpu_throttled_ratio"], bounds["cpu_throttled_ratio"])
        assert p["cpu_throttled_ratio"] > 0, "a process spinning against a 0.5-core quota was never throttled"
        # pressure: where the kernel has PSI files the agent matches them; where not, it says
        # "not available", never 0
        for k in ("cpu_pressure", "memory_pressure"):
            if bounds[k] is None:
                assert p[k] is None, (k, p[k])
            else:
                assert _within(p[k], bounds[k]), (k, p[k], bounds[k])
        # memory: the working set as the files give it, and as the process allocated it
        assert ws[0] is not None, "memory.current / memory.stat absent"
        assert ws[0] * 0.99 <= p["memory_used"] <= ws[1] * 1.01, (p["memory_used"], ws)
        assert abs(p["memory_used"] - ALLOCATION) <= 0.10 * ALLOCATION, (
            f"working set {p['memory_used'] / 2**20:.1f} MiB vs {ALLOCATION / 2**20:.0f} MiB allocated "
            f"(before the allocation: {before_alloc.values['working_set']})")


def test_lab_is_removed_when_the_test_fails():
    """What the live test makes -- the tree, the process -- is gone after an exception inside it
    (no controllers needed: this runs on this host too)."""
    root = _root()
    with pytest.raises(RuntimeError, match="fails on purpose"):
        with PodCgroupLab(root, controllers=False) as lab:
            hog = lab.spawn_hog(1 << 20)
            top = lab.top
            assert str(lab.container)[len(root):] in Path(f"/proc/{hog.pid}/cgroup").read_text()
            raise RuntimeError("fails on purpose")
    assert not top.exists(), f"{top} left behind"
    assert hog.poll() is not None and not Path(f"/proc/{hog.pid}").exists()


def test_lab_without_the_controllers_says_why_and_leaves_nothing():
    root = _root()
    why = _why(root, may_enable_root=False)
    if why is None:
        pytest.skip("the cpu and memory controllers are available here (the live test runs)")
    lab = PodCgroupLab(root, controllers=True)
    with pytest.raises(RuntimeError, match=r"offers .* not cpu, memory"):
        with lab:
            pass
    assert not lab.top.exists()
    print(f"skip reason here: {why}")
