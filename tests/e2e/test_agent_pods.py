"""The real agent reading the real cgroup v2 hierarchy: standalone (cgroups named by path) and
with a fake Kubernetes API naming the pods and their tenants."""

import json
import os
import select
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

# Spins for BURST_SECONDS once told to on stdin, then blocks: the cgroup is idle before and after,
# so its cpu.stat read at those moments brackets exactly the CPU the agent's windows saw.
BURST_SECONDS = 3
BURST = ("import sys, time\nsys.stdin.readline()\n"
         f"end = time.monotonic() + {BURST_SECONDS}\nwhile time.monotonic() < end:\n    pass\n"
         "print('done', flush=True)\nsys.stdin.readline()\n")


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

    def burst_in(self, cg: Path) -> subprocess.Popen:
        """A process in ``cg`` that waits, spins for BURST_SECONDS when started, then waits."""
        p = subprocess.Popen([sys.executable, "-c", BURST], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
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


def usage_seconds(cg: Path) -> float:
    for line in (cg / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    raise AssertionError(f"no usage_usec in {cg}/cpu.stat")


def cpu_over_a_burst(agent, burst: subprocess.Popen, cg: Path, pod_name: str) -> tuple[float, float]:
    """CPU-seconds of one burst: by the agent (cpu_used x window over every window that covers
    it) and by the witness (the cgroup's own cpu.stat, read while it is idle before and after).
    Every report is collected; a missed window would be an error, not a tolerance."""
    reports: dict[int, dict] = {}

    def poll() -> dict:
        r = agent.report()
        reports[r["sequence"]] = r
        return r

    def pod(r):
        return next((p for p in r["pods"] if p["pod"] == pod_name), None)

    wait_report(agent, lambda r: pod(r) is not None and pod(r)["cpu_used"] is not None)
    s0 = poll()["sequence"]  # window s0 + 1 began before u0 was read; the cgroup was idle since
    u0 = usage_seconds(cg)
    burst.stdin.write("go\n")
    burst.stdin.flush()
    deadline = time.monotonic() + BURST_SECONDS * 10
    while not select.select([burst.stdout], [], [], 0.1)[0]:
        poll()
        assert time.monotonic() < deadline, "the burst never finished"
    assert burst.stdout.readline().strip() == "done"
    u1 = usage_seconds(cg)
    s1 = poll()["sequence"]
    while max(reports) < s1 + 2:  # window s1 + 2 began after u1: everything after is idle
        time.sleep(0.1)
        poll()
    seqs = range(s0 + 1, max(reports) + 1)
    missing = [s for s in seqs if s not in reports]
    assert not missing, f"windows {missing} were never seen (polled every 0.1 s)"
    agent_s = sum((pod(reports[s])["cpu_used"] or 0.0) * reports[s]["window_seconds"]
                  for s in seqs if pod(reports[s]) is not None)
    by_window = [round((pod(reports[s]) or {}).get("cpu_used") or 0.0, 3) for s in seqs]
    print(f"{pod_name}: agent {agent_s:.3f} CPU-s over windows {list(seqs)} {by_window}, "
          f"cpu.stat {u1 - u0:.3f} CPU-s")
    return agent_s, u1 - u0


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
        burst = cg.burst_in(busy)
        with Agent("--kubernetes", "off", "--sample-interval", "2") as agent:
            agent.wait_ready()
            agent_s, witness_s = cpu_over_a_burst(agent, burst, busy, f"{tag}-busy")
            assert witness_s > 0.5, f"the burst hardly ran ({witness_s:.3f} CPU-s)"
            assert agent_s == pytest.approx(witness_s, rel=0.05)
            pods = {p["pod"]: p for p in agent.report()["pods"]}
            assert pods[f"{tag}-idle"]["cpu_used"] == 0.0  # nothing ever ran in it
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
        burst = cg.burst_in(cg.make(slice_ + "/cri-containerd-" + "ab" * 32 + ".scope"))
        with Agent("--kubernetes", "on", "--sample-interval", "2", "--node-name", NODE,
                   "--tenant-label", "team",
                   env={"EBPF_EDGE_AGENT_KUBERNETES_API_URL": f"http://127.0.0.1:{srv.server_address[1]}"}
                   ) as agent:
            agent.wait_ready()
            # the pod's CPU is its containers' (the witness: the pod cgroup's own cpu.stat)
            agent_s, witness_s = cpu_over_a_burst(agent, burst, pod_cg, "web-0")
            assert witness_s > 0.5, f"the burst hardly ran ({witness_s:.3f} CPU-s)"
            assert agent_s == pytest.approx(witness_s, rel=0.05)
            rep = agent.report()
            p = next(p for p in rep["pods"] if p["pod"] == "web-0")
            assert p["uid"] == uid and p["namespace"] == "shop" and p["tenant"] == "blue"
            assert p["rtt_slo_ms"] == 25.0 and p["qos"] == "burstable"
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
