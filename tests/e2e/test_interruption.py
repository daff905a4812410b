"""A test run that is interrupted -- SIGTERM (a CI job cancelled, make killed), SIGINT (^C) or
its own timeout -- still tears down its labs, cgroups and child processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("makes network namespaces and cgroups: needs root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "timeout"])
def test_interrupted_run_leaves_nothing_behind(how):
    args = [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider",
            str(REPO / "tests/e2e/interruptible.py")]
    if how == "timeout":
        args += ["-o", "timeout=8"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    held = None
    try:
        deadline = time.monotonic() + 60
        lines = []
        while held is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "HOLDING " in line:
                held = json.loads(line.split("HOLDING ", 1)[1])
        assert held, "".join(lines)
        assert all(_alive(p) for p in held["pids"])
        if how != "timeout":
            proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(out[-1500:])
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in held["netns"]:
        assert ns not in netns, f"{how}: network namespace {ns} left behind"
    assert not Path(held["cgroup"]).exists(), f"{how}: cgroup {held['cgroup']} left behind"
    left = [p for p in held["pids"] if _alive(p)]
    assert not left, f"{how}: processes {left} left running"
