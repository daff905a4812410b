"""What a real cluster puts around the agent on the first `kubectl apply`, tried on the real
agent: the kubelet's service-link variables, a node without kernel headers, tracefs or the
cgroup tree. The agent keeps running and says what is missing; only a real misconfiguration
(a typo under its prefix) stops it, with exit status 2."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.probes import registry
from tests.e2e.agent_proc import VENV_BIN, Agent, free_port, http_get
from tests.unit.test_config import SERVICE_LINKS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("the agent loads BPF: needs root", allow_module_level=True)


def wait_for(cond, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError("condition never held")


def test_kubelet_service_links_leave_the_agent_running():
    env = dict(SERVICE_LINKS, EBPF_EDGE_AGENT_SAMPLE_INTERVAL="1")
    with Agent("--kubernetes", "off", "--probes", "runqlat", env=env) as agent:
        agent.wait_ready()
        out = agent.output()
        assert f"ignoring {len(SERVICE_LINKS)} Kubernetes service-link variable(s)" in out, out
        assert "EBPF_EDGE_AGENT_EXTENDER_SERVICE_PORT" in out
        assert agent.report()["window_seconds"] == pytest.approx(1.0, abs=0.5)  # the real key applies


def test_a_typo_under_the_prefix_exits_2_naming_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBPF_EDGE_AGENT_")}
    env.update(SERVICE_LINKS, EBPF_EDGE_AGENT_SAMPLE_INTERVALL="1")
    p = subprocess.run([str(VENV_BIN / "ebpf-edge-agent"), "run"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "sample_intervall: unknown key" in p.stderr, p.stderr


def test_node_without_tracefs_or_cgroup_tree_keeps_reporting(tmp_path):
    env = {"EBPF_EDGE_AGENT_TRACEFS_ROOTS": f"{tmp_path}/tracing,{tmp_path}/debug/tracing",
           "EBPF_EDGE_AGENT_CGROUP_ROOT": f"{tmp_path}/cgroup",
           "EBPF_EDGE_AGENT_SAMPLE_INTERVAL": "1"}
    with Agent("--kubernetes", "off", env=env) as agent:
        agent.wait_ready()
        code, body = http_get(agent.base + "/readyz")
        assert code == 200
        for probe in registry.names():
            assert f"probe {probe}: unsupported (tracefs is not mounted (tried {tmp_path}/tracing" in body, body
        rep = wait_for(lambda: (r := agent.report())["sequence"] >= 3 and r)
        assert rep["cpu_utilization"] is not None  # the node figures go on
        assert rep["rtt_p50_ms"] is None  # a signal whose probe is down is absent, never zero
        assert f"cgroup_root {tmp_path}/cgroup is not a cgroup v2 hierarchy" in agent.output()
        assert agent.proc.poll() is None


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def _without_headers(*agent_args: str, env_extra=None) -> subprocess.Popen:
    """The agent in a mount namespace of its own where /lib/modules and /usr/src are empty: what
    a container-optimised node without headers looks like to BCC."""
    inner = ("mount --make-rprivate / && mount -t tmpfs none /lib/modules && "
             "mount -t tmpfs none /usr/src && exec \"$@\"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBPF_EDGE_AGENT_")}
    env.update(env_extra or {})
    return subprocess.Popen(
        ["unshare", "-m", "sh", "-c", inner, "sh", str(VENV_BIN / "ebpf-edge-agent"), "run",
         "--kubernetes", "off", "--sample-interval", "1", *agent_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _probe_lines(base: str, want: str):
    try:
        code, body = http_get(base + "/readyz", 2)
    except OSError:
        return None
    lines = [ln for ln in body.splitlines() if ln.startswith("probe ")]
    ok = len(lines) == len(registry.names()) and all(
        want in ln and "not started yet" not in ln for ln in lines)
    return body if ok else None


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_node_without_kernel_headers_gets_every_probe_up_on_the_probe_header_tree(tmp_path):
    """No kernel headers at all: every probe compiles against bpf/probe-headers and is up. And
    without that tree too (a bpf_dir lacking it), every probe is down with the reason."""
    rel = os.uname().release
    port = free_port()
    proc = _without_headers("--listen", f"127.0.0.1:{port}")
    try:
        body = wait_for(lambda: _probe_lines(f"http://127.0.0.1:{port}", ": up"), timeout=90)
        assert body, "not every probe came up"
        assert proc.poll() is None
    finally:
        out = _stop(proc)
    assert out.count("against probe-headers)") == len(registry.names()), out[-3000:]
    assert os.path.isdir(f"/lib/modules/{rel}/build/include")  # the host's are untouched

    bare = tmp_path / "bpf"
    shutil.copytree(ROOT / "bpf", bare, ignore=shutil.ignore_patterns("probe-headers"))
    port = free_port()
    proc = _without_headers("--listen", f"127.0.0.1:{port}",
                            env_extra={"EBPF_EDGE_AGENT_BPF_DIR": str(bare)})
    try:
        body = wait_for(lambda: _probe_lines(f"http://127.0.0.1:{port}", ": down ("), timeout=90)
        assert body, "not every probe went down"
        assert body.count(f"no kernel headers at /lib/modules/{rel}/build") == len(registry.names()), body
        assert proc.poll() is None
    finally:
        _stop(proc)
