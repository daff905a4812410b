"""The real agent reading the real cgroup v2 hierarchy: standalone (cgroups named by path) and
with a fake Kubernetes API naming the pods and their tenants."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.cgroups import read_cgroup2_root
from tests.e2e.agent_proc import Agent, http_get

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("creates cgroups and loads BPF: needs root", allow_module_level=True)

ROOT = read_cgroup2_root()
if ROOT is None:
    pytest.skip("no cgroup v2 hierarchy mounted", allow_module_level=True)

BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


class Cgroups:
    """Make cgroups (nested paths allowed) below the v2 root; remove them all afterwards."""

    def __init__(self):
        self.made: list[Path] = []
        self.procs: list[subprocess.Popen] = []

    def make(self, rel: str) -> Path:
        path = Path(ROOT)
        for part in rel.split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                self.made.append(path)
        return path

    def busy_in(self, cg: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", BUSY])
        (cg / "cgroup.procs").write_text(str(p.pid))
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for path in reversed(self.made):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


def wait_report(agent, cond, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = agent.report()
        if cond(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"report never satisfied the condition: {json.dumps(last)[:2000]}")


def test_standalone_reports_per_cgroup_cpu_from_the_real_hierarchy():
    tag = f"eea-e2e-{os.getpid()}"
    cg = Cgroups()
    try:
        busy = cg.make(f"{tag}-busy")
        cg.make(f"{tag}-idle")
        cg.busy_in(busy)
        with Agent("--kubernetes", "off", "--sample-interval", "2") as agent:
            agent.wait_ready()
            rep = wait_report(agent, lambda r: any(p["pod"] == f"{tag}-busy" and p["cpu_used"]
                                                   for p in r["pods"]))
            pods = {p["pod"]: p for p in rep["pods"]}
            assert 0.85 <= pods[f"{tag}-busy"]["cpu_used"] <= 1.1, pods[f"{tag}-busy"]
            assert pods[f"{tag}-idle"]["cpu_used"] <= 0.05
            _, text = http_get(agent.base + "/metrics")
            assert f'ebpf_pod_cpu_used_cores{{namespace="",pod="{tag}-busy"}}' in text
    finally:
        cg.close()


def test_fake_kubernetes_api_names_pods_and_tenants():
    from tests.unit.test_kube_api import NODE, FakeApi, Handler

    uid = str(uuid.uuid4())
    fake = FakeApi()
    fake.pods = {uid: {
        "metadata": {"uid": uid, "namespace": "shop", "name": "web-0", "resourceVersion": "11",
                     "labels": {"team": "blue"},
                     "annotations": {"ebpf-edge-agent.io/rtt-slo-ms": "25"}},
        "spec": {"nodeName": NODE, "containers": [
            {"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "256Mi"}}}]},
        "status": {"phase": "Running", "qosClass": "Burstable", "podIP": "10.244.1.7",
                   "podIPs": [{"ip": "10.244.1.7"}]},
    }}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"api": fake}))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cg = Cgroups()
    try:
        slice_ = ("kubepods.slice/kubepods-burstable.slice/"
                  f"kubepods-burstable-pod{uid.replace('-', '_')}.slice")
        pod_cg = cg.make(slice_)
        cg.busy_in(cg.make(slice_ + "/cri-containerd-" + "ab" * 32 + ".scope"))
        with Agent("--kubernetes", "on", "--sample-interval", "2", "--node-name", NODE,
                   "--tenant-label", "team",
                   env={"EBPF_EDGE_AGENT_KUBERNETES_API_URL": f"http://127.0.0.1:{srv.server_address[1]}"}
                   ) as agent:
            agent.wait_ready()
            rep = wait_report(agent, lambda r: any(p["pod"] == "web-0" and p["cpu_used"]
                                                   for p in r["pods"]))
            p = next(p for p in rep["pods"] if p["pod"] == "web-0")
            assert p["uid"] == uid and p["namespace"] == "shop" and p["tenant"] == "blue"
            assert p["rtt_slo_ms"] == 25.0 and p["qos"] == "burstable"
            assert 0.85 <= p["cpu_used"] <= 1.1
            assert p["memory_limit"] == 256 << 20 and p["cpu_limit"] == 1.5  # from the API
            assert rep["cpu_allocatable"] == pytest.approx(3.92)  # the Node's allocatable
            assert rep["node_name"] == NODE and uid in rep["pod_uids"]
            assert pod_cg.exists()
    finally:
        cg.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("patch_answer", ["ok", 403])
def test_capacity_advertisement_patches_node_status_or_says_why(tmp_path, patch_answer):
    from tests.unit.test_kube_api import NODE, FakeApi, Handler

    fake = FakeApi()
    fake.pods = {}
    fake.patch_script = [patch_answer]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"api": fake}))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sysroot = tmp_path / "sys"
    (sysroot / "class" / "net" / "eth9").mkdir(parents=True)
    (sysroot / "class" / "net" / "eth9" / "speed").write_text("10000\n")  # Mb/s
    try:
        with Agent("--kubernetes", "on", "--sample-interval", "2", "--node-name", NODE,
                   env={"EBPF_EDGE_AGENT_KUBERNETES_API_URL": f"http://127.0.0.1:{srv.server_address[1]}",
                        "EBPF_EDGE_AGENT_ADVERTISE_CAPACITY": "true",
                        "EBPF_EDGE_AGENT_CAPACITY_INTERFACE": "eth9",
                        "EBPF_EDGE_AGENT_SYS_ROOT": str(sysroot)}) as agent:
            agent.wait_ready()
            deadline = time.monotonic() + 10
            while not fake.patches and time.monotonic() < deadline:
                time.sleep(0.1)
            assert fake.patches, agent.output()
            path, ctype, body, _ = fake.patches[0]
            assert path == f"/api/v1/nodes/{NODE}/status"
            assert body[0]["path"].endswith("example.com~1SLO") and body[0]["value"] == "10000000000"
            time.sleep(0.5)
            if patch_answer == 403:
                assert "nodes/status" in agent.output() and "patch" in agent.output()
                assert agent.proc.poll() is None  # RBAC refusal never takes the agent down
            else:
                assert "advertised example.com/SLO=10000000000" in agent.output()
    finally:
        srv.shutdown()
        srv.server_close()
