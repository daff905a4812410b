"""A user-space packet relay between two TUN devices: path delay, jitter and loss without netem.

This kernel has no netem (DESIGN §5), so delay cannot come from a qdisc. Instead two network
namespaces are joined by *no* link at all: each holds one TUN device (a point-to-point /32 pair
of addresses), and one relay process holds both TUN file descriptors. A packet that namespace A
routes out of its TUN device is read by the relay, held for the configured delay and written into
B's TUN device, where B's kernel receives it as if it had come off a wire (and the other way
round). Both TCP stacks therefore see real path delay: srtt, RTO, ping all include it.

Shaping is per direction (``ab``: A→B, ``ba``: B→A), each a :class:`Shape` of delay, jitter and
loss, changeable at run time.

**Jitter and order.** Each packet draws its own delay uniformly from [delay − jitter,
delay + jitter] (netem's default distribution), but its release time is never earlier than the
previous packet's of the same direction: packets leave in the order they came (FIFO). netem
reorders under jitter, and with ±5 ms at a few hundred packets per second that would turn most
of a TCP flow's segments into reordered ones (dup-ACKs, spurious fast retransmits), i.e. S1 would
measure reordering, not delay. The price: a packet that arrives right behind a long-delayed one
waits for it, so back-to-back packets of a burst share the burst leader's delay and a dense
flow's mean delay sits above ``delay`` (towards delay + jitter). Isolated packets (ping, one
request) see exactly the drawn delay. The relay reports what it actually held (``stats``), and
the witness test compares that with ping and ``ss -ti`` inside the namespaces.

The relay process is started by :class:`Relay` (``python -m experiment.relay``) and is
controlled by JSON lines on its stdin (answers on stdout):

    {"cmd": "set", "ab": {"delay_ms": 0}, "ba": {"delay_ms": 20, "jitter_ms": 5, "loss": 0.0}}
    {"cmd": "stats"}   -> per direction: packets, dropped, hold_ms p50/mean/p90/p99/max
    {"cmd": "reset"}   -> clears the statistics

The TUN devices are not persistent: they vanish when the relay's descriptors close, i.e. when the
process exits for any reason (also SIGKILL), so a relay can't leave a device behind. The process
also dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import fcntl
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
MAX_PACKET = 65536
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    """One direction's impairment: each packet held delay ± jitter (uniform), or dropped."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability of dropping a packet, 0..1

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or not 0 <= self.loss <= 1:
            raise ValueError(f"invalid shape {self}: delay and jitter >= 0, loss within 0..1")
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"jitter {self.jitter_ms} ms exceeds delay {self.delay_ms} ms")

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        unknown = set(d) - {"delay_ms", "jitter_ms", "loss"}
        if unknown:
            raise ValueError(f"unknown shape keys {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in d.items()})


class Direction:
    """Release-time rule of one direction (pure: time is passed in).

    ``admit(now)`` returns when the packet arriving at ``now`` leaves, or None when it is
    dropped. Release times never decrease (FIFO, see the module docstring)."""

    def __init__(self, rng: random.Random, shape: Shape = Shape()) -> None:
        self.rng = rng
        self.shape = shape
        self.last_release = 0.0

    def admit(self, now: float) -> float | None:
        s = self.shape
        if s.loss and self.rng.random() < s.loss:
            return None
        d = s.delay_ms
        if s.jitter_ms:
            d += self.rng.uniform(-s.jitter_ms, s.jitter_ms)
        t = max(now + d / 1000.0, self.last_release)
        self.last_release = t
        return t


class HoldStats:
    """Per-direction counts and the holds actually applied (arrival to write), in ms."""

    def __init__(self, keep: int = 200_000) -> None:
        self.packets = 0
        self.dropped = 0
        self.holds: collections.deque[float] = collections.deque(maxlen=keep)

    def summary(self) -> dict:
        h = sorted(self.holds)
        out: dict = {"packets": self.packets, "dropped": self.dropped, "held": len(h)}
        if h:
            def q(p: float) -> float:
                return round(h[min(len(h) - 1, int(p * len(h)))], 3)
            out["hold_ms"] = {"p10": q(0.10), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99),
                              "mean": round(sum(h) / len(h), 3), "max": round(h[-1], 3)}
        return out


# --- the relay process -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name`` (/run/netns/NAME)."""
    if not name:
        yield
        return
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def open_tun(name: str, netns: str | None) -> int:
    """A non-persistent TUN device ``name`` created in ``netns``; gone when the fd closes."""
    if len(name) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 characters")
    with in_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except BaseException:
            os.close(fd)
            raise
    return fd


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True, timeout=10)


def configure(netns: str, dev: str, local: str, peer: str, mtu: int) -> None:
    _ip(netns, "link", "set", "lo", "up")
    _ip(netns, "addr", "add", f"{local}/32", "peer", f"{peer}/32", "dev", dev)
    _ip(netns, "link", "set", dev, "mtu", str(mtu), "txqueuelen", "1000", "up")


