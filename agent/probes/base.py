"""The probe protocol and the base class: compile (in a child), hold, check, read, close.

Nothing here imports ``bcc``: a probe compiles in a short-lived child (``agent.probes.loader``
runs ``compile_child.py``) and the agent reads the maps it handed over through its own
``bpf(2)`` layer (``agent.probes.bpfmaps``), so clang/LLVM never stay in the agent.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol

from agent.model import Histogram, ProbeSnapshot
from agent.probes.bpfmaps import BpfMap, Maps, check_contract
from agent.probes.loader import (CompileFailed, CompileRequest, HeaderTree, Loaded,
                                 compile_in_child)
from agent.probes.spec import MapSpec, ProbeSpec
from agent.stats.histogram import SlotLayout

if TYPE_CHECKING:
    from agent.config import Config
    from agent.kernel import KernelInfo

log = logging.getLogger(__name__)


PROBE_HEADERS = "probe-headers"  # below bpf_dir: the probes' own header tree


def version_code(release: str) -> int:
    """LINUX_VERSION_CODE of a release string ("6.18.44-fc-v1045" -> 6.18.44); 0 if unreadable."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or "")
    if not m:
        return 0
    a, b, c = (int(x or 0) for x in m.groups())
    return (a << 16) + (b << 8) + min(c, 255)


class ProbeUnsupported(Exception):
    """The running kernel lacks something the probe needs (reported as ``unsupported``)."""


class ProbeError(Exception):
    """The probe could not be compiled, attached, checked or read (reported as ``down``)."""


