"""The cgroup reader on this machine's real cgroup v2 hierarchy: two child cgroups made by the
test (one busy loop, one idle), the reported CPU cores checked against the busy process's own CPU
time, against cpu.stat read directly, and against elapsed time.

Needs root and a cgroup v2 mount (found from /proc/self/mounts, not hard-coded). Enables no
controller: cpu.stat's usage_usec is written by the cgroup core even without the cpu controller
(which v1 holds on this machine), so nothing else is needed.
"""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from agent.cgroups import CgroupReader, cgroup_window, read_cgroup2_root

BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


def _usage(path: Path) -> int:
    for line in (path / "cpu.stat").read_text().splitlines():
        k, v = line.split()
        if k == "usage_usec":
            return int(v)
    raise AssertionError("no usage_usec")


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    root = read_cgroup2_root(("/sys/fs/cgroup",))
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted at or below /sys/fs/cgroup")
    top = Path(root) / f"eea-e2e-{uuid.uuid4().hex[:8]}"
    procs = []
    try:
        top.mkdir()
        (top / "busy").mkdir()
        (top / "idle").mkdir()
        if not (top / "busy" / "cpu.stat").exists():
            pytest.skip(f"cpu.stat absent in a child cgroup of {root} (kernel older than 4.20 without the cpu controller)")
        yield root, top, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for d in (top / "busy", top / "idle", top):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the killed process is leaving the cgroup
                    time.sleep(0.02)
        assert not top.exists(), f"could not remove {top}"


def test_busy_loop_cpu_matches_witnesses(lab):
    root, top, procs = lab
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    procs.append(busy)
    (top / "busy" / "cgroup.procs").write_text(str(busy.pid))
    witness = psutil.Process(busy.pid)
    time.sleep(0.3)

    reader = CgroupReader(root, containers=False, standalone_depth=2)
    rel_busy = f"{top.name}/busy"
    rel_idle = f"{top.name}/idle"

    r1 = reader.read()
    w1 = witness.cpu_times()
    u1, t1 = _usage(top / "busy"), time.monotonic()
    time.sleep(2.0)
    r2 = reader.read()
    w2 = witness.cpu_times()
    u2, t2 = _usage(top / "busy"), time.monotonic()

    assert r2.counts.garbled == 0 and r2.counts.errors == 0
    assert rel_busy in r1.others and rel_busy in r2.others and rel_idle in r2.others
    win = cgroup_window(r1.others[rel_busy], r2.others[rel_busy])
    idle = cgroup_window(r1.others[rel_idle], r2.others[rel_idle])

    process_cores = ((w2.user + w2.system) - (w1.user + w1.system)) / (t2 - t1)
    direct_cores = (u2 - u1) / 1e6 / (t2 - t1)
    print(f"reported {win.cpu_cores:.4f} cores, process {process_cores:.4f}, cpu.stat {direct_cores:.4f}, "
          f"window {win.elapsed_seconds:.3f}s")
    assert win.cpu_cores == pytest.approx(direct_cores, rel=0.05)
    assert win.cpu_cores == pytest.approx(process_cores, rel=0.05)
    assert 0 < win.cpu_cores <= 1.05  # one busy thread: at most one core (how much it got is the witnesses')
    assert idle.cpu_cores == 0.0
    # this hierarchy has no memory controller here: not available, never zero
    s = r2.others[rel_busy]
    if not (top / "busy" / "memory.current").exists():
        assert s.memory_current is None and s.working_set_bytes is None


def test_cgroup_removed_between_cycles_is_skipped(lab):
    root, top, _ = lab
    reader = CgroupReader(root, containers=False, standalone_depth=2)
    assert f"{top.name}/idle" in reader.read().others
    (top / "idle").rmdir()
    r = reader.read()
    assert f"{top.name}/idle" not in r.others and r.counts.errors == 0
