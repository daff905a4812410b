"""Compile out of process: a short-lived child compiles, loads and attaches probes with BCC and
hands every descriptor to the agent over a Unix socket (SCM_RIGHTS); the agent then holds the
programs, maps and tracepoint perf events and never imports ``bcc``.

- At start one child compiles every probe, one after another (``compile_batch``: one
  interpreter and one LLVM start-up instead of one per probe), handing each over as soon as it
  is attached; a retry runs one child for one probe (``compile_in_child``).

- The child is a fresh interpreter started by exec (``compile_child.py``), never a fork of
  the multithreaded agent; it dies with the thread that started it (``PR_SET_PDEATHSIG``).
- One child at a time (a lock), each compiling one probe at a time, so the compile peak is
  that of one child.
- ``timeout``: a child past it is killed; a child that crashes, hangs or is killed leaves
  nothing loaded (its descriptors die with it) and the probe down with the reason.
- Received descriptors are close-on-exec (``MSG_CMSG_CLOEXEC``): a stray subprocess never
  keeps programs attached.
"""

from __future__ import annotations

import errno
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
from typing import Callable, Mapping, Sequence

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
    tree: str = ""  # the header tree it compiled against
    child_euid: int | None = None  # 65534: BCC skipped /proc/kallsyms (compile_child)
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


@dataclass(frozen=True)
class HeaderTree:
    """One header tree the child may compile a probe against: its label (reported), its
    environment (``BCC_KERNEL_SOURCE``; empty: BCC's default) and flags of its own."""

    label: str
    env: Mapping[str, str] = field(default_factory=dict)
    cflags: Sequence[str] = ()


@dataclass(frozen=True)
class CompileRequest:
    """What the compiling child needs for one probe (its C text with the includes pasted in)."""

    name: str
    text: str
    cflags: Sequence[str]
    maps: Sequence[str]
    trees: Sequence[HeaderTree] = ()  # tried in order on compile errors; () : BCC's default

    def message(self) -> dict:
        return {"name": self.name, "text": self.text, "cflags": list(self.cflags),
                "maps": list(self.maps),
                "trees": [{"label": t.label, "env": dict(t.env), "cflags": list(t.cflags)}
                          for t in self.trees]}


def compile_in_child(req: CompileRequest, timeout: float,
                     argv: Sequence[str] | None = None) -> Loaded:
    """Run one compiling child for one probe and return what it handed over; raises
    CompileFailed."""
    out: dict[str, Loaded | CompileFailed] = {}
    compile_batch([req], timeout, out.__setitem__, argv)
    r = out[req.name]
    if isinstance(r, CompileFailed):
        raise r
    return r


def compile_batch(reqs: Sequence[CompileRequest], timeout: float,
                  on_result: Callable[[str, "Loaded | CompileFailed"], None],
                  argv: Sequence[str] | None = None) -> None:
    """One child compiles ``reqs`` one after another; ``on_result(name, Loaded or
    CompileFailed)`` is called for each as its descriptors arrive (or it fails), in order, so
    a probe is up as soon as it is attached. ``on_result`` owns a Loaded it is given.

    ``timeout`` applies to each probe (counted from the previous one's reply). A child that
    crashes, is killed or passes the timeout fails the probe it was compiling with the reason,
    and every later one with "not compiled"; what it had loaded for them goes with it.

    ``argv``: the child's command (default: this interpreter running ``compile_child.py``);
    the socket's descriptor number and this process's pid are appended."""
    if not reqs:
        return
    with _LOCK:
        _run_child(list(reqs), timeout, on_result, argv)


def _deliver(on_result, name: str, result) -> None:
    try:
        on_result(name, result)
    except Exception:  # noqa: BLE001 - a bug in the receiver must not leak descriptors
        log.exception("probe %s: handing over the loaded probe failed", name)
        if isinstance(result, Loaded):
            result.close()


