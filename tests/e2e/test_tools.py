"""The operator tools as a person runs them (issue 23): the console script against a stand-in
agent serving the real /report, /metrics and /readyz (bench.fixture_agent), `top` driven in a
real pseudo-terminal (tmux), `record` stopped by SIGTERM mid-run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).parent / "ebpf-edge-agent")


class Fixture:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fixture_agent", *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agent():
    made = []

    def start(*args: str) -> Fixture:
        f = Fixture(*args)
        made.append(f)
        return f
    yield start
    for f in made:
        f.stop()


def tool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout)


def test_status_exit_codes_against_a_serving_agent(agent):
    ok = agent("--pods", "5", "--interval", "0.5")
    r = tool("status", "--url", ok.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HEALTHY" in r.stdout and "5 pods covered" in r.stdout and "RSS" in r.stdout
    doc = json.loads(tool("status", "--url", ok.url, "--json").stdout)
    assert doc["healthy"] and doc["pods_covered"] == 5 and doc["rss_bytes"] > 0
    bad = agent("--pods", "2", "--interval", "0.5", "--down", "tcp_rtt")
    r = tool("status", "--url", bad.url)
    assert r.returncode == 1
    assert "FAIL probe tcp_rtt" in r.stdout and "fixture: reported down" in r.stdout
    bad.stop()
    r = tool("status", "--url", bad.url, "--timeout", "2")
    assert r.returncode == 2 and "UNREACHABLE" in r.stdout


def _rows(path: Path) -> list[list[str]]:
    text = path.read_text()
    assert text.endswith("\n"), "torn last row"
    rows = list(csv.reader(text.splitlines()))
    assert all(len(r) == len(rows[0]) for r in rows), "a row with a different number of cells"
    return rows


def test_record_marks_a_missed_window_and_a_restart_and_stops_cleanly_on_sigterm(agent, tmp_path):
    out = tmp_path / "rows.csv"
    # windows of 1 s (polled every 0.25 s), so on a loaded machine the only missed window is
    # the one the agent skips
    a = agent("--pods", "50", "--interval", "1", "--skip", "4")
    rec = subprocess.Popen([EXE, "record", "--url", a.url, "--out", str(out), "--timeout", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\ngap,") >= 1 and \
                    out.read_text().count("\nwindow,") >= 50 * 4:
                break
            time.sleep(0.2)
        a.stop()  # the agent restarts: a new instance
        b = agent("--pods", "50", "--interval", "1", "--port", a.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "new agent instance" not in out.read_text():
            time.sleep(0.2)
        time.sleep(0.5)
        rec.send_signal(signal.SIGTERM)
        _, err = rec.communicate(timeout=15)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0, err
    assert "stopped (signal 15)" in err
    rows = _rows(out)
    head = rows[0]
    kind, seq, note = head.index("kind"), head.index("sequence"), head.index("note")
    gaps = [r for r in rows[1:] if r[kind] == "gap"]
    assert any("sequence 3 -> 5: 1 window not recorded" in g[note] for g in gaps), gaps
    assert any("new agent instance" in g[note] for g in gaps), gaps
    # every window that was recorded has all 50 pods
    per = {}
    for r in rows[1:]:
        if r[kind] == "window":
            per[(r[head.index("agent_instance")], r[seq])] = per.get((r[head.index("agent_instance")], r[seq]), 0) + 1
    assert per and set(per.values()) == {50}
    assert b.url == a.url


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


def _screen(session: str) -> list[str]:
    return _tmux("capture-pane", "-p", "-t", session).splitlines()


def _wait_screen(session: str, pred, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        lines = _screen(session)
        if pred(lines):
            return lines
        time.sleep(0.1)
    raise AssertionError("screen never matched:\n" + "\n".join(lines))


def _table(lines):
    i = next(i for i, ln in enumerate(lines) if ln.startswith("NAMESPACE/POD"))
    head = lines[i].split()
    rows = [ln.split() for ln in lines[i + 1:] if ln.strip()]
    return head, rows


def _num(text: str) -> float:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1] in mult:
        return float(text[:-1]) * mult[text[-1]]
    return float(text.rstrip("%"))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make dev-setup installs it)")
def test_top_in_a_pseudo_terminal_sorts_filters_and_quits(agent):
    a = agent("--pods", "40", "--interval", "1")
    session = f"optools-top-{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                    f"{EXE} top --url {a.url}"], check=True)
    try:
        lines = _wait_screen(session, lambda ls: any(ln.startswith("NAMESPACE/POD") for ln in ls))
        assert lines[0].startswith("fixture-node  seq ")
        assert lines[1].startswith("score ") and "RTT p50" in lines[1] and "runqlat p95" in lines[1]
        def by_cpu(ls):
            head, rows = _table(ls)
            cpu = [float(r[1]) for r in rows]
            return head[1] == "CPUv" and len(rows) == 40 and cpu == sorted(cpu, reverse=True)
        _wait_screen(session, by_cpu)  # sorted by CPU, largest first
        # m: sort by memory
        _tmux("send-keys", "-t", session, "m")
        def by_mem(ls):
            if not any("MEMv" in ln for ln in ls):
                return False
            head, rows = _table(ls)
            mem = [_num(r[head.index("MEMv")]) for r in rows]
            return len(rows) == 40 and mem == sorted(mem, reverse=True)
        _wait_screen(session, by_mem)
        # / filter by namespace
        _tmux("send-keys", "-t", session, "/", "n", "s", "-", "3", "Enter")
        def filtered(ls):  # the pane is read while curses may still be drawing: wait for it
            if not any("filter: namespace ~ 'ns-3'" in ln for ln in ls):
                return False
            _, rows = _table(ls)
            return len(rows) == 2 and all(r[0].startswith("ns-3/") for r in rows)
        lines = _wait_screen(session, filtered)
        assert sorted(r[0] for r in _table(lines)[1]) == ["ns-3/pod-23", "ns-3/pod-3"]
        # it refreshes every window: the sequence moves on
        seq = lines[0].split()[2]
        _wait_screen(session, lambda ls: ls and ls[0].split()[2] != seq, timeout=10)
        # q quits: the pane's program ends and tmux closes the session
        _tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("top did not quit on q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_top_plain_tables_when_stdout_is_not_a_terminal(agent):
    a = agent("--pods", "30", "--interval", "0.5")
    r = tool("top", "--url", a.url, "--count", "2", "--namespace", "ns-1")
    assert r.returncode == 0, r.stderr
    blocks = [b for b in r.stdout.split("\n\n") if b.strip()]
    assert len(blocks) == 2
    seqs = [b.splitlines()[0].split()[2] for b in blocks]
    assert seqs[0] != seqs[1]
    for b in blocks:
        rows = b.splitlines()[4:]
        assert rows and all(x.split()[0].startswith("ns-1") for x in rows)


def test_every_tool_has_help_with_an_example():
    for cmd in ("status", "top", "measure", "record"):
        r = tool(cmd, "--help")
        assert r.returncode == 0 and "example" in r.stdout, cmd


def test_status_against_the_real_agent_with_push_and_its_rss_against_proc():
    from tests.e2e.agent_proc import Agent
    from tests.extender_stub import ExtenderStub

    ext = ExtenderStub()
    try:
        with Agent("--kubernetes", "off", "--sample-interval", "1", "--extender-url", ext.url,
                   "--push-interval", "1", "--push-timeout", "0.5") as agent:
            agent.wait_ready(120)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not ext.received:
                time.sleep(0.2)
            r = tool("status", "--url", agent.base, "--json")
            doc = json.loads(r.stdout)
            witness_rss = agent.rss_bytes()
            rep = agent.report()
            assert r.returncode == (0 if doc["healthy"] else 1)
            assert set(doc["probes"]) == set(rep["probes"])
            down = {n: p for n, p in doc["probes"].items() if p["state"] == "down"}
            assert doc["healthy"] == (not down), doc["checks"]
            assert doc["pods_covered"] == len(rep["pod_uids"])
            assert doc["rss_bytes"] == pytest.approx(witness_rss, rel=0.25)
            assert [p["endpoint"] for p in doc["push"]] == [ext.url + "/metrics/report"]
            assert doc["push"][0]["ok"] and doc["push"][0]["last_success_age"] < 3
            # the extender goes away: after 3 x push_interval the push check fails
            ext.down()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = tool("status", "--url", agent.base)
                if r.returncode == 1 and "FAIL push" in r.stdout:
                    break
                time.sleep(0.5)
            assert r.returncode == 1 and "more than 3 x push_interval" in r.stdout, r.stdout
    finally:
        ext.down()
