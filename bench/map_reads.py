"""Map read cost per report at 0, 200 and 1,000 pods, before and after the lean agent (issue 16).

    .venv/bin/python -m bench.map_reads [--pods 0,200,1000] [--reads 50] [--reps 2]
                                        [--before a9d3e41] [--no-sized] [--json FILE]

A report reads every probe's maps once (``ProbeSet.read_windows()``: each probe's ``read()``).
What the maps hold grows with the pods, so the kernel fills them for real while a build's
probes are attached, N pods being:

- N local addresses with TCP: every 127/8 address is local on loopback, so the i-th pod's
  address is ``source_address(i)`` (127.1.x.y). From each, one connection to a listener on
  127.0.0.1 with three sends (tcp_rtt's samples, an active open for connect) and one connect
  to a ``listen(0)`` listener that never accepts, whose accept queue a connection from
  127.0.0.1 already fills: the SYN is dropped and retransmitted after ~1 s (tcp_retrans).
- 2N cgroups (two containers a pod) below the cgroup v2 mount, each with a process that moves
  itself in, sleeps and wakes a few times and exits (runqlat's per-cgroup rows; only the lean
  build has them).

The build's probes run in a worker process (this file run as a script with ``PYTHONPATH`` at
the build's tree, so ``import agent`` is that build's), loaded as that build's agent loads them
(``registry.build`` + ``ProbeSet.start_all()``: in-process BCC before, one compiling child
after). The worker reads until tcp_rtt, tcp_retrans and connect each show all N addresses
(at most 20 s), the sockets are closed (the rows stay: they are cumulative), then it times
``read()`` of every probe, one after another, ``--reads`` times (after 3 untimed rounds). The
result names what the timed reads saw: the pods' addresses per probe, their cgroups' rows.

"before" is ``--before`` (default ``a9d3e41``: BCC in the agent, maps read through BCC's table
objects), extracted with ``git archive`` into a temporary directory that is removed at the end;
"after" is this tree. Builds alternate (the order reversed at every pod count and repetition).
Where 2 x N cgroups exceed the default ``max_cgroups`` (512 rows), ``after`` is also run with
``max_cgroups`` sized for them ("after, sized"; ``--no-sized``: not). Every cgroup, process and
socket is removed afterwards, also on an error or an interrupt (SIGTERM/SIGHUP are turned into
KeyboardInterrupt while this runs); the worker dies with this process (PR_SET_PDEATHSIG), and
the kernel frees its programs with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Mapping

# Nothing outside the standard library at module level: the worker runs this file with another
# build's tree first on sys.path (its own ``bench`` and ``tests`` would shadow ours).

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "a9d3e41"  # the build before the lean agent (341a4fa introduced agent/probes/bpfmaps.py)
DEFAULT_PODS = (0, 200, 1000)
CGROUPS_PER_POD = 2
DEFAULT_MAX_CGROUPS = 512  # agent.config.Config.max_cgroups
ADDRESS_PROBES = ("tcp_rtt", "tcp_retrans", "connect")
WARMUP_ROUNDS = 3
FILL_TIMEOUT = 20.0


# ---------------------------------------------------------------------------------------------
# pure


def source_address(i: int) -> str:
    """The i-th pod's local address: 127.1.(i // 250).(i % 250 + 1), i in 0..62,499."""
    if not 0 <= i < 250 * 250:
        raise ValueError(f"pod index {i} outside 0..{250 * 250 - 1}")
    return f"127.1.{i // 250}.{i % 250 + 1}"


def seen_in(keys: Iterable[str], addresses: set[str] | frozenset[str], cgroup_ids: set[int],
            cgroup_prefix: str | None) -> dict[str, int]:
    """How many of ``addresses`` and ``cgroup_ids`` a snapshot's keys (its hists' and counts'
    keys) name. An address key is the address itself or ``<kind>/<address>`` (connect's
    counts); a cgroup key is ``<cgroup_prefix><id>``."""
    addrs: set[str] = set()
    cgs: set[int] = set()
    for k in keys:
        if cgroup_prefix and k.startswith(cgroup_prefix):
            tail = k[len(cgroup_prefix):]
            if tail.isdigit() and int(tail) in cgroup_ids:
                cgs.add(int(tail))
            continue
        a = k.rpartition("/")[2]
        if a in addresses:
            addrs.add(a)
    return {"addresses": len(addrs), "cgroups": len(cgs)}


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values) * 1000, 3), "p90_ms": round(p90(values) * 1000, 3)}


