"""The compiling child: one probe compiled, loaded and attached with BCC, its descriptors handed
to the agent, then gone.

Run as a fresh interpreter by ``agent.probes.loader`` (``python compile_child.py SOCK_FD
PARENT_PID``), never imported by the agent: this is the only place ``bcc`` (and with it
clang/LLVM) is loaded. Standard library and ``bcc`` only, so it starts fast.

Protocol on the SOCK_SEQPACKET socket: one request (JSON: ``probes``, a list of ``name``,
``text``, ``cflags``, ``maps``, ``env``), then one reply per probe, in order (JSON), each carrying
with SCM_RIGHTS the descriptors of the declared maps, the programs and the tracepoint perf
events, in the order the reply names them. ``{"ok": false, "error": ..., "diag": ...}`` when a
probe failed (nothing is sent for it; the next probe is compiled all the same). The agent's
start-up sends every probe in one request (one interpreter, one ``import bcc``, one LLVM
start-up for all of them; each probe still compiles alone, one after the other); a retry sends
one.

``bcc`` is imported before the request is read, while the agent prepares it.

It leaves by ``os._exit``: BCC's atexit cleanup would disable the perf events it shared, and
every compiled module stays referenced until then for the same reason (a module's cleanup
disables its events).
"""

import ctypes
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import traceback

PR_SET_PDEATHSIG = 1
_CAP_V3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3
_NOBODY = 65534
MAX_REPLY = 60000


def _skip_kallsyms() -> str:
    """Leave effective uid 0 (for nobody), keeping file access as root (fsuid 0) and every
    capability this process has; "" when done, else why not (then nothing changed).

    BCC reads all of /proc/kallsyms into a hash table on every compile (more than half of a
    compile's time here: 120,000 symbols) only to learn whether ``bpf_probe_read_kernel``
    exists, which our programs never call; it skips that when the effective uid is not 0.
    Root in the container has no CAP_SETUID (the DaemonSet's grant): there this fails and the
    compile is merely slower. Must run before PR_SET_PDEATHSIG (a credential change clears it)."""
    if os.geteuid() != 0:
        return "not root"
    libc = ctypes.CDLL(None, use_errno=True)
    hdr = ctypes.create_string_buffer(struct.pack("=Ii", _CAP_V3, 0), 8)
    data = ctypes.create_string_buffer(24)
    if libc.capget(hdr, data) != 0:
        return f"capget: {os.strerror(ctypes.get_errno())}"
    e0, p0, i0, e1, p1, i1 = struct.unpack("=6I", data.raw)
    try:
        os.seteuid(_NOBODY)
    except OSError as e:
        return f"seteuid: {e.strerror}"
    libc.setfsuid(0)
    raised = ctypes.create_string_buffer(struct.pack("=6I", e0 | p0, p0, i0, e1 | p1, p1, i1), 24)
    hdr = ctypes.create_string_buffer(struct.pack("=Ii", _CAP_V3, 0), 8)
    if libc.capset(hdr, raised) != 0 or libc.setfsuid(-1) != 0:  # setfsuid(-1): reads it back
        why = os.strerror(ctypes.get_errno())
        os.seteuid(0)  # as it was: effective capabilities come back with euid 0
        return f"capset/setfsuid: {why}"
    return ""


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(3)


def _first_errors(text: str, limit: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    return " | ".join(lines[:limit])


def _bcc_once(text: str, cflags: list[str]):
    """(bpf or None, compiler output, exception or None); fd 2 captured while clang runs."""
    from bcc import BPF  # the distribution's python3-bpfcc, never PyPI's "bcc"

    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        err = None
        bpf = None
        try:
            bpf = BPF(text=text.encode(), cflags=cflags)
        except Exception as e:  # BCC raises bare Exception for compile and attach errors
            err = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        diag = tmp.read().decode("utf-8", "replace")
    return bpf, diag, err


def _compile(req: dict):
    """(bpf, compiler output, the header tree's label) or raises.

    ``trees``: the header trees to try, in order, each ``{"label", "env", "cflags"}`` (its
    BCC_KERNEL_SOURCE and its own flags). A compile error with one tree moves on to the next;
    any other failure (an attach refused, a map the kernel will not create) does not."""
    trees = req.get("trees") or [{"label": "", "env": req.get("env") or {}, "cflags": []}]
    tried = []
    for i, tree in enumerate(trees):
        os.environ.pop("BCC_KERNEL_SOURCE", None)  # each tree sets its own (none: BCC's default)
        os.environ.update(tree.get("env") or {})
        bpf, diag, err = _bcc_once(req["text"], list(req["cflags"]) + list(tree.get("cflags") or []))
        if err is None:
            if tried:
                diag = "\n".join(tried + [diag])
            return bpf, diag, tree.get("label", "")
        detail = _first_errors(diag)
        message = f"{err}" + (f": {detail}" if detail else "")
        if "Failed to compile" not in str(err) or i == len(trees) - 1:
            if tried:
                message += " (after " + "; ".join(tried) + ")"
            raise RuntimeError(message)
        tried.append(f"with the {tree.get('label') or 'first'} header tree: {message}")
    raise RuntimeError("no header tree to compile with")


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


_KEEP = []  # every compiled module, referenced until os._exit (see the module doc)


def serve_one(sock: socket.socket, req: dict) -> bool:
    """Compile, load and attach one probe and send its descriptors; False when it failed."""
    diag = ""
    try:
        bpf, diag, tree = _compile(req)
        _KEEP.append(bpf)
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
        _reply(sock, {"name": req.get("name"), "ok": False, "error": str(e) or type(e).__name__,
                      "diag": diag or traceback.format_exc(limit=3)})
        return False
    _reply(sock, {"name": req["name"], "ok": True, "maps": maps, "progs": progs,
                  "events": events, "diag": diag, "pid": os.getpid(), "hwm_kb": _hwm_kb(),
                  "tree": tree, "euid": os.geteuid()}, fds)
    return True


def serve(sock: socket.socket) -> int:
    try:
        import bcc  # noqa: F401  (libbcc and LLVM load while the agent prepares the request)
    except ImportError:
        pass  # reported per probe by _compile's own import
    req = json.loads(sock.recv(1 << 22))
    probes = req["probes"] if "probes" in req else [req]
    results = [serve_one(sock, r) for r in probes]
    return 0 if all(results) else 1


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    _skip_kallsyms()
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
