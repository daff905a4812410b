"""What the running kernel offers: tracefs, tracepoint formats, drop-reason names, BTF,
header tree, cgroup v2, permission to load BPF.

Parsers (``parse_*``) are pure and raise ``ValueError`` quoting the offending text; readers
(``read_*``/``detect_*``) take their roots as arguments so tests can point them at fixtures.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import operator
import os
import platform
import re
import struct
from dataclasses import dataclass, field

from agent.cgroups.parse import parse_cgroup2_mounts
from pathlib import Path
from typing import Mapping, Sequence

# ---------------------------------------------------------------------------------------------
# tracepoint format files


@dataclass(frozen=True)
class TracepointField:
    name: str
    ctype: str  # e.g. "__u16", "enum skb_drop_reason", "__u8[28]"
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class TracepointFormat:
    system: str
    name: str
    id: int
    fields: Mapping[str, TracepointField]
    print_fmt: str

    def has(self, fieldname: str) -> bool:
        return fieldname in self.fields


_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>\d+);"
)
_DECL_RE = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<array>\[[^\]]*\])?$")


def parse_format(system: str, text: str) -> TracepointFormat:
    """Parse a tracefs ``events/<system>/<name>/format`` file."""
    name = None
    tp_id = None
    fields: dict[str, TracepointField] = {}
    print_fmt = None
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            raw = line.split(":", 1)[1].strip()
            if not raw.isdigit():
                raise ValueError(f"tracepoint format: bad ID line {line!r}")
            tp_id = int(raw)
        elif line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
        elif "field:" in line:
            m = _FIELD_RE.match(line)
            if not m:
                raise ValueError(f"tracepoint format: cannot parse field line {line.strip()!r}")
            d = _DECL_RE.match(m["decl"].strip())
            if not d:
                raise ValueError(f"tracepoint format: cannot parse declaration {m['decl']!r}")
            ctype = d["type"].strip() + (d["array"] or "")
            fields[d["name"]] = TracepointField(
                d["name"], ctype, int(m["offset"]), int(m["size"]), m["signed"] == "1"
            )
    if name is None or tp_id is None or print_fmt is None:
        raise ValueError(
            f"tracepoint format for {system!r}: missing name/ID/print fmt in {text[:80]!r}"
        )
    return TracepointFormat(system, name, tp_id, fields, print_fmt)


def parse_print_symbolic(print_fmt: str, fieldname: str) -> dict[int, str]:
    """The ``__print_symbolic(REC-><field>, { 2, "NAME" }, ...)`` table as ``{number: name}``.

    Entries whose number is not a literal (a macro name left unexpanded) are skipped.
    """
    start = print_fmt.find(f"__print_symbolic(REC->{fieldname},")
    if start < 0:
        return {}
    # the table ends at the parenthesis that closes __print_symbolic(
    depth = 0
    end = len(print_fmt)
    for i in range(start, len(print_fmt)):
        c = print_fmt[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    table = {}
    for num, label in re.findall(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"([^\"]*)\"\s*\}",
                                 print_fmt[start:end]):
        table[int(num, 0)] = label
    return table


_SAFE_OPS = {
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}


def _eval_int_expr(expr: str) -> int:
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _SAFE_OPS:
            return _SAFE_OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"not a constant integer expression: {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def parse_switch_state_mask(print_fmt: str) -> int:
    """The mask of ``prev_state`` bits that mean "not runnable" in ``sched_switch``.

    The kernel prints ``prev_state & (TASK_REPORT_MAX - 1)`` as the state letters and the bit
    ``TASK_REPORT_MAX`` as "+" (preempted). A task switched out with none of the masked bits
    set is still runnable and goes back on the run queue.
    """
    m = re.search(r"\(REC->prev_state & (\(.*?\))\)\s*\?", print_fmt)
    if not m:
        raise ValueError(f"sched_switch print fmt has no prev_state mask: {print_fmt[:120]!r}")
    return _eval_int_expr(m.group(1))


def read_format(tracefs: Path, system: str, event: str) -> TracepointFormat | None:
    """The format of ``system:event`` under ``tracefs``, or ``None`` if the kernel lacks it."""
    path = tracefs / "events" / system / event / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_format(system, text)


def find_tracefs(candidates: Sequence[Path]) -> Path | None:
    """The first candidate with an ``events`` directory this process can see; one it may not
    enter (tracefs is mode 700 for root) counts as absent instead of raising."""
    for c in candidates:
        try:
            if (c / "events").is_dir():
                return c
        except PermissionError:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# BTF: just enough to read an enum's names and values from /sys/kernel/btf/vmlinux

_BTF_MAGIC = 0xEB9F
# bytes that follow the 12-byte btf_type header, per kind (vlen = number of members)
_BTF_EXTRA = {
    1: lambda vlen: 4,  # INT
    2: lambda vlen: 0,  # PTR
    3: lambda vlen: 12,  # ARRAY
    4: lambda vlen: 12 * vlen,  # STRUCT
    5: lambda vlen: 12 * vlen,  # UNION
    6: lambda vlen: 8 * vlen,  # ENUM
    7: lambda vlen: 0,  # FWD
    8: lambda vlen: 0,  # TYPEDEF
    9: lambda vlen: 0,  # VOLATILE
    10: lambda vlen: 0,  # CONST
    11: lambda vlen: 0,  # RESTRICT
    12: lambda vlen: 0,  # FUNC
    13: lambda vlen: 8 * vlen,  # FUNC_PROTO
    14: lambda vlen: 4,  # VAR
    15: lambda vlen: 12 * vlen,  # DATASEC
    16: lambda vlen: 0,  # FLOAT
    17: lambda vlen: 4,  # DECL_TAG
    18: lambda vlen: 0,  # TYPE_TAG
    19: lambda vlen: 12 * vlen,  # ENUM64
}


def parse_btf_enum(data: bytes, enum_name: str) -> dict[str, int] | None:
    """``{name: value}`` of the enum called ``enum_name`` in raw BTF, or ``None`` if absent."""
    if len(data) < 24:
        raise ValueError(f"BTF blob too short ({len(data)} bytes)")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != _BTF_MAGIC:
        raise ValueError(f"not BTF: magic {magic:#x}")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off
    if types + type_len > len(data) or strings + str_len > len(data):
        raise ValueError("BTF header points past the end of the blob")

    def name_at(off: int) -> str:
        end = data.index(b"\0", strings + off)
        return data[strings + off:end].decode("ascii", "replace")

    want = enum_name.encode()
    pos, end = types, types + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        extra = _BTF_EXTRA.get(kind)
        if extra is None:
            raise ValueError(f"BTF: unknown type kind {kind} at byte {pos}")
        body = pos + 12
        if kind in (6, 19) and name_off and data.startswith(want + b"\0", strings + name_off):
            out = {}
            for i in range(vlen):
                if kind == 6:
                    noff, val = struct.unpack_from("<Ii", data, body + 8 * i)
                else:
                    noff, lo, hi = struct.unpack_from("<III", data, body + 12 * i)
                    val = lo | (hi << 32)
                out[name_at(noff)] = val
            return out
        pos = body + extra(vlen)
    return None


def read_btf_enum(btf_path: Path, enum_name: str) -> dict[str, int] | None:
    try:
        data = btf_path.read_bytes()
    except OSError:
        return None
    return parse_btf_enum(data, enum_name)


# ---------------------------------------------------------------------------------------------
# drop reasons

# Reasons that are not drops: an skb freed normally. Names, not numbers: numbers move between
# kernel versions, the names are stable.
NOT_DROPS = frozenset({"NOT_DROPPED_YET", "CONSUMED", "MAX"})


@dataclass(frozen=True)
class DropReasons:
    names: Mapping[int, str]  # reason number -> name without the SKB_DROP_REASON_ prefix
    source: str  # "format", "format+btf", "btf", or "none"

    def name(self, number: int) -> str:
        return self.names.get(number, f"REASON_{number}")

    def is_drop(self, number: int) -> bool:
        return self.name(number) not in NOT_DROPS


def resolve_drop_reasons(fmt: TracepointFormat | None, btf_enum: Mapping[str, int] | None
                         ) -> DropReasons:
    """Reason numbers -> names of the running kernel, from the tracepoint's own table first,
    completed from BTF's ``enum skb_drop_reason`` (which also names the non-drop values)."""
    names: dict[int, str] = {}
    sources = []
    if fmt is not None and fmt.has("reason"):
        names.update(parse_print_symbolic(fmt.print_fmt, "reason"))
        if names:
            sources.append("format")
    if btf_enum:
        added = False
        for full, value in btf_enum.items():
            if not 0 <= value < 1 << 16:  # e.g. SKB_DROP_REASON_SUBSYS_MASK, not a reason
                continue
            short = full
            for prefix in ("SKB_DROP_REASON_", "SKB_"):
                if short.startswith(prefix):
                    short = short[len(prefix):]
                    break
            if value not in names:
                names[value] = short
                added = True
        if added:
            sources.append("btf")
    return DropReasons(names, "+".join(sources) or "none")


