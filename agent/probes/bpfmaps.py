"""A small ``bpf(2)`` layer: read the maps of programs another process loaded, by descriptor.

The agent holds the descriptors a compiling child handed over (``agent.probes.loader``) and
reads maps with the syscall itself, so ``bcc`` (and with it clang/LLVM) is never imported here:

- ``BPF_OBJ_GET_INFO_BY_FD``: the kernel's own type, key/value size, max_entries and flags of a
  map (the contract check after load) and the id and name of a program;
- ``BPF_MAP_LOOKUP_ELEM``, ``BPF_MAP_GET_NEXT_KEY`` (from a NULL key);
- ``BPF_MAP_LOOKUP_BATCH`` (5.6+), falling back to the two above on EINVAL/EOPNOTSUPP;
- ``mmap`` of ``BPF_F_MMAPABLE`` arrays.

Per-CPU values come as ``round_up(value_size, 8)`` bytes per possible CPU
(``/sys/devices/system/cpu/possible``), the layout the kernel copies out.

:class:`Maps` is what a probe's ``snapshot`` reads through: maps by their declared name,
values decoded with ``struct`` formats and summed over CPUs for per-CPU maps.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
from array import array
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351,
            "riscv64": 280}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24

BPF_F_MMAPABLE = 1 << 10

# map types (include/uapi/linux/bpf.h)
MAP_TYPES = {1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
             6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash",
             10: "lru_percpu_hash", 11: "lpm_trie", 27: "ringbuf"}
PERCPU_TYPES = {5, 6, 10}
ARRAY_TYPES = {2, 6}

_ENOTSUPP = 524
BATCH_CHUNK = 1024  # entries per BPF_MAP_LOOKUP_BATCH call  # the kernel-internal "not supported" some map types return for batch ops


class BpfError(OSError):
    """A bpf(2) call failed (errno and what was attempted)."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _nr() -> int:
    m = platform.machine()
    try:
        return _SYS_BPF[m]
    except KeyError:
        raise BpfError(errno.ENOSYS, f"bpf(2) syscall number unknown for machine {m!r}") from None


_NR = None


def bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    """``bpf(cmd, &attr, sizeof attr)``; raises :class:`BpfError` naming ``what``."""
    global _NR
    if _NR is None:
        _NR = _nr()
    r = _libc.syscall(ctypes.c_long(_NR), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise BpfError(e, f"{what}: {os.strerror(e)}")
    return int(r)


def _attr(size: int = 128) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def parse_cpu_list(text: str) -> int:
    """``0-3,5`` (a /sys cpu list) -> how many CPUs it names (highest + 1, as the kernel's
    per-CPU copies are indexed); ValueError quoting the text otherwise."""
    top = -1
    try:
        for part in text.strip().split(","):
            lo, dash, hi = part.partition("-")
            top = max(top, int(lo), int(hi) if dash else -1)
    except ValueError:
        raise ValueError(f"not a CPU list: {text!r}") from None
    if top < 0:
        raise ValueError(f"not a CPU list: {text!r}")
    return top + 1


_POSSIBLE: int | None = None


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    global _POSSIBLE
    if _POSSIBLE is None:
        with open(path) as f:
            _POSSIBLE = parse_cpu_list(f.read())
    return _POSSIBLE


def round8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map (``struct bpf_map_info``)."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPES.get(self.type, f"type {self.type}")

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    @property
    def mmapable(self) -> bool:
        return bool(self.flags & BPF_F_MMAPABLE)


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    name: str


def _obj_info(fd: int, size: int, what: str) -> bytes:
    info = ctypes.create_string_buffer(size)
    attr = _attr(16)
    struct.pack_into("=IIQ", attr, 0, fd, size, ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, what)
    return info.raw


def map_info(fd: int) -> MapInfo:
    raw = _obj_info(fd, 88, f"BPF_OBJ_GET_INFO_BY_FD(map fd {fd})")
    typ, mid, ks, vs, n, flags = struct.unpack_from("=6I", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode("ascii", "replace")
    return MapInfo(typ, mid, ks, vs, n, flags, name)


def prog_info(fd: int) -> ProgInfo:
    raw = _obj_info(fd, 232, f"BPF_OBJ_GET_INFO_BY_FD(prog fd {fd})")
    typ, pid = struct.unpack_from("=II", raw, 0)
    name = raw[64:80].split(b"\0", 1)[0].decode("ascii", "replace")
    return ProgInfo(typ, pid, name)


def prog_loaded(prog_id: int) -> bool:
    """Whether a program with this id is still loaded (needs CAP_SYS_ADMIN; tests use it)."""
    attr = _attr(16)
    struct.pack_into("=I", attr, 0, prog_id)
    try:
        fd = bpf(BPF_PROG_GET_FD_BY_ID, attr, f"BPF_PROG_GET_FD_BY_ID({prog_id})")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    os.close(fd)
    return True


class BpfMap:
    """One map, by a descriptor this object owns (closed by :meth:`close`)."""

    def __init__(self, fd: int, name: str, info: MapInfo | None = None,
                 cpus: int | None = None) -> None:
        self.fd = fd
        self.name = name
        self.info = info or map_info(fd)
        self.cpus = (cpus or possible_cpus()) if self.info.percpu else 1
        self.stride = round8(self.info.value_size) if self.info.percpu else self.info.value_size
        self.value_bytes = self.stride * self.cpus
        self._mm: mmap.mmap | None = None
        self.batch_ok: bool | None = None  # None: not tried yet

    def __repr__(self) -> str:
        i = self.info
        return (f"BpfMap({self.name!r}, {i.type_name}, key {i.key_size}, value {i.value_size}, "
                f"entries {i.max_entries}, fd {self.fd})")

    # -- single elements -----------------------------------------------------------------
    def _elem_attr(self, key, out) -> ctypes.Array:
        attr = _attr(32)
        struct.pack_into("=IIQQQ", attr, 0, self.fd, 0, _addr(key), _addr(out), 0)
        return attr

    def lookup(self, key: bytes) -> bytes | None:
        """The raw value (per-CPU: all CPUs' copies, ``stride`` bytes each), None if absent."""
        if len(key) != self.info.key_size:
            raise ValueError(f"map {self.name}: key of {len(key)} bytes, expected {self.info.key_size}")
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(self.value_bytes)
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, self._elem_attr(k, v), f"lookup in {self.name}")
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def keys(self) -> Iterator[bytes]:
        """Every key, by GET_NEXT_KEY from a NULL key (a key deleted meanwhile restarts the
        walk in the kernel; fine for maps the agent never deletes from)."""
        ks = self.info.key_size
        cur = None
        nxt = ctypes.create_string_buffer(ks)
        for _ in range(self.info.max_entries + 1):
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, self._elem_attr(cur, nxt), f"next key in {self.name}")
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, ks)

    def _items_by_key(self) -> list[tuple[bytes, bytes]]:
        out = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out

    # -- batches -------------------------------------------------------------------------
    def _raw_batch(self, chunk: int = BATCH_CHUNK) -> tuple[bytes, bytes]:
        """Batches of ``chunk`` entries (a big sparse hash costs what it holds, not its
        max_entries); a hash bucket larger than the chunk (ENOSPC) retries with a bigger one."""
        ks, vb, n = self.info.key_size, self.value_bytes, max(1, min(chunk, self.info.max_entries))
        keys = ctypes.create_string_buffer(ks * n)
        vals = ctypes.create_string_buffer(vb * n)
        token = max(ks, 8)
        in_b, out_b = None, ctypes.create_string_buffer(token)
        kparts, vparts, total = [], [], 0
        while True:
            attr = _attr(56)
            struct.pack_into("=QQQQIIQQ", attr, 0, _addr(in_b), _addr(out_b), _addr(keys),
                             _addr(vals), n, self.fd, 0, 0)
            done = False
            try:
                bpf(BPF_MAP_LOOKUP_BATCH, attr, f"batch lookup in {self.name}")
            except BpfError as e:
                if e.errno == errno.ENOSPC and n < self.info.max_entries:
                    return self._raw_batch(chunk * 8)
                if e.errno != errno.ENOENT:
                    raise
                done = True
            got = struct.unpack_from("=I", attr, 32)[0]
            if got:
                kparts.append(ctypes.string_at(keys, got * ks))
                vparts.append(ctypes.string_at(vals, got * vb))
                total += got
            if done or got == 0 or total >= self.info.max_entries:
                return b"".join(kparts), b"".join(vparts)
            in_b = ctypes.create_string_buffer(out_b.raw, token)

    def raw(self) -> tuple[bytes, bytes]:
        """Every key and every raw value, each concatenated (``key_size`` and ``value_bytes``
        per entry): one batched call where the kernel has it, else key by key."""
        if self.batch_ok is not False:
            try:
                out = self._raw_batch()
                self.batch_ok = True
                return out
            except BpfError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP, errno.ENOSYS):
                    raise
                self.batch_ok = False
        pairs = self._items_by_key()
        return b"".join(k for k, _ in pairs), b"".join(v for _, v in pairs)

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, raw value)."""
        kr, vr = self.raw()
        ks, vb = self.info.key_size, self.value_bytes
        return [(kr[i * ks:(i + 1) * ks], vr[i * vb:(i + 1) * vb]) for i in range(len(kr) // ks)]

    # -- mmap-ed arrays ------------------------------------------------------------------
    def words(self, first: int, count: int) -> array:
        """``count`` u64 entries from ``first`` of a BPF_F_MMAPABLE u64 array (one copy from
        shared memory, no syscall)."""
        if self._mm is None:
            i = self.info
            if not i.mmapable or i.value_size != 8 or i.type != 2:
                raise BpfError(errno.EINVAL, f"map {self.name} is not an mmap-able u64 array")
            size = i.max_entries * 8
            size += -size % mmap.PAGESIZE
            self._mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        if first < 0 or first + count > self.info.max_entries:
            raise IndexError(f"map {self.name}: words {first}..{first + count} beyond "
                             f"{self.info.max_entries} entries")
        out = array("Q")
        out.frombytes(self._mm[first * 8:(first + count) * 8])
        return out

    # -- decoding ------------------------------------------------------------------------
    def value(self, raw: bytes, fmt: str) -> tuple:
        """A raw value decoded with ``fmt`` (native, no padding: ``=``); per-CPU values summed
        field by field over CPUs."""
        st = struct.Struct("=" + fmt)
        if not self.info.percpu:
            return st.unpack_from(raw, 0)
        sums = [0] * len(st.unpack_from(raw, 0))
        for c in range(self.cpus):
            for i, x in enumerate(st.unpack_from(raw, c * self.stride)):
                sums[i] += x
        return tuple(sums)

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Maps:
    """A loaded probe's maps by declared name: what ``snapshot`` reads.

    ``items(name, key_fmt, value_fmt)``: every entry decoded with ``struct`` formats (None:
    raw bytes); a one-field format gives the bare value. Per-CPU values are summed over CPUs.
    ``lookup(name, key, value_fmt)`` one entry by raw key (None when absent);
    ``words(name, first, count)`` a run of an mmap-able u64 array;
    ``lost(name)`` the sum of a one-slot per-CPU u64 counter."""

    def __init__(self, maps: Mapping[str, BpfMap]) -> None:
        self._maps = dict(maps)

    def __getitem__(self, name: str) -> BpfMap:
        try:
            return self._maps[name]
        except KeyError:
            raise KeyError(f"map {name} not among the probe's maps "
                           f"({', '.join(sorted(self._maps))})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._maps

    def names(self) -> list[str]:
        return list(self._maps)

    @staticmethod
    def _one(t: tuple):
        return t[0] if len(t) == 1 else t

    def items(self, name: str, key_fmt: str | None = None,
              value_fmt: str | None = None) -> list[tuple]:
        m = self[name]
        kr, vr = m.raw()
        if not kr:
            return []
        ks, vb = m.info.key_size, m.value_bytes
        n = len(kr) // ks
        if key_fmt:
            kst = struct.Struct("=" + key_fmt)
            keys = list(kst.iter_unpack(kr))
            if len(keys[0]) == 1:
                keys = [k for (k,) in keys]
        else:
            keys = [kr[i * ks:(i + 1) * ks] for i in range(n)]
        if not value_fmt:
            vals = [vr[i * vb:(i + 1) * vb] for i in range(n)]
        elif value_fmt.strip("Q") == "" and m.stride == 8 * len(value_fmt):
            cols = _sum_u64_columns(vr, len(value_fmt), m.cpus)
            vals = cols[0] if len(cols) == 1 else list(zip(*cols))
        else:
            vals = [self._one(m.value(vr[i * vb:(i + 1) * vb], value_fmt)) for i in range(n)]
        return list(zip(keys, vals))

    def lookup(self, name: str, key: bytes, value_fmt: str | None = None):
        m = self[name]
        raw = m.lookup(key)
        if raw is None or value_fmt is None:
            return raw
        return self._one(m.value(raw, value_fmt))

    def words(self, name: str, first: int, count: int) -> array:
        return self[name].words(first, count)

    def lost(self, name: str | None) -> int:
        if name is None:
            return 0
        v = self.lookup(name, struct.pack("=I", 0), "Q")
        return int(v or 0)

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for m in maps.values():
            m.close()


def check_contract(maps: Mapping[str, BpfMap], contract: Mapping[str, tuple[int, int]],
                   entries: Mapping[str, int], source: str) -> None:
    """The kernel's own key/value sizes and max_entries against the declaration; raises
    ValueError naming the map and both values."""
    for name, (ks, vs) in contract.items():
        m = maps.get(name)
        if m is None:
            raise ValueError(f"map {name} missing from {source}")
        got = (m.info.key_size, m.info.value_size)
        if got != (ks, vs):
            raise ValueError(f"map {name}: key/value size {got} (kernel) != declared {(ks, vs)}")
    for name, n in entries.items():
        m = maps.get(name)
        if m is not None and m.info.max_entries != n:
            raise ValueError(f"map {name}: max_entries {m.info.max_entries} (kernel) != "
                             f"declared {n}")


def _sum_u64_columns(raw: bytes, fields: int, cpus: int) -> list[list[int]]:
    """Entries of ``cpus`` copies of ``fields`` u64 each -> one column per field, each entry's
    field summed over the copies (column slices, no per-element Python loop)."""
    a = memoryview(raw).cast("Q")
    step = fields * cpus
    cols = []
    for f in range(fields):
        per_cpu = [a[c * fields + f::step] for c in range(cpus)]
        cols.append(per_cpu[0].tolist() if cpus == 1 else list(map(sum, zip(*per_cpu))))
    return cols


def sum_percpu(raw: bytes, stride: int, cpus: int, fmt: str = "Q") -> Sequence[int]:
    """Pure helper for tests: a per-CPU raw value summed field by field."""
    st = struct.Struct("=" + fmt)
    sums = [0] * len(st.unpack_from(raw, 0))
    for c in range(cpus):
        for i, x in enumerate(st.unpack_from(raw, c * stride)):
            sums[i] += x
    return sums
