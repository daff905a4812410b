"""A report from a fixture cgroup tree (systemd driver, containerd) joined with pod metadata:
golden payload, and the join rules (API names the pod, standalone names it by cgroup)."""

import json
import os
from pathlib import Path

from agent.cgroups.read import CgroupReader
from agent.cgroups.usage import pod_windows
from agent.config import Config
from agent.export.payload import build_payload
from agent.kube import ContainerResources, KubeView, NodeMeta, PodMeta
from agent.pods import join
from agent.report import build_report
from tests.unit import report_fixture as F

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "tests" / "fixtures" / "cgroup" / "systemd-containerd"
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "payload_cgroups.json"
UID = "0a1b2c3d-1111-4222-8333-444455556666"


def view():
    meta = PodMeta(uid=UID, namespace="shop", name="web-0", tenant="blue",
                   annotations={"ebpf-edge-agent.io/rtt-slo-ms": "20"}, pod_ips=("10.0.0.5",),
                   qos="burstable",
                   containers=(ContainerResources("c", 2.0, 1 << 30, None, None),))
    node = NodeMeta("node-1", 3.92, 16 << 30, 4.0, 16 << 30)
    return KubeView(source="kubernetes", node_name="node-1", node=node, pods={UID: meta}, synced=True)


def samples():
    reader = CgroupReader(str(TREE))
    r1 = reader.read()
    r2 = reader.read()
    # the same files twice: a window with no CPU used, limits and memory as in the tree
    return join(r2, pod_windows(r1, r2), view(), Config().rtt_slo_annotation)


def test_join_names_pods_from_the_api_and_the_rest_by_cgroup():
    pods = {p.uid: p for p in samples()}
    web = pods[UID]
    assert (web.namespace, web.pod, web.tenant, web.rtt_slo_ms) == ("shop", "web-0", "blue", 20.0)
    assert web.addresses == ("10.0.0.5",) and web.cpu_used == 0.0
    unknown = pods["7e8f9a0b-aaaa-4bbb-8ccc-ddddeeeeffff"]  # not (yet) known to the API
    assert unknown.pod == "pod7e8f9a0b-aaaa-4bbb-8ccc-ddddeeeeffff" and unknown.namespace == ""
    assert unknown.qos == "besteffort"


def test_golden_payload_from_cgroup_tree():
    r = build_report(Config(), node_name="node-1", sequence=3, timestamp="2026-11-23T10:00:00.000000Z",
                     window_seconds=10.0, states=F.states(), windows=F.windows(),
                     cumulative=F.cumulative(), tcp_segments=(1000, 1), resources=F.RESOURCES,
                     pods=samples(), agent_instance="5f2c0d8e9a1b4c3d")
    text = json.dumps(build_payload(r), indent=1, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not GOLDEN.exists():
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "payload_cgroups.json differs (UPDATE_GOLDEN=1 to accept)"
