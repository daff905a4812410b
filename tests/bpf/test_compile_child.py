"""Compile out of process: the agent holds descriptors a child handed over, never bcc/LLVM, and
a child that crashes, hangs or is killed mid-compile leaves its probe down and nothing loaded."""

from __future__ import annotations

import json
import os
import shutil
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
from agent.probes.runqlat import RunqlatProbe
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


def _batch(kernel, names=("skb_drop", "tcp_retrans", "runqlat")):
    for tp in ("skb:kfree_skb", "tcp:tcp_retransmit_skb", "sched:sched_switch"):
        require_tracepoint(kernel, tp)
    probes = registry.build(Config(probes=names), kernel)
    return probes, ProbeSet(probes, clock=time.monotonic, retry_first=0.0)


def test_start_compiles_every_probe_in_one_child_and_each_is_up_when_attached(kernel):
    """The start-up batch: one child for all (one interpreter, one LLVM start-up), each probe
    handed over and counting before the next one is compiled."""
    probes, ps = _batch(kernel)
    seen_up: dict[str, list[str]] = {}  # probe -> the probes already up when it came up
    orig = ps._up

    def up(slot):
        seen_up[slot.probe.name] = sorted(n for n, s in ps.states.items()
                                          if s.state is ProbeStateKind.UP)
        orig(slot)

    ps._up = up
    try:
        st = ps.start_all()
        assert all(s.state is ProbeStateKind.UP for s in st.values()), st
        pids = {p._loaded.child_pid for p in probes}
        assert len(pids) == 1, pids  # one compiling child for the three
        order = [p.name for p in probes]  # the registry's order
        assert seen_up == {n: sorted(order[:i]) for i, n in enumerate(order)}
        time.sleep(0.3)
        assert sum(h.count for h in probes[2].read().hists.values()) > 0  # runqlat counts
        # each probe has its own compile time and the child's peak when it was handed over
        assert all(float(p.detail["load_seconds"]) > 0 for p in probes)
        assert all(int(p.detail["compile_peak_rss_mib"]) > 0 for p in probes)
    finally:
        ps.close_all()


def test_child_killed_mid_batch_keeps_the_probes_handed_over_and_the_rest_come_back(kernel):
    """SIGKILL of the start-up child after it handed over the first probe: that one stays up,
    the one being compiled is down with the signal, the later one down as not compiled, nothing
    of the killed child's stays loaded, and the retries bring both back (one child each)."""
    probes, ps = _batch(kernel)
    first, second, third = (p.name for p in probes)  # the registry's order
    before = _all_prog_ids()
    killed = []

    def kill_after_first():
        deadline = time.monotonic() + 300  # emulated kernels: 20-50 s a compile
        while time.monotonic() < deadline:
            if ps.states[first].state is ProbeStateKind.UP:
                for c in _children_of(os.getpid()):
                    try:
                        cmd = Path(f"/proc/{c}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if b"compile_child.py" in cmd:
                        os.kill(c, signal.SIGKILL)
                        killed.append(c)
                        return
            time.sleep(0.002)

    t = threading.Thread(target=kill_after_first)
    t.start()
    try:
        ps.start_all()
        t.join()
        assert killed, "the compiling child was never seen after the first hand-over"
        st = ps.states
        assert st[first].state is ProbeStateKind.UP, st
        assert st[second].state is ProbeStateKind.DOWN, st
        assert "killed by SIGKILL" in st[second].reason, st
        assert st[third].state is ProbeStateKind.DOWN, st
        assert st[third].reason.startswith(
            f"start failed: not compiled: the compiling child stopped at {second}"), st
        time.sleep(0.5)
        leaked = {i for i in _all_prog_ids() - before if i not in _held_prog_ids()}
        assert leaked == set()
        ps.retry_due()
        assert all(s.state is ProbeStateKind.UP for s in ps.states.values()), ps.states
        assert probes[1]._loaded.child_pid != probes[2]._loaded.child_pid  # a child each
    finally:
        ps.close_all()


def _dump(name: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "bpf" / "compile_dump.py"), name,
                          mode], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", registry.names())
def test_probe_header_tree_compiles_the_same_instructions_as_the_kernel_tree(kernel, name):
    """bpf/probe-headers with /proc/kallsyms skipped (the child's fast path) against the kernel
    header tree as root (BCC as it comes): every program of the probe is the same, instruction
    for instruction (map descriptors aside), on this kernel's tracepoint formats."""
    for tp in registry.PROBES[name][0].tracepoints:
        require_tracepoint(kernel, tp)
    if kernel.headers.kind == "none":
        pytest.skip(f"no kernel header tree on this machine to compare with ({kernel.headers.path})")
    fast, plain = _dump(name, "probe"), _dump(name, "kernel")
    assert fast["tree"] == "probe-headers" and plain["tree"].startswith("kernel")
    assert fast["progs"] and fast["progs"] == plain["progs"]
    if os.geteuid() == 0:
        assert fast["euid"] == 65534 and fast["skip_kallsyms"] == "done", fast


def test_a_probe_the_own_tree_cannot_compile_falls_back_to_the_kernel_tree(kernel, tmp_path,
                                                                            caplog):
    """A format type the minimal tree lacks (here: pid_t removed from it) is a compile error
    there; the child compiles with the kernel's tree instead and says so."""
    require_tracepoint(kernel, "sched:sched_switch")
    if kernel.headers.kind == "none":
        pytest.skip(f"no kernel header tree to fall back to ({kernel.headers.path})")
    bpf = tmp_path / "bpf"
    shutil.copytree(ROOT / "bpf", bpf)
    types = bpf / "probe-headers" / "include" / "linux" / "types.h"
    types.write_text(types.read_text().replace("typedef int pid_t;", ""))
    p = RunqlatProbe(Config(bpf_dir=bpf), kernel)
    try:
        p.start()
        assert p.started and p.detail["header_tree"] == f"kernel ({kernel.headers.kind})"
        assert "pid_t" in p._loaded.diag  # the first tree's error is kept in the compiler output
        assert "the probe header tree could not compile it" in caplog.text  # and warned about
    finally:
        p.close()


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
