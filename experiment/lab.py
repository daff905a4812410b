"""A two-namespace lab whose only path is the TUN relay: faults for the seed's scenarios.

``client`` (namespace A) and ``server`` (namespace B) are joined by no veth: each namespace holds
one TUN device and :class:`experiment.relay.Relay` carries every packet between them, so delay
and jitter (relay), loss (iptables ``statistic`` in A's INPUT), a rate limit (tbf on B's TUN
egress) and CPU pressure (busy processes) can be switched on and off while traffic runs.
Faults act on the server→client direction, as netem on the server node's interface would.

Names carry this process's pid and an index (``eeaxp<pid>x<index>a``) so concurrent labs don't
collide; namespaces of labs whose process is gone are removed at the next start. Everything a
lab makes lives inside its namespaces (devices, addresses, iptables rules, qdiscs) or is a child
process that is killed on teardown and also dies with its parent (PR_SET_PDEATHSIG), so
``close()`` -- run on exceptions and, through KeyboardInterrupt, on SIGINT/SIGTERM -- leaves
nothing behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from experiment.relay import REPO, Relay, Shape, _die_with_parent
from tests.bpf.netlab import TRAFFIC, Host, sh

PREFIX = "eeaxp"
LOSS_COMMENT = "eeaxp-loss"


def remove_stale_labs() -> None:
    """Namespaces of experiment labs whose creating process no longer exists."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)x\d+[ab]", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            sh("ip", "netns", "del", name, check=False)


class RelayLab:
    def __init__(self, index: int = 0, seed: int | None = None) -> None:
        remove_stale_labs()
        pid = os.getpid()
        subnet = 1 + (pid + index) % 250
        tag = f"{pid % 100000}x{index}"
        self.client = Host(f"{PREFIX}{pid}x{index}a", f"xp{tag}a", f"10.232.{subnet}.1", "")
        self.server = Host(f"{PREFIX}{pid}x{index}b", f"xp{tag}b", f"10.232.{subnet}.2", "")
        self.seed = seed
        self.relay: Relay | None = None
        self._procs: list[subprocess.Popen] = []
        self._hogs: list[subprocess.Popen] = []
        self._bulk: list[subprocess.Popen] = []
        self._loss = False
        self._rate = False

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "RelayLab":
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> None:
        for h in (self.client, self.server):
            sh("ip", "netns", "add", h.ns)
        c, s = self.client, self.server
        self.relay = Relay(c.ns, c.dev, c.ip4, s.ns, s.dev, s.ip4, seed=self.seed)

    def close(self) -> None:
        for p in self._hogs + self._bulk + self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._hogs + self._bulk + self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._hogs, self._bulk, self._procs = [], [], []
        if self.relay is not None:
            self.relay.close()
        for h in (self.client, self.server):
            sh("ip", "netns", "del", h.ns, check=False)

    def spawn(self, host: Host, *args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
        """A child process inside ``host``'s namespace, run from the repository root."""
        p = subprocess.Popen(host.cmd(*args), cwd=REPO, stdout=stdout, stderr=subprocess.PIPE,
                             text=True, preexec_fn=_die_with_parent)
        self._procs.append(p)
        return p

    # -- faults ------------------------------------------------------------------------------
    def set_delay(self, delay_ms: float, jitter_ms: float = 0.0, loss: float = 0.0) -> None:
        """Delay (± jitter) on the server→client direction, in the relay."""
        assert self.relay is not None
        self.relay.set(ba=Shape(delay_ms, jitter_ms, loss))

    def set_loss(self, probability: float) -> None:
        """Random loss of packets arriving at the client (iptables statistic, in A's INPUT);
        0 removes the rule."""
        if self._loss:
            self.client.run("iptables", "-w", "-D", "INPUT", *self._loss_rule())
            self._loss = False
        if probability > 0:
            self._loss_spec = probability
            self.client.run("iptables", "-w", "-A", "INPUT", *self._loss_rule())
            self._loss = True

    def _loss_rule(self) -> list[str]:
        return ["-i", self.client.dev, "-m", "statistic", "--mode", "random", "--probability",
                f"{self._loss_spec:.6f}", "-m", "comment", "--comment", LOSS_COMMENT, "-j", "DROP"]

    def loss_counter(self) -> int:
        from tests.bpf.netlab import iptables_counter

        return iptables_counter(self.client, "INPUT", LOSS_COMMENT) if self._loss else 0

    def set_rate(self, rate: str | None, burst: str = "64kb", latency: str = "50ms") -> None:
        """A tbf bottleneck on the server's TUN egress (server→client); None removes it."""
        if self._rate:
            self.server.run("tc", "qdisc", "del", "dev", self.server.dev, "root", check=False)
            self._rate = False
        if rate:
            self.server.run("tc", "qdisc", "add", "dev", self.server.dev, "root", "tbf", "rate",
                            rate, "burst", burst, "latency", latency)
            self._rate = True

    def start_bulk(self, port: int, seconds: float) -> None:
        """An unpaced bulk transfer server→client sharing the path (traffic.py source/drain)."""
        src = self.spawn(self.server, sys.executable, str(TRAFFIC), "source", self.server.ip4,
                         str(port), str(seconds + 5))
        _expect(src, "ready")
        drain = self.spawn(self.client, sys.executable, str(TRAFFIC), "drain", self.server.ip4,
                           str(port), str(seconds))
        self._bulk += [src, drain]

    def stop_bulk(self) -> None:
        for p in self._bulk:
            if p.poll() is None:
                p.kill()
            p.wait(5)
            self._procs.remove(p)
        self._bulk = []

    def start_hogs(self, n: int) -> None:
        """``n`` busy processes (in the root namespace: CPU pressure on the whole node)."""
        for _ in range(n):
            self._hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                               preexec_fn=_die_with_parent))

    def stop_hogs(self) -> None:
        for p in self._hogs:
            p.kill()
        for p in self._hogs:
            p.wait(5)
        self._hogs = []

    def clear(self) -> None:
        """Every fault off (the baseline)."""
        assert self.relay is not None
        self.relay.set(ab=Shape(), ba=Shape())
        self.set_loss(0)
        self.set_rate(None)
        self.stop_bulk()
        self.stop_hogs()

    def pids(self) -> list[int]:
        out = [p.pid for p in self._procs + self._hogs if p.poll() is None]
        if self.relay is not None:
            out.append(self.relay.pid)
        return out


def _expect(p: subprocess.Popen, word: str, timeout: float = 10) -> str:
    import select

    ready, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if ready else ""
    if word not in line:
        raise RuntimeError(f"expected {word!r} from {p.args}, got {line!r} "
                           f"(exit {p.poll()}): {p.stderr.read() if p.poll() is not None else ''}")
    return line


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
