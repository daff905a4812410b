"""The probe protocol and the BCC-owning base class: compile, attach, check, read, close.

This is the only module that imports ``bcc`` (lazily, inside ``start``), so ``import agent``
and the unit tests work on machines without BCC.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import mmap
import os
import re
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Mapping, Protocol

from agent.model import Histogram, ProbeSnapshot
from agent.probes.spec import MapSpec, ProbeSpec
from agent.stats.histogram import SlotLayout

if TYPE_CHECKING:
    from agent.config import Config
    from agent.kernel import KernelInfo

log = logging.getLogger(__name__)


class ProbeUnsupported(Exception):
    """The running kernel lacks something the probe needs (reported as ``unsupported``)."""


class ProbeError(Exception):
    """The probe could not be compiled, attached, checked or read (reported as ``down``)."""


class Probe(Protocol):
    name: str

    def start(self) -> None: ...

    def read(self) -> ProbeSnapshot: ...

    def close(self) -> None: ...


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what the C++ side of BCC (clang) writes to fd 2 while compiling."""
    out: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _first_errors(text: str, limit: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    return " | ".join(lines[:limit])


_INLINED_INCLUDE = re.compile(r'^#include "([\w.-]+\.bpf\.h)"[ \t]*$', re.M)


def inline_includes(text: str, name: str, read: Callable[[str], str]) -> str:
    """C text with each ``#include "x.bpf.h"`` replaced by ``read("x.bpf.h")`` (one level).

    BCC rewrites map calls (``m.lookup(&k)``) only in the main file, so headers whose helpers
    call maps are pasted in; ``#line`` keeps compiler messages pointing at the right file."""
    out, pos = [], 0
    for m in _INLINED_INCLUDE.finditer(text):
        line_after = text.count("\n", 0, m.end()) + 2
        header = read(m.group(1))
        out += [text[pos:m.start()], f'#line 1 "{m.group(1)}"\n', header,
                "" if header.endswith("\n") else "\n", f'#line {line_after} "{name}"']
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def load_source(path: Path) -> str:
    """A probe's C file as BCC gets it: with its ``*.bpf.h`` includes pasted in."""
    def read(header: str) -> str:
        try:
            return (path.parent / header).read_text()
        except OSError as e:
            raise ProbeError(f"{path.name}: cannot read included {header}: {e}") from e
    return inline_includes(path.read_text(), path.name, read)


def render_addr(raw: bytes) -> str:
    """16 address bytes from the kernel -> text; IPv4-mapped addresses render as IPv4."""
    a = ipaddress.IPv6Address(bytes(raw))
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


def read_prog_stats(fd: int, proc_root: str = "/proc") -> tuple[int, int] | None:
    """(run_time_ns, run_cnt) of a loaded program, from its fdinfo (needs bpf_stats_enabled)."""
    try:
        with open(f"{proc_root}/self/fdinfo/{fd}") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["run_time_ns"]), int(fields["run_cnt"])
    except (OSError, KeyError, ValueError):
        return None


