"""Compile out of process: the agent holds descriptors a child handed over, never bcc/LLVM, and
a child that crashes, hangs or is killed mid-compile leaves its probe down and nothing loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.model import ProbeStateKind
from agent.probes import registry
from agent.probes.base import ProbeError
from agent.probes.bpfmaps import prog_info, prog_loaded
from agent.probes.skb_drop import SkbDropProbe
from agent.sampler import ProbeSet
from tests.bpf.conftest import require_tracepoint

ROOT = Path(__file__).resolve().parents[2]

# a separate interpreter: the test process itself has imported bcc for other tests
LEAN = r"""
import json, os, sys, time
from agent.config import Config
from agent.probes import registry
c = Config()
k = registry.detect_kernel(c)
probes = registry.build(c, k)
for p in probes:
    p.start()
time.sleep(0.5)
snaps = {p.name: p.read() for p in probes}
maps = open("/proc/self/maps").read()
fds = [fd for p in probes for fd in p.descriptors()]
print(json.dumps({
    "up": [p.name for p in probes if p.started],
    "bcc_module": "bcc" in sys.modules,
    "mapped": sorted({l.split()[-1] for l in maps.splitlines()
                      if any(s in l for s in ("libLLVM", "libclang", "libbcc"))}),
    "inheritable": [fd for fd in fds if os.get_inheritable(fd)],
    "runqlat_samples": sum(h.count for h in snaps["runqlat"].hists.values()),
}), flush=True)
"""


def _run_lean() -> dict:
    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)  # emulated kernels: 20-50 s a compile
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_agent_with_all_probes_up_never_maps_bcc_or_llvm():
    r = _run_lean()
    assert r["up"] == list(registry.names())
    assert r["bcc_module"] is False
    assert r["mapped"] == []
    assert r["inheritable"] == []  # close-on-exec: a subprocess never keeps programs attached
    assert r["runqlat_samples"] > 0  # the programs count while the agent holds the events


def _probe(kernel, **kw) -> SkbDropProbe:
    require_tracepoint(kernel, "skb:kfree_skb")
    return SkbDropProbe(Config(**kw), kernel)


def test_child_that_crashes_leaves_probe_down_with_the_reason(kernel):
    p = _probe(kernel)
    p.child_argv = [sys.executable, "-c",
                    "import os, signal, sys; sys.stderr.write('compiler blew up\\n'); "
                    "sys.stderr.flush(); os.kill(os.getpid(), signal.SIGSEGV)"]
    with pytest.raises(ProbeError, match=r"killed by SIGSEGV before handing over: compiler blew up"):
        p.start()
    assert not p.started and p.maps is None


def test_child_that_hangs_is_killed_at_the_timeout(kernel):
    p = _probe(kernel, compile_timeout=1.5)
    p.child_argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    t0 = time.monotonic()
    with pytest.raises(ProbeError, match=r"compile timed out after 1.5s \(child killed"):
        p.start()
    assert time.monotonic() - t0 < 30
    assert not p.started


def test_compiler_messages_reach_the_down_reason(kernel, tmp_path):
    require_tracepoint(kernel, "skb:kfree_skb")
    (tmp_path / "skb_drop.bpf.c").write_text(
        '#include "common.h"\nTRACEPOINT_PROBE(skb, kfree_skb) { return undeclared_thing; }\n')
    for h in (ROOT / "bpf").iterdir():
        if h.suffix == ".h":
            (tmp_path / h.name).write_text(h.read_text())
    p = SkbDropProbe(Config(bpf_dir=tmp_path), kernel)
    with pytest.raises(ProbeError, match="undeclared_thing"):
        p.start()
    assert not p.started


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                st = (d / "stat").read_text()
            except OSError:
                continue
            if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _held_prog_ids() -> set[int]:
    """Program ids some live process holds a descriptor of."""
    ids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fi in (d / "fdinfo").iterdir():
                try:
                    for line in fi.read_text().splitlines():
                        if line.startswith("prog_id:"):
                            ids.add(int(line.split()[1]))
                except OSError:
                    pass
        except OSError:
            pass
    return ids


def _all_prog_ids() -> set[int]:
    import ctypes
    import struct

    from agent.probes.bpfmaps import BpfError, bpf

    ids, cur = set(), 0
    while True:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("=I", attr, 0, cur)
        try:
            bpf(11, attr, "BPF_PROG_GET_NEXT_ID")  # BPF_PROG_GET_NEXT_ID
        except BpfError:
            return ids
        cur = struct.unpack_from("=I", attr, 4)[0]
        ids.add(cur)


def test_child_killed_mid_compile_leaves_nothing_loaded_and_the_retry_brings_it_back(kernel):
    p = _probe(kernel)
    ps = ProbeSet([p], clock=time.monotonic, retry_first=0.0)
    before = _all_prog_ids()
    killed = []

    def kill_when_compiling():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for c in _children_of(os.getpid()):
                try:
                    maps = Path(f"/proc/{c}/maps").read_text()
                    cmd = Path(f"/proc/{c}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"compile_child.py" in cmd and "libbcc" in maps:  # BCC loaded: compiling
                    os.kill(c, signal.SIGKILL)
                    killed.append(c)
                    return
            time.sleep(0.005)

    t = threading.Thread(target=kill_when_compiling)
    t.start()
    ps.start_all()
    t.join()
    assert killed, "the compiling child was never seen"
    st = ps.states["skb_drop"]
    assert st.state is ProbeStateKind.DOWN and "killed by SIGKILL" in st.reason, st
    time.sleep(0.5)
    leaked = {i for i in _all_prog_ids() - before if i not in _held_prog_ids()}
    assert leaked == set()  # nothing of the killed child's stays loaded
    ps.retry_due()
    assert ps.states["skb_drop"].state is ProbeStateKind.UP, ps.states
    try:
        snap = p.read()
        assert snap.probe == "skb_drop"
        ids = [prog_info(fd).id for fd in p.programs().values()]
        assert ids and all(prog_loaded(i) for i in ids)
    finally:
        ps.close_all()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(prog_loaded(i) for i in ids):
        time.sleep(0.05)
    assert not any(prog_loaded(i) for i in ids)  # closing the probe frees its programs


@pytest.fixture(scope="module")
def generic_tree(tmp_path_factory):
    dest = tmp_path_factory.mktemp("generic-headers") / "tree"
    out = subprocess.run([str(ROOT / "scripts" / "generic-headers.sh"), str(dest)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"no Debian header packages to build a generic tree from: {out.stderr.strip()}")
    return dest


def test_probes_up_without_host_headers_from_the_generic_tree(generic_tree, tmp_path):
    """No /lib/modules/<release>/build at all (an empty modules root): the kernel detection
    picks the generic tree, the child compiles against it, the probes come up (two here, to
    stay short on emulated kernels; the image test brings up all four this way)."""
    config = Config(modules_root=tmp_path / "no-modules", image_headers=str(generic_tree),
                    probes=("skb_drop", "runqlat"))
    kernel = registry.detect_kernel(config)
    assert kernel.headers.kind == "image" and kernel.headers.bcc_source == str(generic_tree)
    assert "the host has none" in kernel.headers.describe()
    probes = registry.build(config, kernel)
    try:
        for p in probes:
            p.start()
        assert all(p.started for p in probes)
        time.sleep(0.3)
        assert sum(h.count for h in probes[-1].read().hists.values()) > 0  # runqlat counts
    finally:
        for p in probes:
            p.close()
    # and without either tree the probes are down with the reason, not crashed
    bare = Config(modules_root=tmp_path / "no-modules", image_headers=str(tmp_path / "none"))
    k2 = registry.detect_kernel(bare)
    assert k2.headers.kind == "none"


def test_compiling_child_dies_with_the_agent():
    """SIGKILL of the agent while a child compiles: the child goes too (PR_SET_PDEATHSIG), so
    nothing finishes loading behind a dead agent."""
    agent = subprocess.Popen([sys.executable, "-c", (
        "from agent.config import Config\n"
        "from agent.probes import registry\n"
        "c = Config(probes=('skb_drop',))\n"
        "k = registry.detect_kernel(c)\n"
        "registry.build(c, k)[0].start()\n"
        "import time; time.sleep(600)\n")], cwd=ROOT)
    child = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child is None:
            for c in _children_of(agent.pid):
                try:
                    if "libbcc" in Path(f"/proc/{c}/maps").read_text():
                        child = c
                except OSError:
                    pass
            time.sleep(0.01)
        assert child is not None, "the compiling child was never seen"
        agent.kill()
        agent.wait(10)
        deadline = time.monotonic() + 2  # far less than the rest of a compile takes
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            try:  # a zombie until reaped by init: gone once its state is no longer running
                if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.05)
        alive = Path(f"/proc/{child}/stat").exists() and \
            Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        assert not alive, "the compiling child outlived the agent"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
