"""The kustomization renders with kubectl, every object is schema-valid (kubernetes-validate
--strict) on 1.28, 1.30 and the newest Kubernetes it knows, yamllint is clean, and the
DaemonSet keeps the promises of docs/deploy.md (no privileged, named capabilities, read-only
host paths, probes, downward API)."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from agent.config import load_config
from agent.probes import registry
from tests.deploy.common import MANIFESTS, ROOT, render

VERSIONS = ["1.28.0", "1.30.0", kubernetes_validate.latest_version()]
# prometheus-operator kinds: kubernetes-validate ships only the core API schemas, and no
# package from the registries reachable here carries the operator's CRD schemas in a form it
# reads. The PrometheusRule's spec is checked by promtool (test_rules.py) instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
TARGETS = {"base": MANIFESTS, "capacity overlay": MANIFESTS / "overlays" / "capacity"}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def bundle(request) -> list[dict]:
    return render(TARGETS[request.param])


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def test_bundle_has_every_object():
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["ResourceQuota", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "ConfigMap", "ConfigMap", "Service", "DaemonSet", "PrometheusRule",
                            "ServiceMonitor"])
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "observability", o["metadata"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_schema_valid(bundle, version):
    checked = 0
    for obj in bundle:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 8


def test_strict_validation_would_catch_a_typo():
    """--strict is what makes the test above worth having: an unknown field fails."""
    ds = by_kind(render(), "DaemonSet")[0]
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["priviledged"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[-1], strict=True)


def test_crds_are_not_schema_checked_here():
    pytest.skip("ServiceMonitor/PrometheusRule: no prometheus-operator CRD schema available "
                "offline to kubernetes-validate; PrometheusRule.spec is checked by promtool")


def test_yamllint_clean():
    cfg = ROOT / "manifests" / ".yamllint.yaml"
    p = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-c", str(cfg),
                        str(MANIFESTS), str(ROOT / "tests" / "deploy")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_daemonset_least_privilege_and_wiring(bundle):
    ds = by_kind(bundle, "DaemonSet")[0]
    assert ds["metadata"]["name"] == "ebpf-edge-agent"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["template"]["metadata"]["labels"]["app"] == "ebpf-edge-agent"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged") is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["BPF", "PERFMON"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["ports"][0]["containerPort"] == 9810
    res = c["resources"]
    assert res["requests"]["memory"] and res["limits"]["memory"]
    # every host path is mounted read-only
    host_vols = {v["name"] for v in pod["volumes"] if "hostPath" in v}
    assert host_vols == {"host-root", "host-sys-kernel"}
    for m in c["volumeMounts"]:
        if m["name"] in host_vols:
            assert m.get("readOnly") is True, m
    # the config the container reads is the generated ConfigMap
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
    assert any(o["metadata"]["name"] == cm_name for o in by_kind(bundle, "ConfigMap"))


def test_node_config_is_a_valid_agent_config(tmp_path):
    objs = render()
    cm = next(o for o in by_kind(objs, "ConfigMap") if "agent.yaml" in o["data"])
    f = tmp_path / "agent.yaml"
    f.write_text(cm["data"]["agent.yaml"])
    c = load_config(str(f), env={})
    assert str(c.proc_root) == "/host/proc"
    assert str(c.cgroup_root) == "/host/sys/fs/cgroup"
    assert [s.name for s in registry.selected(c)] == list(registry.names())
    # tracefs from either of the host's paths
    assert [str(p) for p in c.tracefs_roots] == ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
    # and every path the config points at lies in a mount of the DaemonSet (/lib/modules through
    # the image's link into /host, see the Dockerfile)
    ds = by_kind(objs, "DaemonSet")[0]
    mounts = [m["mountPath"] for m in ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    for path in [c.proc_root, c.cgroup_root, *c.tracefs_roots, c.btf_path, "/host/lib/modules",
                 "/host/usr/src"]:
        assert any(str(path).startswith(m.rstrip("/") + "/") for m in mounts), (path, mounts)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ln -s /host/lib/modules /lib/modules" in dockerfile
    assert "ln -s /host/usr/src /usr/src" in dockerfile


def test_rbac_reads_only_and_capacity_overlay_adds_node_status_patch():
    def rules(objs):
        return [r for o in by_kind(objs, "ClusterRole") for r in o["rules"]]

    base = rules(render())
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in base), base
    assert {"pods", "nodes"} == {res for r in base for res in r["resources"]}
    overlay = rules(render(MANIFESTS / "overlays" / "capacity"))
    patch = [r for r in overlay if "patch" in r["verbs"]]
    assert patch == [{"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]
    ds = by_kind(render(MANIFESTS / "overlays" / "capacity"), "DaemonSet")[0]
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EBPF_EDGE_AGENT_ADVERTISE_CAPACITY"] == "true"
    assert "NODE_NAME" in env  # the patch merged into, not replaced, the container


def test_service_is_headless_with_scrape_annotations():
    svc = by_kind(render(), "Service")[0]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "9810"
    assert svc["spec"]["selector"] == {"app": "ebpf-edge-agent"}
    sm = by_kind(render(), "ServiceMonitor")[0]
    assert sm["spec"]["selector"]["matchLabels"] == {"app": "ebpf-edge-agent"}
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]


def test_dashboard_configmap_is_labelled_for_grafana():
    cm = next(o for o in by_kind(render(), "ConfigMap") if "ebpf-edge-agent.json" in o["data"])
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_scheduler_config_is_prioritize_only_and_ignorable():
    doc = yaml.safe_load((MANIFESTS / "scheduler" / "kube-scheduler-config.yaml").read_text())
    assert doc["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert doc["kind"] == "KubeSchedulerConfiguration"
    (ext,) = doc["extenders"]
    assert ext["prioritizeVerb"] and ext["ignorable"] is True and ext["weight"] >= 1
    assert "filterVerb" not in ext and "bindVerb" not in ext and "preemptVerb" not in ext


# ---------------------------------------------------------------------------------------------
# day-one cluster failures: admission, host paths, args, uninstall (static: no API server here)

# host paths that exist on every Linux node: a hostPath of type Directory on anything else
# leaves the pod in ContainerCreating on the node that lacks it; an unset type lets the runtime
# create it (a write to the host, and an error where /usr is read-only)
ALWAYS_PRESENT = {"/", "/sys/kernel"}


def _pod(objs):
    return by_kind(objs, "DaemonSet")[0]["spec"]["template"]["spec"]


def test_host_paths_never_block_the_pod_and_never_create_anything(bundle):
    pod = _pod(bundle)
    for v in pod["volumes"]:
        hp = v.get("hostPath")
        if hp is None:
            continue
        assert hp.get("type") == "Directory", v  # checks, creates nothing
        assert hp["path"] in ALWAYS_PRESENT, v
    (c,) = pod["containers"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for m in c["volumeMounts"]:
        if m["name"] in host:
            assert m["readOnly"] is True and m["mountPropagation"] == "HostToContainer", m
    # tracefs at either of its host paths, where BCC looks for it in the container
    by_path = {m["mountPath"]: host[m["name"]] for m in c["volumeMounts"] if m["name"] in host}
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        hits = [(mp, hp) for mp, hp in by_path.items() if tracefs.startswith(mp.rstrip("/") + "/")]
        assert any(tracefs.replace(mp, hp.rstrip("/") or "/", 1) == tracefs for mp, hp in hits), (tracefs, by_path)


def test_admission_selector_service_links_and_args(bundle):
    pod = _pod(bundle)
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["enableServiceLinks"] is False
    (c,) = pod["containers"]
    # the image's entrypoint is the program: the args name the command
    assert c["args"][:1] == ["run"] and "--config" in c["args"]
    assert "command" not in c
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/opt/ebpf-edge-agent/venv/bin/ebpf-edge-agent"]' in dockerfile
    assert 'CMD ["run"]' in dockerfile


def test_priority_class_is_admitted_by_a_resourcequota_in_the_namespace(bundle):
    pod = _pod(bundle)
    ds_ns = by_kind(bundle, "DaemonSet")[0]["metadata"]["namespace"]
    quotas = [q for q in by_kind(bundle, "ResourceQuota") if q["metadata"]["namespace"] == ds_ns]
    scoped = [v for q in quotas for e in q["spec"]["scopeSelector"]["matchExpressions"]
              if e["scopeName"] == "PriorityClass" and e["operator"] == "In" for v in e["values"]]
    assert pod["priorityClassName"] in scoped
    assert all(int(q["spec"]["hard"]["pods"]) >= 1000 for q in quotas)  # one pod per node


def test_namespace_is_separate_and_allows_the_pod_at_privileged():
    assert not by_kind(render(), "Namespace"), "manifests/ must not own the namespace"
    assert not by_kind(render(MANIFESTS / "overlays" / "capacity"), "Namespace")
    (ns,) = render(MANIFESTS / "namespace")
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "observability"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    text = (MANIFESTS / "namespace" / "namespace.yaml").read_text()
    for reason in ("hostPath", "BPF and PERFMON", "Unconfined"):  # the three reasons, named
        assert reason in text
    assert "kubectl label namespace" in text


def test_generated_config_carries_the_label_undeploy_selects():
    cms = [o for o in by_kind(render(), "ConfigMap") if "agent.yaml" in o["data"]]
    (cm,) = cms
    labels = cm["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "ebpf-edge-agent"
    assert labels["app.kubernetes.io/component"] == "agent-config"
    script = (ROOT / "scripts" / "undeploy.sh").read_text()
    assert "app.kubernetes.io/part-of=ebpf-edge-agent,app.kubernetes.io/component=agent-config" in script
    # the dashboard ConfigMap is not a generation of the config: never selected
    dash = next(o for o in by_kind(render(), "ConfigMap") if "ebpf-edge-agent.json" in o["data"])
    assert "app.kubernetes.io/component" not in dash["metadata"]["labels"]


FAKE_KUBECTL = """#!/bin/sh
echo "$*" >> "$KUBECTL_LOG"
case "$1 $2" in
  "get nodes") printf '%s\n' \
      'node-a {"cpu":"4","example.com/SLO":"10000000000","memory":"16Gi"}' \
      'node-b {"cpu":"4","memory":"16Gi"}' \
      'node-c {"cpu":"8","example.com/SLO":"25000000000"}' ;;
