"""A kubelet-shaped pod cgroup made for a test, and the witness that reads its files.

    <root>/eea-live-<hex>/kubepods.slice/kubepods-burstable.slice/
        kubepods-burstable-pod<uid_>.slice/cri-containerd-<64 hex>.scope

The top directory is made by the lab and is the agent's cgroup root (``cgroup_root``): the agent
sees only this tree, never the node's own pods, and nothing outside the top directory is
written (but for ``enable_root`` below). With ``controllers`` on, ``+cpu +memory`` is enabled in every directory of the tree and
the pod gets its limits in ``cpu.max`` / ``memory.max``. The root's ``cgroup.subtree_control``
must already have both, except with ``enable_root`` (a kernel-matrix guest's throwaway
hierarchy: KMATRIX_ROOT_CONTROLLERS=1), where the lab enables what is missing and disables it
again when it closes. ``close()`` (also on an exception or an interrupt:
tests/conftest.py turns SIGTERM into KeyboardInterrupt) kills the processes and removes the tree.

The pure parts (why the controllers are unavailable, the witness's parsing, the bounds of a
window figure given readings that bracket the agent's) are tested in
tests/unit/test_podcgroup.py without a kernel.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

WANTED = ("cpu", "memory")

# Allocates and touches N bytes once told to (a line on stdin), says so, then spins until its
# deadline (it ends by itself even if nobody kills it; PR_SET_PDEATHSIG kills it with the test).
HOG = """\
import sys, time
n, seconds = int(sys.argv[1]), float(sys.argv[2])
print("READY", flush=True)
sys.stdin.readline()
buf = bytearray(n)
for i in range(0, n, 4096):
    buf[i] = 1
