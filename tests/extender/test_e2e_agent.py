"""End to end on loopback: the real agent (``ebpf-edge-agent run``, real BPF) pushes to the real
extender (``ebpf-edge-extender run``, a subprocess); prioritize scores that node from the report
it holds; the agent stops and the node goes neutral once the TTL (3 x a 1 s push interval) has
passed. Needs root (the agent loads BPF)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from extender.policies import to_priority
from tests.e2e.agent_proc import Agent, free_port, http_get

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("the agent loads BPF: needs root", allow_module_level=True)

NODE = "e2e-extender-node"
VENV_BIN = Path(sys.executable).parent


class ExtenderProc:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="extender-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBPF_EDGE_EXTENDER_")}
        self.proc = subprocess.Popen([str(VENV_BIN / "ebpf-edge-extender"), "run", "--listen",
                                      f"127.0.0.1:{self.port}", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if http_get(self.base + "/healthz", 1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"extender not healthy: {self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text()[-4000:]

    def post(self, path: str, doc) -> object:
        req = urllib.request.Request(self.base + path, data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
            return json.loads(r.read())

    def held(self) -> dict | None:
        code, text = http_get(f"{self.base}/nodes/{NODE}")
        return json.loads(text) if code == 200 else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)


def wait_for(cond, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    return cond()


def test_real_agent_pushes_to_real_extender_and_goes_neutral_after_ttl():
    ext = ExtenderProc()
    try:
        with Agent("--node-name", NODE, "--sample-interval", "1", "--extender-url", ext.base,
                   "--push-interval", "1", "--push-timeout", "0.5", "--probes", "tcp_rtt,runqlat",
                   env={"EBPF_EDGE_AGENT_KUBERNETES": "off"}) as agent:
            agent.wait_ready(120)
            held = wait_for(lambda: (h := ext.held()) and h["fresh"] and h, 30)
            assert held, ext.output() + agent.output()
            assert held["report"]["node_name"] == NODE
            assert held["report"]["agent_instance"] == agent.report()["agent_instance"]
            # prioritize scores the node from the report it holds (read before and after, so a
            # push in between cannot make the comparison miss)
            for _ in range(20):
                before = ext.held()["report"]
                answer = ext.post("/prioritize", {"Pod": None, "NodeNames": [NODE, "no-such-node"]})
                after = ext.held()["report"]
                if before["sequence"] == after["sequence"]:
                    break
            else:
                pytest.fail("the held report changed around every prioritize call")
            want = to_priority(before["node_score"] / 10) if before["node_score"] is not None else 5
            assert answer == [{"Host": NODE, "Score": want}, {"Host": "no-such-node", "Score": 5}]
            seq_running = before["sequence"]
            assert wait_for(lambda: ext.held()["report"]["sequence"] > seq_running, 10), \
                "reports keep arriving every push interval"
        # the agent is stopped: after 3 x 1 s the node is neutral
        assert wait_for(lambda: not ext.held()["fresh"], 10), ext.held()
        code, text = http_get(ext.base + "/nodes")
        node = json.loads(text)["nodes"][NODE]
        assert node["ttl_seconds"] == 3.0 and node["age_seconds"] >= 3.0 and node["score"] == 5
        assert ext.post("/prioritize", {"Pod": None, "NodeNames": [NODE]}) == [{"Host": NODE, "Score": 5}]
        code, metrics = http_get(ext.base + "/metrics")
        assert "ebpf_extender_nodes_fresh 0.0" in metrics
        assert "ebpf_extender_reports_expired_total 1.0" in metrics
        accepted = float(next(ln.split()[1] for ln in metrics.splitlines()
                              if ln.startswith("ebpf_extender_reports_accepted_total")))
        assert accepted >= 2  # the first and the later one seen above
    finally:
        ext.close()