class RelayLoop:
    def __init__(self, fa: int, fb: int, control_in: int, control_out, seed: int | None) -> None:
        rng = random.Random(seed)
        self.fds = {"ab": (fa, fb), "ba": (fb, fa)}
        self.dirs = {"ab": Direction(rng), "ba": Direction(rng)}
        self.queues: dict[str, collections.deque] = {"ab": collections.deque(),
                                                      "ba": collections.deque()}
        self.stats = {"ab": HoldStats(), "ba": HoldStats()}
        self.control_in = control_in
        self.control_out = control_out
        self._buf = b""
        self.running = True

    def _reply(self, doc: dict) -> None:
        self.control_out.write(json.dumps(doc) + "\n")
        self.control_out.flush()

    def _command(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            cmd = msg.get("cmd")
            if cmd == "set":
                for d in ("ab", "ba"):
                    if d in msg:
                        self.dirs[d].shape = Shape.from_dict(msg[d])
                self._reply({"ok": True, **{d: asdict(self.dirs[d].shape) for d in self.dirs}})
            elif cmd == "stats":
                self._reply({"ok": True, **{d: self.stats[d].summary() for d in self.stats}})
            elif cmd == "reset":
                self.stats = {"ab": HoldStats(), "ba": HoldStats()}
                self._reply({"ok": True})
            elif cmd == "quit":
                self.running = False
                self._reply({"ok": True})
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except (ValueError, TypeError, AttributeError) as e:
            self._reply({"ok": False, "error": str(e)})

    def _read_control(self) -> None:
        data = os.read(self.control_in, 65536)
        if not data:  # the controller is gone: so are we
            self.running = False
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                self._command(line)

    def _receive(self, d: str) -> None:
        src, _ = self.fds[d]
        for _ in range(256):  # bounded per round, so one busy direction can't starve the other
            try:
                pkt = os.read(src, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    return
                raise
            now = time.monotonic()
            st = self.stats[d]
            st.packets += 1
            t = self.dirs[d].admit(now)
            if t is None:
                st.dropped += 1
                continue
            self.queues[d].append((t, now, pkt))

    def _flush(self, now: float) -> None:
        for d, q in self.queues.items():
            _, dst = self.fds[d]
            while q and q[0][0] <= now:
                _, arrived, pkt = q.popleft()
                try:
                    os.write(dst, pkt)
                except OSError:  # device going away, or its queue full: the packet is lost
                    self.stats[d].dropped += 1
                    continue
                self.stats[d].holds.append((time.monotonic() - arrived) * 1000.0)

    def run(self) -> None:
        readers = [self.fds["ab"][0], self.fds["ba"][0], self.control_in]
        while self.running:
            now = time.monotonic()
            self._flush(now)
            due = [q[0][0] for q in self.queues.values() if q]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 0.5
            ready, _, _ = select.select(readers, [], [], timeout)
            for fd in ready:
                if fd == self.control_in:
                    self._read_control()
                elif fd == self.fds["ab"][0]:
                    self._receive("ab")
                else:
                    self._receive("ba")


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiment.relay", description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, metavar="NETNS:DEV:ADDR", help="side A")
    ap.add_argument("--b", required=True, metavar="NETNS:DEV:ADDR", help="side B")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (na, da, aa), (nb, db, ab) = (s.split(":") for s in (args.a, args.b))
    fa = open_tun(da, na)
    fb = open_tun(db, nb)
    configure(na, da, aa, ab, args.mtu)
    configure(nb, db, ab, aa, args.mtu)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    try:
        RelayLoop(fa, fb, sys.stdin.fileno(), sys.stdout, args.seed).run()
    finally:
        os.close(fa)
        os.close(fb)
    return 0


# --- the controller's side ---------------------------------------------------------------------


class Relay:
    """Starts and controls a relay process joining ``a_ns`` and ``b_ns`` through TUN devices.

    Both namespaces must exist. ``a_addr``/``b_addr`` become a point-to-point pair (/32 with
    peer) on the devices ``a_dev``/``b_dev`` (at most 15 characters, unique on the machine is
    not required: each lives in its own namespace, but unique names make ``ip link`` output
    readable). Use as a context manager; :meth:`close` is idempotent."""

    def __init__(self, a_ns: str, a_dev: str, a_addr: str, b_ns: str, b_dev: str, b_addr: str,
                 *, mtu: int = 1500, seed: int | None = None, timeout: float = 10.0) -> None:
        cmd = [sys.executable, "-m", "experiment.relay", "--a", f"{a_ns}:{a_dev}:{a_addr}",
               "--b", f"{b_ns}:{b_dev}:{b_addr}", "--mtu", str(mtu)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        self._timeout = timeout
        try:
            first = self._readline()
            if not json.loads(first).get("ready"):
                raise RuntimeError(f"relay did not start: {first}")
        except BaseException:
            self.close()
            raise

    def _readline(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], self._timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            err = ""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
            raise RuntimeError(f"relay gave no answer (exit {self.proc.poll()}): {err[-2000:]}")
        return line

    def _call(self, msg: dict) -> dict:
        if self.proc.poll() is not None:
            raise RuntimeError(f"relay exited with {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        doc = json.loads(self._readline())
        if not doc.get("ok"):
            raise ValueError(doc.get("error", doc))
        return doc

    def set(self, ab: Shape | None = None, ba: Shape | None = None) -> dict:
        """Change the shaping of one or both directions (a direction not given is unchanged)."""
        msg: dict = {"cmd": "set"}
        if ab is not None:
            msg["ab"] = asdict(ab)
        if ba is not None:
            msg["ba"] = asdict(ba)
        return self._call(msg)

    def stats(self) -> dict:
        return self._call({"cmd": "stats"})

    def reset(self) -> None:
        self._call({"cmd": "reset"})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                p.stdin.close()  # EOF on control: the loop ends and the devices go
            except OSError:
                pass
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdout, p.stderr, p.stdin):
            try:
                f.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
