"""`measure` on a real cgroup v2 directory with a known busy loop (issue 23), against an
independent witness over the same windows: the busy process's own run time
(/proc/<pid>/schedstat, the scheduler's sum_exec_runtime), read right after each of measure's
reads. Memory is live only where the v2 hierarchy has a memory controller (not on this host:
there it must be reported as not available, never 0)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cgroups.read import CgroupReader, read_cgroup2_root
from agent.tools import measure


def _root() -> str | None:
    if os.geteuid() != 0:
        return None
    return read_cgroup2_root()


def _run_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


@pytest.fixture
def busy_cgroup():
    root = _root()
    if root is None:
        pytest.skip("needs root and a cgroup v2 hierarchy")
    name = f"optools-measure-{os.getpid()}"
    top = Path(root) / name
    busy_dir, idle_dir = top / "busy", top / "idle"
    procs = []
    try:
        for d in (top, busy_dir, idle_dir):
            d.mkdir()
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        idle = subprocess.Popen(["sleep", "60"])
        procs += [busy, idle]
        (busy_dir / "cgroup.procs").write_text(str(busy.pid))
        (idle_dir / "cgroup.procs").write_text(str(idle.pid))
        yield root, name, busy, idle, idle_dir
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for d in (busy_dir, idle_dir, top):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def test_measure_a_busy_loop_against_its_schedstat(busy_cgroup):
    root, name, busy, idle, idle_dir = busy_cgroup
    target = measure.Target("cgroup", measure.resolve_cgroup(root, name))
    reader = CgroupReader(root)
    witness: list[tuple[float, int]] = []

    def read(m):
        return reader.read_one(m.path, None)

    def on_read(i):
        # the witness right after each round of reads: the same window to within microseconds
        witness.append((time.monotonic(), _run_ns(busy.pid)))
        if i == 3:  # the idle container ends half-way: its cgroup goes
            idle.kill()
            idle.wait()
            for _ in range(50):
                try:
                    idle_dir.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)

    series = measure.sample(read, lambda: measure.members(root, target), 6, 0.5, on_read=on_read)
    doc = measure.build_doc(target, root, series, n=6, interval=0.5, trim=0.1, started=time.time(),
                            elapsed=3.0, api=None)
    busy_cpu = series["busy"].cpu
    assert len(busy_cpu) == 6 and None not in busy_cpu
    for k, agent_cores in enumerate(busy_cpu):
        (t0, n0), (t1, n1) = witness[k], witness[k + 1]
        witness_cores = (n1 - n0) / 1e9 / (t1 - t0)
        assert agent_cores == pytest.approx(witness_cores, abs=0.05), (k, busy_cpu, witness)
    assert max(busy_cpu) > 0.2  # it did run: the comparison above is not 0 == 0
    total = sum((n1 - n0) for (_, n0), (_, n1) in zip(witness, witness[1:])) / 1e9 / (witness[-1][0] - witness[0][0])
    assert doc["total"]["cpu_cores"]["trimmed_mean"] == pytest.approx(total, abs=0.08)
    states = {c["key"]: c["state"] for c in doc["containers"]}
    assert states == {"busy": "running", "idle": "gone"}
    idle_cpu = series["idle"].cpu
    assert idle_cpu[:3] == pytest.approx([0.0] * 3, abs=0.01) and idle_cpu[-1] is None
    has_memory = (Path(root) / name / "memory.current").exists()
    if has_memory:
        assert doc["total"]["memory_bytes"]["min"] > 0
    else:
        assert doc["total"]["memory_bytes"] is None  # not available here, never 0