def sized_max_cgroups(pods: int, per_pod: int = CGROUPS_PER_POD) -> int | None:
    """max_cgroups with room for the pods' cgroups and the node's own (512 more); None when the
    default already has that room."""
    want = pods * per_pod + DEFAULT_MAX_CGROUPS
    return want if pods * per_pod + 64 > DEFAULT_MAX_CGROUPS else None


# ---------------------------------------------------------------------------------------------
# the worker (another interpreter, the build's tree first on sys.path)


def worker(spec: dict) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # blocked by the bench around the fork
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol; anything else printed -> stderr
    os.dup2(2, 1)

    def say(**kw) -> None:
        out.write(json.dumps(kw) + "\n")

    def hear() -> dict:
        line = sys.stdin.readline()
        if not line:
            raise SystemExit("worker: the bench went away")
        return json.loads(line)

    import importlib

    import agent
    from agent.config import Config
    from agent.probes import registry
    from agent.sampler import ProbeSet

    prefix = getattr(importlib.import_module("agent.probes.spec"), "CGROUP_KEY_PREFIX", None)
    config = Config(**spec.get("config", {}))
    kernel = registry.detect_kernel(config)
    probes = registry.build(config, kernel)
    ps = ProbeSet(probes)
    try:
        t0 = time.monotonic()
        states = ps.start_all()
        up = [p for p in probes if states[p.name].state.value == "up"]
        say(event="ready", agent=agent.__file__, start_s=round(time.monotonic() - t0, 2),
            up=[p.name for p in up], bcc_imported="bcc" in sys.modules,
            down={n: s.reason for n, s in states.items() if s.state.value != "up"})

        msg = hear()
        n, ids = msg["pods"], set(msg["cgroups"])
        addrs = frozenset(source_address(i) for i in range(n))

        def seen_now() -> dict:
            res = {}
            for p in up:
                snap = p.read()
                keys = list(snap.hists) + list(snap.counts)
                res[p.name] = {**seen_in(keys, addrs, ids, prefix), "keys": len(keys),
                               "lost": snap.lost}
            return res

        t0 = time.monotonic()
        while True:
            seen = seen_now()
            if all(seen[p]["addresses"] >= n for p in ADDRESS_PROBES if p in seen):
                break
            if time.monotonic() - t0 > msg["timeout"]:
                break
            time.sleep(0.25)
        say(event="filled", seen=seen, waited_s=round(time.monotonic() - t0, 2))

        msg = hear()
        times: dict[str, list[float]] = {p.name: [] for p in up}
        for r in range(WARMUP_ROUNDS + msg["reads"]):
            for p in up:
                s = time.perf_counter()
                p.read()
                e = time.perf_counter() - s
                if r >= WARMUP_ROUNDS:
                    times[p.name].append(e)
        say(event="timed", seconds=times, seen=seen_now(), cgroup_rows=prefix is not None)
    finally:
        ps.close_all()


