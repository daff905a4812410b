"""Interrupted -- SIGTERM (a CI job cancelled, make killed), SIGINT (^C) or a timeout -- a test run
still tears down its labs, cgroups and child processes, and the kernel matrix its guests."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.podcgroup import remove_tree

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("makes network namespaces and cgroups: needs root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]


def _as_from_a_terminal() -> None:
    # a job started in the background by a non-interactive shell (nohup, CI runners) inherits
    # SIGINT ignored, and neither Python nor bash can then catch it; a terminal's ^C is not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_holding(proc: subprocess.Popen, seconds: float = 60) -> dict:
    """What a child running a lab printed on its ``HOLDING {json}`` line, once it holds it;
    every pid it names must be alive."""
    held, lines = None, []
    deadline = time.monotonic() + seconds
    while held is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "HOLDING " in line:
            held = json.loads(line.split("HOLDING ", 1)[1])
    assert held, "".join(lines)
    assert all(_alive(p) for p in held["pids"])
    return held


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
                            text=True, preexec_fn=_as_from_a_terminal)
    held = None
    try:
        held = _wait_holding(proc)
        if how != "timeout":
            proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate(timeout=60)
        print(out[-1500:])
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for ns in held["netns"]:
            assert ns not in netns, f"{how}: network namespace {ns} left behind"
        assert not Path(held["cgroup"]).exists(), f"{how}: cgroup {held['cgroup']} left behind"
        assert not Path(held["pod_cgroup"]).exists(), f"{how}: pod cgroup tree {held['pod_cgroup']} left behind"
        left = [p for p in held["pids"] if _alive(p)]
        assert not left, f"{how}: processes {left} left running"
    finally:  # whatever failed, this test itself leaves nothing behind either
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if held:
            for p in held["pids"]:
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
            for ns in held["netns"]:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            try:
                remove_tree(Path(held["pod_cgroup"]))
            except RuntimeError as e:
                print(e)
            cg = Path(held["cgroup"])
            for _ in range(50):
                if not cg.exists():
                    break
                try:
                    for p in (cg / "cgroup.procs").read_text().split():
                        os.kill(int(p), signal.SIGKILL)
                    cg.rmdir()
                except OSError:
                    time.sleep(0.1)


FAKE_VNG = """#!/bin/bash
# a guest that ignores SIGTERM, as a QEMU under its own timeout effectively did
trap '' TERM
sleep 300 &
echo $! > "$KMATRIX_TEST_DIR/guest.pid"
wait
"""



def _own_group_from_a_terminal() -> None:
    os.setpgrp()
    _as_from_a_terminal()


@pytest.mark.parametrize("sig,whole_job", [("SIGTERM", False), ("SIGINT", False),
                                           ("SIGTERM", True)])
def test_interrupted_matrix_stops_its_guests(tmp_path, sig, whole_job):
    """run.sh interrupted while a guest runs: the guest (which ignores SIGTERM) is gone within
    seconds, not left running under its own timeout (KMATRIX_GUEST_TIMEOUT). Also when the
    signal goes to the whole job (``kill -- -PGID``), so the boot's own subshell dies with the
    script: the guest sits in the process group timeout makes, which that reaches only through
    the pid run.sh recorded."""
    if shutil.which("pgrep") is None:
        pytest.skip("run.sh needs pgrep (procps)")
    cache = tmp_path / "cache"
    suite = cache / "bookworm"
    (suite / "root" / "boot").mkdir(parents=True)
    (suite / "root" / "boot" / "vmlinuz-6.1.0-test-amd64").write_text("")
    (suite / "debs.list").write_text("/nonexistent.deb\n")  # "cached": no download, no unpack
    shutil.copy(suite / "debs.list", suite / "root.stamp")
    vng = tmp_path / "vng"
    vng.write_text(FAKE_VNG)
    vng.chmod(0o755)
    env = dict(os.environ, KMATRIX_CACHE=str(cache), KMATRIX_VNG=str(vng),
               KMATRIX_TEST_DIR=str(tmp_path), DEBIAN_MIRROR="http://127.0.0.1:9/debian")
    proc = subprocess.Popen(["bash", str(REPO / "scripts/kernel-matrix/run.sh"), "bookworm"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_own_group_from_a_terminal if whole_job else _as_from_a_terminal)
    pidfile = tmp_path / "guest.pid"
    guest, out = None, ""
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        guest = int(pidfile.read_text())
        assert _alive(guest)
        t0 = time.monotonic()
        if whole_job:
            os.killpg(proc.pid, getattr(signal, sig))
        else:
            proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        if guest is not None and _alive(guest):
            os.kill(guest, signal.SIGKILL)
            pytest.fail(f"{sig}: the guest (pid {guest}) was left running:\n{out}")
    assert proc.returncode != 0, out
    assert "interrupted" in out and "stopping" in out, out
    assert took < 15, (took, out)
