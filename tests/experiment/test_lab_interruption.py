"""A relay lab interrupted by SIGTERM or SIGINT (as conftest maps them: KeyboardInterrupt)
leaves no namespace, TUN device or process behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_interruption import _alive, _as_from_a_terminal, _wait_holding

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("network namespaces and TUN devices need root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_interrupted_lab_leaves_nothing_behind(how):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider",
         str(REPO / "tests/experiment/interruptible_lab.py")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_as_from_a_terminal)
    held = None
    try:
        held = _wait_holding(proc)
        proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate(timeout=60)
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        for ns in held["netns"]:
            assert ns not in netns, f"{how}: namespace {ns} left behind\n{out[-1500:]}"
        for dev in held["devs"]:
            assert dev not in links, f"{how}: device {dev} left behind"
        left = [p for p in held["pids"] if _alive(p)]
        assert not left, f"{how}: processes {left} left running\n{out[-1500:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if held:
            for p in held["pids"]:
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
            for ns in held["netns"]:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