class BccProbe:
    """One BPF source file, compiled and attached on its own, read as a cumulative snapshot.

    What the probe is (tracepoints, maps, defines, unit) comes from its ``spec``; a subclass
    adds only what depends on the running kernel and how its maps are read."""

    spec: ClassVar[ProbeSpec]

    def __init__(self, config: Config, kernel: KernelInfo) -> None:
        self.config = config
        self.kernel = kernel
        self._bpf = None
        self._mapped: dict[str, MappedU64Array] = {}
        self.detail: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layout(self) -> SlotLayout | None:
        return self.spec.layout(self.config)

    # -- to be extended by probes -------------------------------------------------------
    def defines(self) -> dict[str, int | str]:
        """The spec's defines; a probe adds the ones that depend on the running kernel."""
        return self.spec.defines(self.config)

    def snapshot(self, bpf) -> ProbeSnapshot:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_entries(self) -> Mapping[str, int]:
        """map name -> max_entries the probe asked for (checked after load)."""
        return self.spec.expected_entries(self.config)

    # -- lifecycle ---------------------------------------------------------------------------
    def check_supported(self) -> None:
        if self.kernel.tracefs is None:
            raise ProbeUnsupported("tracefs is not mounted (tried "
                                   + ", ".join(str(p) for p in self.config.tracefs_roots) + ")")
        for tp in self.spec.tracepoints:
            if self.kernel.tracepoint(tp) is None:
                raise ProbeUnsupported(f"tracepoint {tp} not found in {self.kernel.tracefs}/events")
        for tp, names in self.spec.fields.items():
            fmt = self.kernel.tracepoint(tp)
            for f in names:
                if not fmt.has(f):
                    raise ProbeUnsupported(f"{tp} has no {f!r} field on this kernel")

    def cflags(self) -> list[str]:
        flags = [f"-I{self.config.bpf_dir.resolve()}"]  # BCC compiles in a virtual dir: absolute
        for k, v in sorted(self.defines().items()):
            flags.append(f"-D{k}={v}" if v is not None else f"-D{k}")
        return flags

    def start(self) -> None:
        if self._bpf is not None:
            return
        self.check_supported()
        if not self.kernel.bpf_permitted:
            raise ProbeError(f"not permitted to load BPF: {self.kernel.bpf_permission_detail}")
        src = self.config.bpf_dir / self.spec.source
        if not src.is_file():
            raise ProbeError(f"BPF source {src} not found")
        try:
            from bcc import BPF  # the distribution's python3-bpfcc, never PyPI's "bcc"
        except ImportError as e:
            raise ProbeError(f"cannot import bcc ({e}); install the distribution package "
                             "python3-bpfcc and run make dev-setup") from e
        t0 = time.monotonic()
        bpf = None
        with _captured_stderr() as captured:
            try:
                bpf = BPF(text=load_source(src).encode(), cflags=self.cflags())
            except Exception as e:  # BCC raises bare Exception for compile and attach errors
                err = e
            else:
                err = None
        diag = captured[0] if captured else ""
        if err is not None:
            detail = _first_errors(diag)
            if self.kernel.headers.kind == "none":
                detail = (detail + " | " if detail else "") + (
                    f"no kernel headers at {self.kernel.headers.path}")
            raise ProbeError(f"{err}" + (f": {detail}" if detail else ""))
        if diag.strip():
            log.debug("probe %s: compiler output: %s", self.name, diag.strip(),
                      extra={"probe": self.name})
        try:
            self._check_contract(bpf)
        except ProbeError:
            bpf.cleanup()
            raise
        self._bpf = bpf
        self.detail["load_seconds"] = f"{time.monotonic() - t0:.2f}"
        log.info("probe %s: loaded and attached to %s in %.2fs", self.name,
                 ", ".join(self.attached()), time.monotonic() - t0, extra={"probe": self.name})

    def kernel_notes(self) -> list[tuple[str, str]]:
        """Extra (feature, finding) lines for check-kernel about what this probe uses."""
        return []

    def attached(self) -> list[str]:
        return list(self.spec.tracepoints) + [tp for tp in self.spec.optional_tracepoints
                                              if self.kernel.tracepoint(tp) is not None]

    def _check_contract(self, bpf) -> None:
        for mapname, (ksize, vsize) in self.spec.contract().items():
            try:
                table = bpf[mapname.encode()]
            except KeyError:
                raise ProbeError(f"map {mapname} missing from {self.spec.source}") from None
            # per-CPU maps: BCC keeps the single-CPU leaf type as sLeaf
            leaf = getattr(table, "sLeaf", table.Leaf)
            got = (ctypes.sizeof(table.Key), ctypes.sizeof(leaf))
            if got != (ksize, vsize):
                raise ProbeError(f"map {mapname}: key/leaf size {got} != expected {(ksize, vsize)}")
        for mapname, entries in self.expected_entries().items():
            got = bpf[mapname.encode()].max_entries
            if got != entries:
                raise ProbeError(f"map {mapname}: max_entries {got} != expected {entries}")

    def read(self) -> ProbeSnapshot:
        if self._bpf is None:
            raise ProbeError(f"probe {self.name} is not started")
        return self.snapshot(self._bpf)

    def close(self) -> None:
        mapped, self._mapped = self._mapped, {}
        for m in mapped.values():
            m.close()
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()

    @property
    def started(self) -> bool:
        return self._bpf is not None

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """program name -> (run_time_ns, run_cnt); empty unless kernel.bpf_stats_enabled=1."""
        if self._bpf is None:
            return {}
        out = {}
        for fname, fn in self._bpf.funcs.items():
            st = read_prog_stats(fn.fd, str(self.config.proc_root))
            if st is not None:
                name = fname.decode() if isinstance(fname, bytes) else fname
                out[name] = st
        return out

    # -- reading helpers -------------------------------------------------------------------
    @staticmethod
    def percpu_sum(values, field: str | None = None) -> int:
        if field is None:
            return sum(int(v) if not hasattr(v, "value") else int(v.value) for v in values)
        return sum(int(getattr(v, field)) for v in values)

    def mapped(self, bpf, mapname: str) -> MappedU64Array:
        """An mmap-able array map of the loaded program, mapped once and unmapped on close."""
        m = self._mapped.get(mapname)
        if m is None:
            m = self._mapped[mapname] = MappedU64Array(bpf[mapname.encode()])
        return m

    def lost(self, bpf) -> int:
        """Events the kernel could not record (the spec's lost map, bpf/lost.bpf.h)."""
        if self.spec.lost_map is None:
            return 0
        table = bpf[self.spec.lost_map.encode()]
        return sum(int(v) for v in table[ctypes.c_int(0)])