esac
"""


def test_undeploy_removes_the_agent_old_configmaps_and_the_advertised_resource(tmp_path):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    log = tmp_path / "calls"
    env = {"PATH": "/usr/bin:/bin", "KUBECTL": str(kubectl), "KUBECTL_LOG": str(log)}
    p = subprocess.run(["make", "-s", "-C", str(ROOT), "undeploy"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "delete -k manifests/ --ignore-not-found"
    assert not any("namespace" in c.split()[:2] or "manifests/namespace" in c for c in calls), calls
    assert ("delete configmap -n observability --ignore-not-found -l "
            "app.kubernetes.io/part-of=ebpf-edge-agent,app.kubernetes.io/component=agent-config") in calls
    patches = [c for c in calls if c.startswith("patch node")]
    remove = '-p [{"op": "remove", "path": "/status/capacity/example.com~1SLO"}]'
    assert patches == [f"patch node node-a --subresource=status --type=json {remove}",
                       f"patch node node-c --subresource=status --type=json {remove}"]


def test_another_namespace_gets_a_servicemonitor_that_selects_it(tmp_path):
    """A kustomization naming another namespace: the ServiceMonitor moves with it, and with no
    namespaceSelector the operator looks for the Service in that namespace (its own)."""
    import os

    from tests.deploy.operator_scrape import namespaces_selected

    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: monitoring\nresources:\n  - {os.path.relpath(MANIFESTS, tmp_path)}\n")
    objs = render(tmp_path)
    sm = by_kind(objs, "ServiceMonitor")[0]
    svc = by_kind(objs, "Service")[0]
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"] == "monitoring"
    assert namespaces_selected(sm) == ["monitoring"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert all(ep.get("honorLabels") is True for ep in sm["spec"]["endpoints"])