class Probe(Protocol):
    name: str

    def start(self) -> None: ...

    def read(self) -> ProbeSnapshot: ...

    def close(self) -> None: ...


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
    adds only what depends on the running kernel and how its maps are read (``snapshot``,
    through :class:`agent.probes.bpfmaps.Maps`). BCC compiles it in a child process; the
    agent holds the descriptors the child handed over."""

    spec: ClassVar[ProbeSpec]

    def __init__(self, config: Config, kernel: KernelInfo) -> None:
        self.config = config
        self.kernel = kernel
        self._loaded: Loaded | None = None
        self._maps: Maps | None = None
        self.detail: dict[str, str] = {}
        self.child_argv: list[str] | None = None  # tests: another compiling child

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

    def snapshot(self, maps: Maps) -> ProbeSnapshot:  # pragma: no cover - abstract
        """The maps' raw contents, read through ``maps``, handed to the probe's pure decode."""
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

    def compile_env(self) -> dict[str, str]:
        """Environment for the compiling child: the header tree BCC should use, when the
        kernel detection chose one other than BCC's default (agent.kernel.HeaderInfo)."""
        tree = getattr(self.kernel.headers, "bcc_source", None)
        return {"BCC_KERNEL_SOURCE": str(tree)} if tree else {}

    def compile_request(self) -> CompileRequest:
        """What the compiling child needs; raises ProbeUnsupported or ProbeError (no child
        is started then)."""
        self.check_supported()
        if not self.kernel.bpf_permitted:
            raise ProbeError(f"not permitted to load BPF: {self.kernel.bpf_permission_detail}")
        src = self.config.bpf_dir / self.spec.source
        if not src.is_file():
            raise ProbeError(f"BPF source {src} not found")
        return CompileRequest(self.name, load_source(src), tuple(self.cflags()),
                              tuple(m.name for m in self.spec.maps), self.header_trees())

    def header_trees(self) -> tuple[HeaderTree, ...]:
        """The probes' own minimal tree first (``bpf/probe-headers``: the same instructions as
        with a kernel's tree, compiled ~10x faster; see its linux/kconfig.h), then the kernel
        header tree the detection chose (agent.kernel.HeaderInfo), for a kernel whose formats
        need a type the minimal tree lacks."""
        kernel_tree = HeaderTree(f"kernel ({self.kernel.headers.kind})", self.compile_env())
        own = self.config.bpf_dir / PROBE_HEADERS
        if not (own / "include").is_dir():
            return (kernel_tree,)
        return (HeaderTree(PROBE_HEADERS, {"BCC_KERNEL_SOURCE": str(own.resolve())},
                           (f"-DLINUX_VERSION_CODE={version_code(self.kernel.release)}",)),
                kernel_tree)

    def start(self) -> None:
        """Compile, load and attach in a child (``agent.probes.loader``), then hold what it
        handed over and check the declared contract against the kernel's own values."""
        if self._loaded is not None:
            return
        req = self.compile_request()
        try:
            loaded = compile_in_child(req, self.config.compile_timeout, argv=self.child_argv)
        except CompileFailed as e:
            raise self.compile_failed(e) from None
        self.adopt(loaded)

    def compile_failed(self, e: CompileFailed) -> ProbeError:
        """The down reason for a failed compile (with what is missing when nothing is)."""
        detail = str(e)
        if self.kernel.headers.kind == "none" and "Failed to compile" in detail:
            detail += f" | no kernel headers at {self.kernel.headers.path}"
        return ProbeError(detail)

    def adopt(self, loaded: Loaded) -> None:
        """Hold what a compiling child handed over (this probe owns it from here, also when
        this raises ProbeError: the contract check failed, and everything is closed)."""
        if self._loaded is not None:
            loaded.close()
            return
        maps: dict[str, BpfMap] = {}
        try:
            for n in list(loaded.maps):
                maps[n] = BpfMap(loaded.maps.pop(n), n)  # the BpfMap owns the descriptor now
            check_contract(maps, self.spec.contract(), self.expected_entries(), self.spec.source)
        except (ValueError, OSError) as e:
            Maps(maps).close()
            loaded.close()
            raise ProbeError(str(e)) from None
        self._loaded, self._maps = loaded, Maps(maps)
        if loaded.diag.strip():
            log.debug("probe %s: compiler output: %s", self.name, loaded.diag.strip(),
                      extra={"probe": self.name})
        if loaded.tree and loaded.tree != PROBE_HEADERS and len(self.header_trees()) > 1:
            first = loaded.diag.strip().splitlines()[0] if loaded.diag.strip() else ""
            log.warning("probe %s: compiled against the %s header tree: the probe header tree "
                        "could not compile it (%s)", self.name, loaded.tree, first[:300],
                        extra={"probe": self.name})
        self.detail["load_seconds"] = f"{loaded.seconds:.2f}"
        if loaded.tree:
            self.detail["header_tree"] = loaded.tree
        if loaded.child_rss_hwm_kb:
            self.detail["compile_peak_rss_mib"] = f"{loaded.child_rss_hwm_kb / 1024:.0f}"
        log.info("probe %s: loaded and attached to %s in %.2fs (compiled in child %d against %s)",
                 self.name, ", ".join(loaded.events), loaded.seconds, loaded.child_pid,
                 loaded.tree or "BCC's default header tree", extra={"probe": self.name})

    def kernel_notes(self) -> list[tuple[str, str]]:
        """Extra (feature, finding) lines for check-kernel about what this probe uses."""
        return []

    def attached(self) -> list[str]:
        return list(self.spec.tracepoints) + [tp for tp in self.spec.optional_tracepoints
                                              if self.kernel.tracepoint(tp) is not None]

    def read(self) -> ProbeSnapshot:
        if self._loaded is None or self._maps is None:
            raise ProbeError(f"probe {self.name} is not started")
        return self.snapshot(self._maps)

    def close(self) -> None:
        """Close every descriptor: the programs detach and the kernel frees them."""
        loaded, self._loaded = self._loaded, None
        maps, self._maps = self._maps, None
        if loaded is not None:
            loaded.close()
        if maps is not None:
            maps.close()

    @property
    def started(self) -> bool:
        return self._loaded is not None

    @property
    def maps(self) -> Maps | None:
        """The loaded probe's maps (None until started)."""
        return self._maps

    def programs(self) -> dict[str, int]:
        """Program name -> descriptor of the loaded programs (empty until started)."""
        return dict(self._loaded.progs) if self._loaded is not None else {}

    def descriptors(self) -> list[int]:
        """Every descriptor the probe holds: tracepoint events, programs, maps."""
        if self._loaded is None or self._maps is None:
            return []
        return self._loaded.fds() + [self._maps[n].fd for n in self._maps.names()]

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """program name -> (run_time_ns, run_cnt); empty unless kernel.bpf_stats_enabled=1."""
        out = {}
        for name, fd in self.programs().items():
            st = read_prog_stats(fd, str(self.config.proc_root))
            if st is not None:
                out[name] = st
        return out

    # -- reading helpers -------------------------------------------------------------------
    def lost(self, maps: Maps) -> int:
        """Events the kernel could not record (the spec's lost map, bpf/lost.bpf.h)."""
        return maps.lost(self.spec.lost_map)


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


def address_rows(maps: Maps) -> dict[int, str]:
    """row -> local address, for the addresses that got a row (bpf/addr_rows.bpf.h)."""
    return {row: render_addr(addr) for addr, row in maps.items("addr_row_of", "16s", "I")
            if row != ADDR_SPILL}


def hist_from_slots(layout: SlotLayout, slots: Mapping[int, tuple[int, int]]) -> Histogram:
    """``{slot: (count, sum)}`` -> Histogram."""
    counts = {s: c for s, (c, _) in slots.items() if c}
    return Histogram(layout, counts, sum(t for _, t in slots.values()))