print("TOUCHED", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(20000):
        pass
"""

# ---------------------------------------------------------------------------------------------
# pure: can a live pod cgroup with CPU and memory limits be made here?


def parse_proc_cgroups(text: str) -> Dict[str, Tuple[int, bool]]:
    """``/proc/cgroups`` -> {controller: (v1 hierarchy id, enabled)}. Hierarchy 0 means the
    controller is bound to no v1 hierarchy (free for cgroup v2). Raises ValueError quoting a line
    that is not ``name hierarchy num_cgroups enabled``."""
    out: Dict[str, Tuple[int, bool]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]) or parts[3] not in ("0", "1"):
            raise ValueError(f"/proc/cgroups: line {line!r} is not 'name hierarchy num_cgroups enabled'")
        out[parts[0]] = (int(parts[1]), parts[3] == "1")
    return out


def why_unavailable(root: str, controllers: str, subtree_control: str,
                    proc_cgroups: Optional[str], wanted: Sequence[str] = WANTED,
                    may_enable_root: bool = False) -> Optional[str]:
    """Why a pod cgroup with ``wanted`` controllers cannot be made below the cgroup v2 ``root``,
    from the root's ``cgroup.controllers`` and ``cgroup.subtree_control`` texts and
    ``/proc/cgroups`` (None: unreadable); None when it can. ``may_enable_root``: the root is a
    throwaway guest's, whose ``cgroup.subtree_control`` the lab may write (and restores)."""
    have = set(controllers.split())
    missing = [w for w in wanted if w not in have]
    if missing:
        try:
            v1 = parse_proc_cgroups(proc_cgroups) if proc_cgroups is not None else {}
        except ValueError as e:
            v1 = {}
            note = f" ({e})"
        else:
            note = ""
        causes = []
        for w in missing:
            if w not in v1:
                causes.append(f"{w}: not in /proc/cgroups (not built into this kernel?)" if proc_cgroups
                              is not None else f"{w}: absent")
            elif v1[w][0] != 0:
                causes.append(f"{w}: bound to cgroup v1 hierarchy {v1[w][0]}")
            elif not v1[w][1]:
                causes.append(f"{w}: disabled (cgroup_disable= on the kernel command line)")
            else:
                causes.append(f"{w}: free, yet not offered by this v2 hierarchy")
        return (f"the cgroup v2 hierarchy at {root} has no {' or '.join(missing)} controller "
                f"({'; '.join(causes)}){note}")
    enabled = set(subtree_control.split())
    off = [w for w in wanted if w not in enabled]
    if off and not may_enable_root:
        return (f"{' and '.join(off)} not enabled in {root}/cgroup.subtree_control, which this test "
                f"writes only in a kernel-matrix guest (KMATRIX_ROOT_CONTROLLERS=1)")
    return None


# ---------------------------------------------------------------------------------------------
# pure: the witness's own reading of the files (independent of agent.cgroups.parse)


@dataclass(frozen=True)
class Files:
    """What the witness read from one cgroup directory, between two clock readings."""

    t_before: float
    t_after: float
    values: Mapping[str, Optional[float]]  # counter or gauge name -> value; None: file absent


def _keyed(text: str) -> Dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k and v.strip().isdigit():
            out[k] = int(v)
    return out


def _psi_some_total(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("some "):
            for part in line.split()[1:]:
                if part.startswith("total="):
                    return int(part[len("total="):])
    raise ValueError(f"no 'some ... total=' in {text!r}")


def witness_values(texts: Mapping[str, Optional[str]]) -> Dict[str, Optional[float]]:
    """File texts (None: absent) -> the witness's values: ``usage_usec``, ``nr_periods``,
    ``nr_throttled``, ``throttled_usec`` (cpu.stat), ``cpu_some_usec`` / ``memory_some_usec``
    (pressure "some" totals), ``working_set`` (memory.current - inactive_file),
    ``memory_max`` and ``cpu_max_cores`` (None when ``max``)."""
    v: Dict[str, Optional[float]] = {}
    stat = _keyed(texts.get("cpu.stat") or "")
    for k in ("usage_usec", "nr_periods", "nr_throttled", "throttled_usec"):
        v[k] = stat.get(k)
    for f, k in (("cpu.pressure", "cpu_some_usec"), ("memory.pressure", "memory_some_usec")):
        v[k] = _psi_some_total(texts[f]) if texts.get(f) is not None else None
    cur, mstat = texts.get("memory.current"), texts.get("memory.stat")
    v["working_set"] = (max(0, int(cur.strip()) - _keyed(mstat).get("inactive_file", 0))
                        if cur is not None and mstat is not None else None)
    mmax = (texts.get("memory.max") or "").strip()
    v["memory_max"] = None if mmax in ("", "max") else int(mmax)
    cmax = (texts.get("cpu.max") or "").split()
    v["cpu_max_cores"] = int(cmax[0]) / int(cmax[1]) if len(cmax) == 2 and cmax[0] != "max" else None
    return v


FILES = ("cpu.stat", "cpu.max", "cpu.pressure", "memory.current", "memory.max", "memory.stat",
         "memory.pressure")


def read_files(d: Path, clock=time.monotonic) -> Files:
    t0 = clock()
    texts: Dict[str, Optional[str]] = {}
    for name in FILES:
        try:
            texts[name] = (d / name).read_text()
        except FileNotFoundError:
            texts[name] = None
    t1 = clock()
    return Files(t0, t1, witness_values(texts))


# ---------------------------------------------------------------------------------------------
# pure: what the agent's window figure must lie within, given readings that bracket its own


def rate_bounds(b1: Files, a1: Files, b2: Files, a2: Files, key: str,
                per_seconds: float = 1e6) -> Optional[Tuple[float, float]]:
    """Bounds of Δcounter / elapsed / per_seconds for an agent that read ``key`` (and its clock)
    somewhere between ``b1`` and ``a1`` at the start of its window, between ``b2`` and ``a2`` at
    the end. None when the counter is absent from any reading."""
    vals = [r.values.get(key) for r in (b1, a1, b2, a2)]
    if any(x is None for x in vals):
        return None
    vb1, va1, vb2, va2 = vals
    d_lo, d_hi = max(0.0, vb2 - va1), va2 - vb1
    # the agent's clock reading at each end lies between the bracketing readings
    e_lo, e_hi = b2.t_after - a1.t_before, a2.t_before - b1.t_after
    if not e_lo > 0:
        raise ValueError(f"the window ({e_lo:.3f} s between the brackets) must be longer than zero")
    return d_lo / per_seconds / e_hi, d_hi / per_seconds / e_lo


def ratio_bounds(b1: Files, a1: Files, b2: Files, a2: Files, num: str,
                 den: str) -> Optional[Tuple[float, float]]:
    """Bounds of Δnum / Δden (clamped to 0..1, 0 when no ``den`` elapsed) for an agent whose two
    readings are bracketed like :func:`rate_bounds`'."""
    n = [r.values.get(num) for r in (b1, a1, b2, a2)]
    d = [r.values.get(den) for r in (b1, a1, b2, a2)]
    if any(x is None for x in n + d):
        return None
    n_lo, n_hi = max(0.0, n[2] - n[1]), n[3] - n[0]
    d_lo, d_hi = max(0.0, d[2] - d[1]), d[3] - d[0]
    lo = min(1.0, n_lo / d_hi) if d_hi else 0.0
    hi = min(1.0, n_hi / d_lo) if d_lo else 1.0
    return lo, hi


# ---------------------------------------------------------------------------------------------
# the lab (IO)


# resolved here, not in the child: no dlopen/dlsym between fork and exec
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:  # runs in the child between fork and exec
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def remove_tree(top: Path, tries: int = 100) -> None:
    """Kill whatever runs in ``top`` and below, remove the directories bottom-up. Raises
    RuntimeError naming what could not be removed."""
    for _ in range(tries):
        if not top.exists():
            return
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]
        for d in dirs:
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except OSError:
                pass
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # busy: a killed process is still leaving
                break
        time.sleep(0.05)
    if top.exists():
        raise RuntimeError(f"could not remove the test's cgroup tree {top}")


class PodCgroupLab:
    """The tree described above, below the cgroup v2 ``root``; a context manager."""

    def __init__(self, root: str, *, controllers: bool, enable_root: bool = False,
                 cpu_max: str = "50000 100000", memory_max: int = 128 << 20) -> None:
        self.root = Path(root)
        self.controllers = controllers
        self.enable_root = enable_root
        self.root_enabled: list[str] = []  # what this lab enabled at the root (close() undoes it)
        self.cpu_max = cpu_max
        self.memory_max = memory_max
        self.uid = str(uuid.uuid4())
        self.container_id = uuid.uuid4().hex + uuid.uuid4().hex
        self.top = self.root / f"eea-live-{uuid.uuid4().hex[:8]}"
        qos = self.top / "kubepods.slice" / "kubepods-burstable.slice"
        self.pod = qos / f"kubepods-burstable-pod{self.uid.replace('-', '_')}.slice"
        self.container = self.pod / f"cri-containerd-{self.container_id}.scope"
        self.procs: list[subprocess.Popen] = []
        self._made = False  # True once self.top is a directory this lab created

    def __enter__(self) -> "PodCgroupLab":
        try:
            self.make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def make(self) -> None:
        self.top.mkdir()  # never reuse a directory this lab did not create
        self._made = True
        chain = [self.top, self.top / "kubepods.slice", self.pod.parent, self.pod, self.container]
        for d in chain[1:]:
            d.mkdir(parents=False)
        if not self.controllers:
            return
        if self.enable_root:
            have = set((self.root / "cgroup.subtree_control").read_text().split())
            for w in WANTED:
                if w not in have:
                    (self.root / "cgroup.subtree_control").write_text("+" + w)
                    self.root_enabled.append(w)
        offered = set((self.top / "cgroup.controllers").read_text().split())
        if not set(WANTED) <= offered:
            raise RuntimeError(f"{self.top}/cgroup.controllers offers {sorted(offered)}, not "
                               f"{', '.join(WANTED)}: enable them in the root's cgroup.subtree_control")
        for d in chain[:-1]:  # each parent hands cpu and memory to its children
            (d / "cgroup.subtree_control").write_text(" ".join("+" + w for w in WANTED))
        (self.pod / "cpu.max").write_text(self.cpu_max)
        (self.pod / "memory.max").write_text(str(self.memory_max))

    def spawn_hog(self, nbytes: int, seconds: float = 120.0) -> subprocess.Popen:
        """The hog, started inside the container cgroup (so everything it allocates is charged
        there); returns once it printed READY."""
        procs_file = str(self.container / "cgroup.procs")

        def enter() -> None:
            _pdeathsig()
            with open(procs_file, "w") as f:
                f.write("0")  # this very process, before it runs anything

        p = subprocess.Popen([sys.executable, "-S", "-c", HOG, str(nbytes), str(seconds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             preexec_fn=enter)
        self.procs.append(p)
        self.expect(p, "READY")
        return p

    @staticmethod
    def expect(p: subprocess.Popen, word: str) -> None:
        line = p.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"hog (pid {p.pid}) said {line!r} instead of {word!r} "
                               f"(exit {p.poll()})")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()
        try:
            if self._made:
                remove_tree(self.top)
        finally:
            while self.root_enabled:  # the root as it was (fails only if others use them now)
                w = self.root_enabled[-1]
                (self.root / "cgroup.subtree_control").write_text("-" + w)
                self.root_enabled.pop()