def _run_child(reqs: list[CompileRequest], timeout: float, on_result, argv) -> None:
    t0 = time.monotonic()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err = tempfile.TemporaryFile()
    proc = None
    done = 0  # requests answered (delivered to on_result)

    def fail_rest(reason: str) -> None:
        """The probe being compiled fails with the reason; every later one is not compiled."""
        nonlocal done
        failed = reqs[done].name
        _deliver(on_result, failed, CompileFailed(reason))
        for r in reqs[done + 1:]:
            _deliver(on_result, r.name, CompileFailed(
                f"not compiled: the compiling child stopped at {failed} ({reason})"))
        done = len(reqs)

    try:
        cmd = list(argv or [sys.executable, "-s", str(CHILD)])
        cmd += [str(theirs.fileno()), str(os.getpid())]
        try:
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, close_fds=True)
        except OSError as e:
            fail_rest(f"cannot start the compiling child: {e}")
            return
        theirs.close()
        try:
            ours.sendall(json.dumps({"probes": [r.message() for r in reqs]}).encode())
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                proc.kill()
                fail_rest(f"the compile request is too large for the socket ({e})")
                return
            # otherwise the child is gone already: its exit status says why, below
        last = t0
        while done < len(reqs):
            req = reqs[done]
            reply, fds, why = _receive(ours, proc, last + timeout, err)
            if reply is None:
                if why == "timeout":
                    proc.kill()
                    proc.wait()
                    why = (f"compile timed out after {timeout:g}s (child killed; compile_timeout)"
                           + _detail(err))
                fail_rest(why)
                return
            now = time.monotonic()
            if reply.get("name", req.name) != req.name:
                _close_all(fds)
                fail_rest(f"the compiling child answered for {reply.get('name')!r}, not {req.name!r}")
                return
            _deliver(on_result, req.name, _loaded(reply, fds, proc.pid, now - last))
            done += 1
            last = now
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
        if theirs.fileno() >= 0:
            theirs.close()
        err.close()


def _receive(sock: socket.socket, proc: subprocess.Popen, deadline: float, err):
    """(reply, fds, "") for the next message; (None, [], why) when the child is gone or the
    deadline passed ("timeout")."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, [], "timeout"
        sock.settimeout(min(left, 0.5))
        try:
            msg, fds, flags, _ = socket.recv_fds(sock, 1 << 16, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except socket.timeout:
            if proc.poll() is not None:
                msg, fds = b"", []  # died without a word; EOF would follow, no need to wait
            else:
                continue
        except (ConnectionResetError, BrokenPipeError):
            msg, fds = b"", []
        else:
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                _close_all(fds)
                return None, [], "the compiling child's reply was truncated"
        if not msg:
            _close_all(fds)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return None, [], (f"compiling child {_exit_text(proc.returncode)} before handing "
                              "over" + _detail(err))
        for fd in fds:
            os.set_inheritable(fd, False)
        try:
            return json.loads(msg), fds, ""
        except ValueError:
            _close_all(fds)
            return None, [], f"unreadable reply from the compiling child: {msg[:200]!r}"


def _loaded(reply: dict, fds: list[int], pid: int, seconds: float) -> "Loaded | CompileFailed":
    if not reply.get("ok"):
        _close_all(fds)
        return CompileFailed(reply.get("error") or "compile failed")
    try:
        names = [*reply["maps"], *reply["progs"], *reply["events"]]
    except (KeyError, TypeError):
        _close_all(fds)
        return CompileFailed("the compiling child's reply names no descriptors")
    if len(names) != len(fds):
        _close_all(fds)
        return CompileFailed(f"the child named {len(names)} descriptors but sent {len(fds)}")
    it = iter(fds)
    return Loaded(maps={n: next(it) for n in reply["maps"]},
                  progs={n: next(it) for n in reply["progs"]},
                  events={n: next(it) for n in reply["events"]},
                  child_pid=pid, diag=reply.get("diag", ""), seconds=seconds,
                  child_rss_hwm_kb=reply.get("hwm_kb"), tree=reply.get("tree", ""),
                  child_euid=reply.get("euid"))


def _detail(err) -> str:
    t = _tail(err)
    return f": {t}" if t else ""


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