# ---------------------------------------------------------------------------------------------
# headers, cgroup v2, BPF permission


@dataclass(frozen=True)
class HeaderInfo:
    """The kernel header tree BCC compiles against, and why that one.

    kind: "matching" (the host's, of the running kernel), "image" (the generic tree the image
    carries, used when the host has none for the running kernel), "foreign" (the host's, of
    another kernel, and no image tree), "none". ``bcc_source``: the tree handed to BCC as
    ``BCC_KERNEL_SOURCE`` ("" : BCC's default, /lib/modules/$(uname -r)/build)."""

    kind: str
    path: str
    release: str  # UTS_RELEASE of the tree ("" if unknown)
    bcc_source: str = ""
    why: str = ""

    def describe(self) -> str:
        if self.kind == "none":
            return f"none ({self.path} missing)"
        if self.kind == "matching":
            return f"{self.path} (the host's, matches the running kernel)"
        what = (f"{self.path} -> headers of {self.release or 'another kernel'} "
                "(safe: probes read tracepoint fields only)")
        if self.kind == "image":
            what = f"the image's generic tree {what}"
        return what + (f"; {self.why}" if self.why else "")


def _uts_release(tree: Path) -> str:
    try:
        text = (tree / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        return ""
    m = re.search(r'UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else ""


def detect_headers(modules_root: Path, release: str, image_tree: Path | None = None) -> HeaderInfo:
    """The host's headers when they match the running kernel, else the image's generic tree
    (``image_tree``, when it has an include/), else the host's of another kernel, else none."""
    build = modules_root / release / "build"
    host = _uts_release(build) if (build / "include").is_dir() else None
    if host is not None and host == release:
        return HeaderInfo("matching", str(build), host)
    host_state = (f"the host has none for {release} at {build}" if host is None
                  else f"the host's at {build} are of {host or 'an unknown kernel'}, not {release}")
    if image_tree is not None and (image_tree / "include").is_dir():
        return HeaderInfo("image", str(image_tree), _uts_release(image_tree),
                          bcc_source=str(image_tree), why=host_state)
    if host is not None:
        return HeaderInfo("foreign", str(build), host,
                          why="no generic tree in the image" if image_tree is not None else "")
    return HeaderInfo("none", str(build), "",
                      why=f"no generic tree at {image_tree}" if image_tree is not None else "")


_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_TRACEPOINT = 5
_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}


def check_bpf_permission() -> tuple[bool, str]:
    """Try to load a two-instruction tracepoint program (``r0 = 0; exit``)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return False, f"unknown bpf syscall number on {platform.machine()}"
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(
        struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    )
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(144)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_TRACEPOINT, 2,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    fd = libc.syscall(nr, _BPF_PROG_LOAD, attr, ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        hint = " (needs root, or CAP_BPF + CAP_PERFMON)" if err in (errno.EPERM, errno.EACCES) else ""
        return False, f"bpf(BPF_PROG_LOAD) failed: {os.strerror(err)}{hint}"
    os.close(fd)
    return True, "ok"


# ---------------------------------------------------------------------------------------------
# one view of the kernel, built once at start


@dataclass(frozen=True)
class KernelInfo:
    release: str
    tracefs: Path | None
    formats: Mapping[str, TracepointFormat | None]  # "system:event" -> format or None
    btf_path: Path | None
    headers: HeaderInfo
    cgroup2_mounts: Sequence[str]
    bpf_permitted: bool
    bpf_permission_detail: str
    bpf_stats_enabled: bool | None = None
    kprobes: bool = False
    notes: Sequence[str] = field(default_factory=tuple)

    def tracepoint(self, name: str) -> TracepointFormat | None:
        return self.formats.get(name)


def detect(tracefs_candidates: Sequence[Path], btf_path: Path, modules_root: Path,
           proc_root: Path, check_permission: bool = True,
           tracepoints: Sequence[str] = (), image_headers: Path | None = None) -> KernelInfo:
    """Look at the running kernel. Never raises for a missing feature: it is recorded.

    ``tracepoints``: the "system:event" names whose formats to read (the probe registry's
    union, agent.probes.registry.detect_kernel)."""
    release = platform.release()
    notes: list[str] = []
    tracefs = find_tracefs(tracefs_candidates)
    formats: dict[str, TracepointFormat | None] = {}
    for tp in tracepoints:
        system, event = tp.split(":")
        if tracefs is None:
            formats[tp] = None
            continue
        try:
            formats[tp] = read_format(tracefs, system, event)
        except (ValueError, OSError) as e:
            formats[tp] = None
            notes.append(f"{tp}: unreadable format ({e})")
    btf = btf_path if btf_path.is_file() else None
    try:
        mounts = parse_cgroup2_mounts((proc_root / "self" / "mounts").read_text())
    except OSError:
        mounts = []
    if check_permission:
        permitted, detail = check_bpf_permission()
    else:
        permitted, detail = True, "not checked"
    stats = None
    try:
        stats = (proc_root / "sys" / "kernel" / "bpf_stats_enabled").read_text().strip() == "1"
    except OSError:
        pass
    kprobes = tracefs is not None and (tracefs / "kprobe_events").exists()
    return KernelInfo(
        release=release,
        tracefs=tracefs,
        formats=formats,
        btf_path=btf,
        headers=detect_headers(modules_root, release, image_headers),
        cgroup2_mounts=tuple(mounts),
        bpf_permitted=permitted,
        bpf_permission_detail=detail,
        bpf_stats_enabled=stats,
        kprobes=kprobes,
        notes=tuple(notes),
    )


_BPF_ENABLE_STATS = 32


def enable_bpf_stats() -> int | None:
    """Turn on per-program run time accounting (like sysctl kernel.bpf_stats_enabled=1) for as
    long as the returned fd stays open; closing it restores the previous state, even if the
    process dies. Returns None where the kernel (< 5.8) or the permissions don't allow it."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)  # type = BPF_STATS_RUN_TIME (0)
    fd = libc.syscall(nr, _BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    return fd if fd >= 0 else None
