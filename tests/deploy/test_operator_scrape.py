"""Scraped the way the Prometheus Operator scrapes: a real Prometheus runs the scrape job the
operator (v0.93.0) generates for the shipped ServiceMonitor (tests/deploy/operator_scrape.py),
against the real agent with a pod named by a fake Kubernetes API. The per-pod series keep the
agent's namespace/pod labels; a control job without honorLabels shows the renaming the shipped
object avoids."""

from __future__ import annotations

import os
import threading
import time
import uuid
from http.server import ThreadingHTTPServer

import pytest

from tests.deploy.common import render
from tests.deploy.operator_scrape import scrape_job

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("the agent loads BPF and the test makes cgroups: needs root", allow_module_level=True)

AGENT_POD = "ebpf-edge-agent-x7k2p"


def test_operator_scrape_keeps_the_per_pod_labels():
    from tests.e2e.agent_proc import Agent, Prometheus
    from tests.e2e.test_agent_pods import Cgroups
    from tests.unit.test_kube_api import NODE, FakeApi, Handler

    sm = next(o for o in render() if o["kind"] == "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    uid = str(uuid.uuid4())
    fake = FakeApi()
    fake.pods = {uid: {
        "metadata": {"uid": uid, "namespace": "shop", "name": "web-0", "resourceVersion": "1"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "qosClass": "BestEffort", "podIP": "10.244.1.9",
                   "podIPs": [{"ip": "10.244.1.9"}]},
    }}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"api": fake}))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cg = Cgroups()
    try:
        slice_ = f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
        cg.make(slice_)
        cg.burst_in(cg.make(slice_ + "/cri-containerd-" + "cd" * 32 + ".scope"))
        with Agent("--kubernetes", "on", "--sample-interval", "1", "--node-name", NODE,
                   env={"EBPF_EDGE_AGENT_KUBERNETES_API_URL": f"http://127.0.0.1:{srv.server_address[1]}"}
                   ) as agent:
            address = f"127.0.0.1:{agent.port}"
            shipped = scrape_job(sm, 0, address, pod=AGENT_POD, node=NODE)
            control = scrape_job(sm, 0, address, pod=AGENT_POD, node=NODE, honor_labels=False)
            control["job_name"] += "-control"
            # told apart by a label (both jobs set job="ebpf-edge-agent", the Service's name)
            control["relabel_configs"].append({"target_label": "scrape", "replacement": "control"})
            for job in (shipped, control):
                job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
            agent.wait_ready()
            with Prometheus(scrape_configs=[shipped, control]) as prom:
                sel = (f'job="ebpf-edge-agent",endpoint="metrics",service="ebpf-edge-agent",'
                       f'node="{NODE}",scrape=""')
                (got,) = prom.wait_for(f'ebpf_pod_cpu_used_cores{{{sel},namespace="shop",pod="web-0"}}')
                assert "exported_pod" not in got["metric"], got
                prom.wait_for('ebpf_node_score{scrape="control"}')
                # nothing of the shipped job is renamed
                assert prom.query(f'count({{__name__=~"ebpf_.+",{sel}}})')
                assert not prom.query(f'{{__name__=~"ebpf_.+",{sel},exported_pod!=""}}')
                assert not prom.query(f'{{__name__=~"ebpf_.+",{sel},exported_namespace!=""}}')
                # the node's series get the agent pod's labels
                (score,) = [r["metric"] for r in prom.query(f"ebpf_node_score{{{sel}}}")
                            if r["metric"]["pod"] == AGENT_POD]
                assert score["namespace"] == "observability" and score["container"] == "agent"
                # the control: what the ServiceMonitor without honorLabels did
                renamed = prom.query('ebpf_pod_cpu_used_cores{scrape="control",'
                                     'exported_namespace="shop",exported_pod="web-0"}')
                assert renamed and renamed[0]["metric"]["pod"] == AGENT_POD, renamed
    finally:
        cg.close()
        srv.shutdown()
        srv.server_close()
