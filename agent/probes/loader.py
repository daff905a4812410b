"""Compile out of process: a short-lived child compiles, loads and attaches one probe with BCC
and hands every descriptor to the agent over a Unix socket (SCM_RIGHTS); the agent then holds
the programs, maps and tracepoint perf events and never imports ``bcc``.

- The child is a fresh interpreter started by exec (``compile_child.py``), never a fork of
  the multithreaded agent; it dies with the thread that started it (``PR_SET_PDEATHSIG``).
- One child at a time (a lock), so the compile peak is that of one child.
- ``timeout``: a child past it is killed; a child that crashes, hangs or is killed leaves
  nothing loaded (its descriptors die with it) and the probe down with the reason.
- Received descriptors are close-on-exec (``MSG_CMSG_CLOEXEC``): a stray subprocess never
  keeps programs attached.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("compile_child.py")
_LOCK = threading.Lock()
MAX_FDS = 250


class CompileFailed(Exception):
    """The child could not hand over a loaded probe (the message is the probe's down reason)."""


@dataclass
class Loaded:
    """Descriptors of one loaded probe, owned by the agent until :meth:`close`."""

    maps: dict[str, int]
    progs: dict[str, int]
    events: dict[str, int]
    child_pid: int = 0
    diag: str = ""
    seconds: float = 0.0
    child_rss_hwm_kb: int | None = None
    closed: bool = field(default=False, repr=False)

    def fds(self) -> list[int]:
        return [*self.maps.values(), *self.progs.values(), *self.events.values()]

    def close(self) -> None:
        """Close every descriptor: the events first (detach), then programs and maps."""
        if self.closed:
            return
        self.closed = True
        for fd in [*self.events.values(), *self.progs.values(), *self.maps.values()]:
            try:
                os.close(fd)
            except OSError:
                pass


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _tail(f, limit: int = 600) -> str:
    try:
        f.seek(0)
        text = f.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-limit:]


def compile_in_child(name: str, text: str, cflags: Sequence[str], maps: Sequence[str],
                     timeout: float, env: Mapping[str, str] | None = None,
                     argv: Sequence[str] | None = None) -> Loaded:
    """Run one compiling child and return what it handed over; raises CompileFailed.

    ``argv``: the child's command (default: this interpreter running ``compile_child.py``);
    the socket's descriptor number and this process's pid are appended."""
    with _LOCK:
        return _run_child(name, text, cflags, maps, timeout, env or {}, argv)


def _run_child(name, text, cflags, maps, timeout, env, argv) -> Loaded:
    t0 = time.monotonic()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err = tempfile.TemporaryFile()
    proc = None
    try:
        cmd = list(argv or [sys.executable, "-s", str(CHILD)])
        cmd += [str(theirs.fileno()), str(os.getpid())]
        try:
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, close_fds=True)
        except OSError as e:
            raise CompileFailed(f"cannot start the compiling child: {e}") from e
        theirs.close()
        try:
            ours.sendall(json.dumps({"name": name, "text": text, "cflags": list(cflags),
                                     "maps": list(maps), "env": dict(env)}).encode())
        except OSError:
            pass  # the child is gone already: its exit status says why, below
        deadline = t0 + timeout
        msg, fds = b"", []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise CompileFailed(f"compile timed out after {timeout:g}s (child killed; "
                                    "compile_timeout)" + _detail(err))
            ours.settimeout(min(left, 0.5))
            try:
                msg, fds, flags, _ = socket.recv_fds(ours, 1 << 16, MAX_FDS,
                                                     socket.MSG_CMSG_CLOEXEC)
            except socket.timeout:
                if proc.poll() is not None:
                    break  # died without a word; EOF would follow, no need to wait for it
                continue
            except (ConnectionResetError, BrokenPipeError):
                msg, fds = b"", []
                break
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                _close_all(fds)
                raise CompileFailed("the compiling child's reply was truncated")
            break
        if not msg:
            _close_all(fds)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise CompileFailed(f"compiling child {_exit_text(proc.returncode)} before handing "
                                "over" + _detail(err))
        for fd in fds:
            os.set_inheritable(fd, False)
        try:
            reply = json.loads(msg)
        except ValueError:
            _close_all(fds)
            raise CompileFailed(f"unreadable reply from the compiling child: {msg[:200]!r}") from None
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not reply.get("ok"):
            _close_all(fds)
            raise CompileFailed(reply.get("error") or "compile failed")
        names = [*reply["maps"], *reply["progs"], *reply["events"]]
        if len(names) != len(fds):
            _close_all(fds)
            raise CompileFailed(f"the child named {len(names)} descriptors but sent {len(fds)}")
        it = iter(fds)
        loaded = Loaded(maps={n: next(it) for n in reply["maps"]},
                        progs={n: next(it) for n in reply["progs"]},
                        events={n: next(it) for n in reply["events"]},
                        child_pid=proc.pid, diag=reply.get("diag", ""),
                        seconds=time.monotonic() - t0, child_rss_hwm_kb=reply.get("hwm_kb"))
        return loaded
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
        if theirs.fileno() >= 0:
            theirs.close()
        err.close()


def _detail(err) -> str:
    t = _tail(err)
    return f": {t}" if t else ""


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
