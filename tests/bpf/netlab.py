"""A network lab of two namespaces joined by a veth pair, built and torn down by the tests.

Addresses are private (10.231.x.0/24 and fd00:eea:x::/64) and exist only inside the lab's
namespaces. Every lab removes itself, also when a test fails; namespaces left behind by a
killed run are removed at the next start.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "eealab"
TRAFFIC = Path(__file__).with_name("traffic.py")


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def remove_stale_labs() -> None:
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)[ab]", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Host:
    ns: str
    dev: str
    ip4: str
    ip6: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh(*self.cmd(*args), check=check, timeout=timeout)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kw)

    def python(self, *args: str, **kw) -> subprocess.Popen:
        return self.popen(sys.executable, str(TRAFFIC), *args, **kw)

    def limit_rate(self, rate: str, burst: str = "32kbit", latency: str = "400ms") -> None:
        """A tbf on this host's veth egress: a bandwidth limit with a queue (-> queueing delay)."""
        self.run("tc", "qdisc", "add", "dev", self.dev, "root", "tbf", "rate", rate,
                 "burst", burst, "latency", latency)

    def drop_randomly(self, dport: int, probability: float, comment: str = "eea-drop") -> None:
        """Drop this share of incoming TCP segments to ``dport`` (iptables statistic match);
        the rule's packet counter (see iptables_counter) is the witness."""
        self.run("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", str(dport), "-m",
                 "statistic", "--mode", "random", "--probability", str(probability),
                 "-m", "comment", "--comment", comment, "-j", "DROP")

    def nstat(self) -> dict[str, int]:
        """The namespace's absolute SNMP counters (nstat -a: not reset, no history file)."""
        out = self.run("nstat", "-az", "--json").stdout
        import json

        doc = json.loads(out)
        return {k: int(v) for k, v in doc.get("kernel", doc).items()}


class NetLab:
    def __init__(self, index: int = 0) -> None:
        remove_stale_labs()
        pid = os.getpid()
        self.subnet = 1 + (pid + index) % 250
        self.a = Host(f"{PREFIX}{pid}a", f"eea{pid % 100000}a{index}", f"10.231.{self.subnet}.1",
                      f"fd00:eea:{self.subnet:x}::1")
        self.b = Host(f"{PREFIX}{pid}b", f"eea{pid % 100000}b{index}", f"10.231.{self.subnet}.2",
                      f"fd00:eea:{self.subnet:x}::2")
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> "NetLab":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        for h in (self.a, self.b):
            sh("ip", "netns", "add", h.ns)
        sh("ip", "link", "add", self.a.dev, "netns", self.a.ns, "type", "veth",
           "peer", "name", self.b.dev, "netns", self.b.ns)
        for h in (self.a, self.b):
            h.run("ip", "link", "set", "lo", "up")
            h.run("ip", "addr", "add", f"{h.ip4}/24", "dev", h.dev)
            h.run("ip", "addr", "add", f"{h.ip6}/64", "dev", h.dev, "nodad")
            h.run("ip", "link", "set", h.dev, "up")
        # wait until both ends report carrier
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all("state UP" in h.run("ip", "-o", "link", "show", "dev", h.dev).stdout
                   for h in (self.a, self.b)):
                return
            time.sleep(0.05)
        raise RuntimeError("lab veth pair did not come up")

    def spawn(self, host: Host, *args: str) -> subprocess.Popen:
        p = host.python(*args)
        self._procs.append(p)
        return p

    def down(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for h in (self.a, self.b):
            sh("ip", "netns", "del", h.ns, check=False)


def iptables_counter(host: Host, chain: str, comment: str) -> int:
    """Packet counter of the rule carrying ``comment`` in ``chain``."""
    out = host.run("iptables", "-w", "-L", chain, "-v", "-n", "-x").stdout
    for line in out.splitlines():
        if comment in line:
            return int(line.split()[0])
    raise LookupError(f"no rule with comment {comment!r} in {chain}: {out}")


_RTT_RE = re.compile(r"\brtt:([\d.]+)/([\d.]+)")


def ss_srtt_ms(host: Host, dst: str, dport: int) -> list[float]:
    """srtt (ms) of each TCP socket in ``host`` connected to dst:dport, as ss -ti shows it."""
    out = host.run("ss", "-tin", "state", "established", "dst", f"{dst}:{dport}").stdout
    return [float(m.group(1)) for m in _RTT_RE.finditer(out)]


def quote(args) -> str:
    return " ".join(shlex.quote(a) for a in args)
