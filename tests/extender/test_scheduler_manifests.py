"""manifests/scheduler: renders with kubectl kustomize, every object is schema-valid
(kubernetes-validate --strict), the KubeSchedulerConfiguration (a file for kube-scheduler, not an
API object) uses only the field names of its upstream v1 types, and the pieces point at each
other (scheduler -> sidecar on localhost, agents -> the Service)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from agent.config import load_config
from tests.deploy.common import MANIFESTS, render

SCHED = MANIFESTS / "scheduler"
VERSIONS = ["1.28.0", "1.30.0", kubernetes_validate.latest_version()]

# Field names (JSON tags) of the upstream v1 types, written from k8s.io/kube-scheduler/config/v1
# types.go (KubeSchedulerConfiguration, KubeSchedulerProfile, Extender, ExtenderTLSConfig,
# ExtenderManagedResource) and k8s.io/component-base/config/v1alpha1 (LeaderElectionConfiguration,
# ClientConnectionConfiguration), as documented at
# https://kubernetes.io/docs/reference/config-api/kube-scheduler-config.v1/
UPSTREAM = {
    "KubeSchedulerConfiguration": {
        "apiVersion", "kind", "parallelism", "leaderElection", "clientConnection",
        "enableProfiling", "enableContentionProfiling", "percentageOfNodesToScore",
        "podInitialBackoffSeconds", "podMaxBackoffSeconds", "profiles", "extenders",
        "delayCacheUntilActive"},
    "LeaderElectionConfiguration": {
        "leaderElect", "leaseDuration", "renewDeadline", "retryPeriod", "resourceLock",
        "resourceName", "resourceNamespace"},
    "ClientConnectionConfiguration": {"kubeconfig", "acceptContentTypes", "contentType", "qps", "burst"},
    "KubeSchedulerProfile": {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"},
    "Extender": {
        "urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb",
        "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources",
        "ignorable"},
    "ExtenderTLSConfig": {"insecure", "serverName", "certFile", "keyFile", "caFile", "certData",
                          "keyData", "caData"},
    "ExtenderManagedResource": {"name", "ignoredByScheduler"},
}


def unknown_fields(doc: dict) -> list[str]:
    """Paths of fields that are not in the upstream v1 types (a typo kube-scheduler would
    reject in strict decoding)."""
    bad = []

    def check(obj, typ, path):
        if not isinstance(obj, dict):
            bad.append(f"{path}: not a mapping")
            return
        for k in obj:
            if k not in UPSTREAM[typ]:
                bad.append(f"{path}.{k}")
    check(doc, "KubeSchedulerConfiguration", "$")
    if "leaderElection" in doc:
        check(doc["leaderElection"], "LeaderElectionConfiguration", "$.leaderElection")
    if "clientConnection" in doc:
        check(doc["clientConnection"], "ClientConnectionConfiguration", "$.clientConnection")
    for i, p in enumerate(doc.get("profiles", [])):
        check(p, "KubeSchedulerProfile", f"$.profiles[{i}]")
    for i, e in enumerate(doc.get("extenders", [])):
        check(e, "Extender", f"$.extenders[{i}]")
        if "tlsConfig" in e:
            check(e["tlsConfig"], "ExtenderTLSConfig", f"$.extenders[{i}].tlsConfig")
        for j, m in enumerate(e.get("managedResources", [])):
            check(m, "ExtenderManagedResource", f"$.extenders[{i}].managedResources[{j}]")
    return bad


def scheduler_config() -> dict:
    return yaml.safe_load((SCHED / "kube-scheduler-config.yaml").read_text())


@pytest.fixture(scope="module")
def objs() -> list[dict]:
    return render(SCHED)


def kind(objs, k):
    return [o for o in objs if o["kind"] == k]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_schema_valid(objs, version):
    for o in objs:
        kubernetes_validate.validate(o, version, strict=True)
    assert sorted(o["kind"] for o in objs) == sorted([
        "ServiceAccount", "ClusterRoleBinding", "ClusterRoleBinding", "RoleBinding", "Role",
        "RoleBinding", "Deployment", "Service", "ConfigMap"])
    for o in objs:
        if o["kind"] != "ClusterRoleBinding":
            assert o["metadata"]["namespace"] == "kube-system", o["metadata"]


def test_kube_scheduler_configuration_uses_only_upstream_v1_fields():
    doc = scheduler_config()
    assert doc["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert doc["kind"] == "KubeSchedulerConfiguration"
    assert unknown_fields(doc) == []
    # and the check would catch a typo
    typo = scheduler_config()
    typo["extenders"][0]["nodeCachecapable"] = True
    typo["extenders"][0]["tlsConfig"] = {"insecureSkipVerify": True}
    assert unknown_fields(typo) == ["$.extenders[0].nodeCachecapable",
                                    "$.extenders[0].tlsConfig.insecureSkipVerify"]


def test_extender_entry_is_ignorable_cache_capable_prioritize_only():
    (ext,) = scheduler_config()["extenders"]
    assert ext["ignorable"] is True and ext["nodeCacheCapable"] is True
    assert ext["prioritizeVerb"] == "prioritize" and "filterVerb" not in ext
    assert isinstance(ext["weight"], int) and not isinstance(ext["weight"], bool) and ext["weight"] >= 1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", ext["httpTimeout"])
    assert m, ext["httpTimeout"]
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    assert 0 < seconds <= 5  # a slow extender must not hold up a scheduling cycle for long
    assert urlparse(ext["urlPrefix"]).hostname == "127.0.0.1"  # the sidecar


def test_pieces_point_at_each_other(objs):
    (dep,) = kind(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    containers = {c["name"]: c for c in pod["containers"]}
    sched, ext = containers["kube-scheduler"], containers["extender"]
    # kube-scheduler reads the generated ConfigMap at the path it is given
    cfg_arg = next(a for a in sched["command"] if a.startswith("--config="))
    cfg_path = cfg_arg.split("=", 1)[1]
    vol = next(v for v in pod["volumes"] if v["name"] == "scheduler-config")
    cm = next(o for o in kind(objs, "ConfigMap") if o["metadata"]["name"] == vol["configMap"]["name"])
    mount = next(m for m in sched["volumeMounts"] if m["name"] == "scheduler-config")
    assert cfg_path.startswith(mount["mountPath"] + "/")
    assert yaml.safe_load(cm["data"][cfg_path.rsplit("/", 1)[1]]) == scheduler_config()
    # the scheduler's extender URL is the sidecar's listen port
    listen = ext["args"][ext["args"].index("--listen") + 1]
    port = int(listen.rsplit(":", 1)[1])
    assert urlparse(scheduler_config()["extenders"][0]["urlPrefix"]).port == port
    assert ext["ports"][0]["containerPort"] == port
    assert ext["command"] == ["/opt/ebpf-edge-agent/venv/bin/ebpf-edge-extender"]
    for c in (sched, ext):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the profile name is the leader-election lease the Role grants
    assert scheduler_config()["profiles"][0]["schedulerName"] == scheduler_config()["leaderElection"]["resourceName"]
    role = next(o for o in kind(objs, "Role") if "leader" in o["metadata"]["name"])
    assert any(r.get("resourceNames") == ["ebpf-edge-scheduler"] for r in role["rules"])
    # the agents push to this headless Service, on the sidecar's port
    (svc,) = kind(objs, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] == ext["ports"][0]["name"]
    agent_cm = next(o for o in render(MANIFESTS) if o["kind"] == "ConfigMap" and "agent.yaml" in o["data"])
    url = urlparse(yaml.safe_load(agent_cm["data"]["agent.yaml"])["extender_url"])
    assert url.hostname == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert url.port == svc["spec"]["ports"][0]["port"]


def test_agent_config_with_the_push_url_is_valid(tmp_path):
    cm = next(o for o in render(MANIFESTS) if o["kind"] == "ConfigMap" and "agent.yaml" in o["data"])
    f = tmp_path / "agent.yaml"
    f.write_text(cm["data"]["agent.yaml"])
    c = load_config(str(f), env={})
    assert c.extender_urls == ("http://ebpf-scheduler-extender.kube-system.svc:8888",)