# ---------------------------------------------------------------------------------------------
# the bench (IO)


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``agent/`` and ``bpf/`` as committed at ``rev``, in a temporary directory removed on exit."""
    import shutil

    d = Path(tempfile.mkdtemp(prefix=f"bench-map-reads-{rev}-"))
    try:
        arch = subprocess.run(["git", "archive", "--format=tar", rev, "agent", "bpf"], cwd=ROOT,
                              check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(d)], input=arch, check=True)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt meanwhile (so every finally block runs)."""
    def raise_(signum, _frame):
        raise KeyboardInterrupt(f"interrupted by signal {signum}")

    saved = {s: signal.signal(s, raise_) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP blocked meanwhile, delivered (if any came) when it ends.

    Around a fork: a handler that raises while Python's at-fork hooks run in the parent (e.g.
    logging's lock release) has its exception printed and ignored, and the interrupt is lost.
    A forked child keeps them blocked (it is killed with SIGKILL, or ends by itself)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        if os.getpid() == _PARENT[0]:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


_PARENT = [os.getpid()]


class Worker:
    """One build's probes in another interpreter; JSON lines both ways."""

    def __init__(self, tree: Path, config: Mapping[str, object]) -> None:
        from tests.e2e.podcgroup import _pdeathsig

        self.log = tempfile.TemporaryFile(prefix="bench-map-reads-worker-")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        with signals_held():  # exec keeps the blocked mask: the worker unblocks them first
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(Path(__file__).resolve()), "--worker",
                 json.dumps({"config": dict(config)})],
                cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                preexec_fn=_pdeathsig)
        self._buf = b""

    def send(self, **kw) -> None:
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"worker: no {event!r} within {timeout:g} s{self._tail()}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"worker exited ({self.proc.wait()}) before {event!r}{self._tail()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if msg.get("event") != event:
            raise RuntimeError(f"worker said {msg!r}, expected {event!r}")
        return msg

    def _tail(self) -> str:
        self.log.seek(0)
        text = self.log.read().decode(errors="replace").strip()
        return f"; its stderr ends: {text[-1500:]}" if text else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the worker closes its probes and exits
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class PodLoad:
    """The kernel-side footprint of N pods (see the module docstring); ``close()`` removes it."""

    def __init__(self, pods: int, per_pod: int = CGROUPS_PER_POD) -> None:
        from agent.cgroups import read_cgroup2_root

        self.pods, self.per_pod = pods, per_pod
        root = read_cgroup2_root()
        self.top = Path(root) / f"eea-mapreads-{uuid.uuid4().hex[:8]}" if root and pods else None
        self.containers: list[Path] = []
        self.cgroup_ids: list[int] = []
        self.tasks_ok = 0
        self._pids: list[int] = []
        self._socks: list[socket.socket] = []
        self.connected = self.syn_waiting = 0

    # cgroups and their tasks
    def make_cgroups(self) -> None:
        if self.top is None:
            return
        self.top.mkdir()
        for i in range(self.pods):
            pod = self.top / f"pod{i:04d}"
            pod.mkdir()
            for j in range(self.per_pod):
                c = pod / f"c{j}"
                c.mkdir()
                self.containers.append(c)
                self.cgroup_ids.append(os.stat(c).st_ino)  # a cgroup's id is its inode number

    def run_tasks(self, batch: int = 200) -> None:
        """In every container cgroup a forked process that moves itself in, sleeps and wakes a
        few times over ~0.13 s and exits; waits for all of them (their samples are in the maps
        then). runqlat keeps a task's row for 100 ms (ROW_TTL_NS): a first sample counted in
        the parent's cgroup (preempted before the move) leaves the later ones to its own."""
        import resource

        hi = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        files = [str(c / "cgroup.procs") for c in self.containers]
        for at in range(0, len(files), batch):
            for f in files[at:at + batch]:
                with signals_held():
                    pid = os.fork()
                if pid == 0:  # the child: no Python-level cleanup, only _exit
                    code = 1
                    try:
                        os.closerange(3, hi)
                        fd = os.open(f, os.O_WRONLY)
                        os.write(fd, b"0")
                        os.close(fd)
                        for pause in (0.001, 0.001, 0.12, 0.001, 0.001, 0.001):
                            time.sleep(pause)
                        code = 0
                    finally:
                        os._exit(code)
                self._pids.append(pid)
            while self._pids:
                pid = self._pids[-1]
                _, status = os.waitpid(pid, 0)
                self._pids.pop()
                self.tasks_ok += os.waitstatus_to_exitcode(status) == 0

    # sockets
    def open_connections(self, sends: int = 3) -> None:
        if not self.pods:
            return
        srv = self._sock()
        srv.bind(("127.0.0.1", 0))
        srv.listen(self.pods + 16)
        for i in range(self.pods):
            c = self._sock()
            c.settimeout(5)
            c.bind((source_address(i), 0))
            c.connect(srv.getsockname())
            for _ in range(sends):
                c.sendall(b"x" * 512)
            self.connected += 1
        srv.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self._socks.append(srv.accept()[0])
        full = self._sock()  # never accepts; one connection from 127.0.0.1 fills its queue
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler = self._sock()
        filler.settimeout(5)
        filler.connect(full.getsockname())
        time.sleep(0.05)
        for i in range(self.pods):
            c = self._sock()
            c.bind((source_address(i), 0))
            c.setblocking(False)
            c.connect_ex(full.getsockname())
            self.syn_waiting += 1

    def _sock(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socks.append(s)
        # closed with a reset: nothing left in TIME_WAIT
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        return s

    def drop_sockets(self) -> None:
        socks, self._socks = self._socks, []
        for s in socks:
            s.close()

    def close(self) -> None:
        from tests.e2e.podcgroup import remove_tree

        self.drop_sockets()
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._pids.clear()
        if self.top is not None and self.top.exists():
            remove_tree(self.top)


def measure(label: str, tree: Path, config: Mapping[str, object], pods: int, reads: int) -> dict:
    load = PodLoad(pods)
    w = Worker(tree, config)
    try:
        ready = w.recv("ready", 300)
        la0 = os.getloadavg()
        t0 = time.monotonic()
        load.make_cgroups()
        load.run_tasks()
        load.open_connections()
        fill_s = time.monotonic() - t0
        w.send(cmd="wait", pods=pods, cgroups=load.cgroup_ids, timeout=FILL_TIMEOUT)
        filled = w.recv("filled", FILL_TIMEOUT + 60)
        load.drop_sockets()
        w.send(cmd="time", reads=reads)
        timed = w.recv("timed", 600)
        la1 = os.getloadavg()
    finally:
        w.close()
        load.close()
    return {"build": label, "config": dict(config), "pods": pods, "agent": ready["agent"],
            "start_s": ready["start_s"], "up": ready["up"], "down": ready["down"],
            "bcc_imported": ready["bcc_imported"],
            "made": {"addresses": load.connected, "syn_waiting": load.syn_waiting,
                     "cgroups": len(load.cgroup_ids), "tasks_ok": load.tasks_ok,
                     "fill_s": round(fill_s, 2)},
            "seen_after_fill": filled["seen"], "fill_waited_s": filled["waited_s"],
            "seen": timed["seen"], "cgroup_rows": timed["cgroup_rows"],
            "seconds": timed["seconds"], "loadavg": [round(x, 2) for x in la0 + la1]}


def run(pods: Iterable[int] = DEFAULT_PODS, reads: int = 50, reps: int = 2, before: str = BEFORE,
        sized: bool = True) -> dict:
    pods = list(pods)
    runs: list[dict] = []
    t0 = time.monotonic()
    la = os.getloadavg()
    with interrupts_raise(), checkout(before) as before_tree:
        k = 0
        for rep in range(reps):
            for n in pods:
                order = [("after", {}), ("before", {})]
                m = sized_max_cgroups(n) if sized else None
                if m is not None:
                    order.append(("after, sized", {"max_cgroups": m}))
                if k % 2:
                    order.reverse()
                k += 1
                for label, config in order:
                    tree = before_tree if label == "before" else ROOT
                    runs.append(measure(label, tree, config, n, reads))
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "before": before,
            "reads": reads, "reps": reps, "pods": pods, "seconds": round(time.monotonic() - t0),
            "loadavg_start": [round(x, 2) for x in la],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "results": summarize(runs), "runs": runs}


def summarize(runs: list[dict]) -> list[dict]:
    """Per (build, pods): every rep's reads pooled -> p50/p90 per probe and of the per-round
    total (the sum over probes of one round: one report's reads); what the reads saw (the
    smallest over the reps)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["build"], r["pods"]), []).append(r)
    out = []
    for (build, n), rs in groups.items():
        names = [p for p in rs[0]["seconds"] if all(p in r["seconds"] for r in rs)]
        probes = {p: summary_ms([t for r in rs for t in r["seconds"].get(p, [])]) for p in names}
        totals = [sum(r["seconds"][p][i] for p in names) for r in rs
                  for i in range(len(r["seconds"][names[0]]))]
        seen = {p: {k: min(r["seen"][p][k] for r in rs) for k in ("addresses", "cgroups", "keys")}
                for p in names}
        out.append({"build": build, "pods": n, "config": rs[0]["config"], "probes": probes,
                    "total": summary_ms(totals), "seen": seen, "cgroup_rows": rs[0]["cgroup_rows"],
                    "cgroups_made": rs[0]["made"]["cgroups"],
                    "start_s": [r["start_s"] for r in rs],
                    "loadavg_1min": [r["loadavg"][0] for r in rs] + [r["loadavg"][3] for r in rs]})
    return out


def print_table(res: dict) -> None:
    results = res["results"]
    by = {(r["build"], r["pods"]): r for r in results}
    builds = list(dict.fromkeys(r["build"] for r in results))
    cols = [(b, n) for n in res["pods"] for b in builds if (b, n) in by]
    names = list(dict.fromkeys(p for r in results for p in r["probes"]))
    print(f"\n6b. map reads per report (issue 16): each probe's read(), p50/p90 ms over "
          f"{res['reps']} x {res['reads']} reads; before = {res['before']}, after = this tree")
    labels = [f"{b} {n}" for b, n in cols]
    widths = [max(17, len(x) + 2) for x in labels]
    print(f"   {'probe':<12}" + "".join(f"{x:>{w}}" for x, w in zip(labels, widths)))
    for p in names + ["total"]:
        cells = []
        for c in cols:
            v = by[c]["total"] if p == "total" else by[c]["probes"].get(p)
            cells.append(f"{v['p50_ms']:.2f}/{v['p90_ms']:.2f}" if v else "-")
        print(f"   {p:<12}" + "".join(f"{x:>{w}}" for x, w in zip(cells, widths)))
    print("   what the timed reads saw: the pods' addresses per probe; runqlat's rows of the pods' "
          "cgroups (of those made)")
    for c in cols:
        r = by[c]
        addr = ", ".join(f"{p} {r['seen'][p]['addresses']}" for p in ADDRESS_PROBES if p in r["seen"])
        rq = r["seen"].get("runqlat")
        cg = (f"runqlat {rq['cgroups']}/{r['cgroups_made']}" if r["cgroup_rows"] and rq
              else "runqlat: no per-cgroup rows in this build")
        extra = f", max_cgroups {r['config']['max_cgroups']}" if "max_cgroups" in r["config"] else ""
        print(f"   {c[0]:<13} {c[1]:>5} pods{extra}: {addr}; {cg}")
    print(f"   load average (1 min): {res['loadavg_start'][0]} at the start, {res['loadavg_end'][0]} "
          f"at the end ({res['seconds']} s)")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", default=",".join(map(str, DEFAULT_PODS)))
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--before", default=BEFORE, help="the other build's commit (default %(default)s)")
    ap.add_argument("--no-sized", action="store_true",
                    help="no extra 'after' run with max_cgroups sized for the pods' cgroups")
    ap.add_argument("--json", default=None,
                    help="default bench/results/map-reads-<kernel major.minor>-<cpus>cpu.json")
    args = ap.parse_args()
    res = run([int(x) for x in args.pods.split(",")], args.reads, args.reps, args.before,
              not args.no_sized)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    res["commit"] = commit
    print_table(res)
    path = args.json or str(ROOT / "bench" / "results" / (
        "map-reads-" + ".".join(platform.release().split(".")[:2]) + f"-{os.cpu_count()}cpu.json"))
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
