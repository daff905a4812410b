"""Per-program kernel run time of BPF programs another process holds (a peer tool such as
libbpf-tools' runqlat), read while BPF_ENABLE_STATS is on, so they can be compared with the
agent's programs on the same events.

For each fd of the process that is a BPF program: the fd is copied with pidfd_getfd(2) and its
name, run_time_ns and run_cnt are read with BPF_OBJ_GET_INFO_BY_FD. Needs root (ptrace access
to the peer) and kernel >= 5.6.
"""

from __future__ import annotations

import ctypes
import os
import struct

SYS_BPF = 321  # x86_64
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_SIZE = 256  # struct bpf_prog_info is smaller on every kernel this runs on; the kernel zero-fills
NAME_OFF, NAME_LEN = 64, 16  # char name[BPF_OBJ_NAME_LEN] in struct bpf_prog_info
RUN_TIME_OFF, RUN_CNT_OFF = 192, 200  # u64 run_time_ns, run_cnt (5.1+)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _prog_info(fd: int) -> tuple[str, int, int] | None:
    buf = ctypes.create_string_buffer(INFO_SIZE)
    attr = struct.pack("IIQ", fd, INFO_SIZE, ctypes.addressof(buf))
    abuf = ctypes.create_string_buffer(attr, 16)
    if _libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, abuf, 16) != 0:
        return None
    raw = buf.raw
    name = raw[NAME_OFF:NAME_OFF + NAME_LEN].split(b"\0", 1)[0].decode()
    run_time, run_cnt = struct.unpack_from("QQ", raw, RUN_TIME_OFF)
    return name, run_time, run_cnt


def program_stats(pid: int) -> dict[str, tuple[int, int]]:
    """program name -> (run_time_ns, run_cnt) of every BPF program fd held by ``pid``."""
    out: dict[str, tuple[int, int]] = {}
    pidfd = _libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), f"pidfd_open({pid})")
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:bpf-prog":
                    continue
            except OSError:
                continue
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            try:
                info = _prog_info(fd)
            finally:
                os.close(fd)
            if info is not None:
                out[info[0]] = (info[1], info[2])
    finally:
        os.close(pidfd)
    return out
