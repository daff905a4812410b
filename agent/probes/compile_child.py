"""The compiling child: one probe compiled, loaded and attached with BCC, its descriptors handed
to the agent, then gone.

Run as a fresh interpreter by ``agent.probes.loader`` (``python compile_child.py SOCK_FD
PARENT_PID``), never imported by the agent: this is the only place ``bcc`` (and with it
clang/LLVM) is loaded. Standard library and ``bcc`` only, so it starts fast.

Protocol on the SOCK_SEQPACKET socket: one request (JSON: ``name``, ``text``, ``cflags``,
``maps``, ``env``), one reply (JSON) carrying with SCM_RIGHTS the descriptors of the declared
maps, the programs and the tracepoint perf events, in the order the reply names them.
``{"ok": false, "error": ..., "diag": ...}`` when something failed (nothing is sent then,
and everything loaded goes with this process).

It leaves by ``os._exit``: BCC's atexit cleanup would disable the perf events it shared.
"""

import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import traceback

PR_SET_PDEATHSIG = 1
MAX_REPLY = 60000


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(3)


def _first_errors(text: str, limit: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    return " | ".join(lines[:limit])


def _compile(req: dict):
    """(bpf, compiler output) or raises; fd 2 captured while clang runs."""
    from bcc import BPF  # the distribution's python3-bpfcc, never PyPI's "bcc"

    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        err = None
        bpf = None
        try:
            bpf = BPF(text=req["text"].encode(), cflags=req["cflags"])
        except Exception as e:  # BCC raises bare Exception for compile and attach errors
            err = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        diag = tmp.read().decode("utf-8", "replace")
    if err is not None:
        detail = _first_errors(diag)
        raise RuntimeError(f"{err}" + (f": {detail}" if detail else ""))
    return bpf, diag


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reply(sock: socket.socket, msg: dict, fds=()) -> None:
    data = json.dumps(msg).encode()
    if len(data) > MAX_REPLY:
        msg["diag"] = msg.get("diag", "")[-2000:]
        data = json.dumps(msg).encode()
    socket.send_fds(sock, [data], list(fds))


def serve(sock: socket.socket) -> int:
    req = json.loads(sock.recv(1 << 22))
    for k, v in (req.get("env") or {}).items():
        os.environ[k] = v
    try:
        bpf, diag = _compile(req)
        maps, fds = [], []
        for name in req["maps"]:
            try:
                table = bpf[name.encode()]
            except KeyError:
                raise RuntimeError(f"map {name} missing from {req['name']}") from None
            maps.append(name)
            fds.append(table.map_fd)
        progs = []
        for fname, fn in bpf.funcs.items():
            progs.append(fname.decode() if isinstance(fname, bytes) else fname)
            fds.append(fn.fd)
        events = []
        for tp, fd in bpf.tracepoint_fds.items():
            events.append(tp.decode() if isinstance(tp, bytes) else tp)
            fds.append(fd)
        if not events:
            raise RuntimeError(f"{req['name']}: no tracepoint attached")
    except Exception as e:  # noqa: BLE001 - every failure goes back as a reason
        _reply(sock, {"ok": False, "error": str(e) or type(e).__name__,
                      "diag": locals().get("diag", "") or traceback.format_exc(limit=3)})
        return 1
    _reply(sock, {"ok": True, "maps": maps, "progs": progs, "events": events, "diag": diag,
                  "pid": os.getpid(), "hwm_kb": _hwm_kb()}, fds)
    return 0


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent)
    sock = socket.socket(fileno=fd)
    try:
        code = serve(sock)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 2
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