ADDR_SPILL = 0xFFFFFFFF  # addr_row_of value of an address counted in the probe's hash instead
# the maps bpf/addr_rows.bpf.h adds to a probe (it also needs -DADDR_SPILL_ADDRS)
ADDR_ROW_MAPS = (
    MapSpec("addr_row_of", 16, 4, lambda c: c.fast_addresses + c.max_addresses),
    MapSpec("addr_row_owner", 4, 16, lambda c: c.fast_addresses, define="ADDR_ROWS"),
    MapSpec("addr_cache", 4, 24),
)


def address_row_params(config) -> dict[str, int]:
    """The -D value of bpf/addr_rows.bpf.h that is not a map's size."""
    return {"ADDR_SPILL_ADDRS": config.max_addresses}


def address_rows(bpf) -> dict[int, str]:
    """row -> local address, for the addresses that got a row (bpf/addr_rows.bpf.h)."""
    return {int(v.value): render_addr(bytes(k.addr)) for k, v in bpf[b"addr_row_of"].items()
            if int(v.value) != ADDR_SPILL}


class MappedU64Array:
    """A BPF array of u64 created with BPF_F_MMAPABLE, read straight from shared memory.

    Reading a run of entries costs one memory copy instead of one bpf() syscall per element."""

    def __init__(self, table) -> None:
        entries, size = int(table.max_entries), ctypes.sizeof(table.Leaf)
        if size != 8:
            raise ProbeError(f"mmap-ed map leaf size {size} is not a u64")
        try:
            self._mm = mmap.mmap(table.map_fd, entries * 8, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except (OSError, ValueError) as e:
            raise ProbeError(f"cannot mmap BPF array of {entries} u64: {e}") from e

    def words(self, first: int, count: int) -> array:
        """``count`` consecutive entries starting at ``first``."""
        out = array("Q")
        out.frombytes(self._mm[first * 8:(first + count) * 8])
        return out

    def close(self) -> None:
        self._mm.close()


def hist_from_slots(layout: SlotLayout, slots: Mapping[int, tuple[int, int]]) -> Histogram:
    """``{slot: (count, sum)}`` -> Histogram."""
    counts = {s: c for s, (c, _) in slots.items() if c}
    return Histogram(layout, counts, sum(t for _, t in slots.values()))
