"""The scrape job the Prometheus Operator generates for a ServiceMonitor endpoint, for a lab
Prometheus that has no Kubernetes to discover targets in.

Written after prometheus-operator v0.93.0, ``pkg/prometheus/promcfg.go``,
``ConfigGenerator.generateServiceMonitorConfig`` (commit b9090747e04da3a1cd0db3fb50cecd7f18b85b0e),
with the defaults a plain Prometheus custom resource has: the Endpoints role, the relabel
selector mechanism, one shard, no scrape class, no enforced namespace label. The relabelings are
the operator's, in its order: the job name kept in ``__tmp_prometheus_job_name``; ``keep`` on
each of the selector's matchLabels and on the endpoint's port name; ``node``/``pod`` from the
endpoint's target; ``namespace``, ``service``, ``pod``, ``container``; the running-pod filter;
``job`` from the Service name; ``endpoint`` from the port; then the ServiceMonitor's own
relabelings; then the shard's hashmod. ``honor_labels`` is the endpoint's ``honorLabels``.

Kubernetes service discovery is replaced by a static target carrying the ``__meta_kubernetes_*``
labels endpoints discovery would give the agent's pod, so those relabelings run as in a cluster.
"""

from __future__ import annotations

import re


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(rc: dict) -> dict:
    """A ServiceMonitor relabeling (camelCase) as Prometheus config (snake_case)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(k, k): v for k, v in rc.items()}


def scrape_job(sm: dict, index: int, address: str, *, pod: str, node: str,
               service: str = "ebpf-edge-agent", container: str = "agent",
               honor_labels: bool | None = None) -> dict:
    """The scrape config for endpoint ``index`` of ServiceMonitor ``sm`` with one target, the
    agent's pod at ``address``. ``honor_labels`` overrides the endpoint's (a control case)."""
    spec = sm["spec"]
    ep = spec["endpoints"][index]
    ns = sm["metadata"]["namespace"]
    rl: list[dict] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    for k in sorted(spec["selector"].get("matchLabels", {})):
        v = spec["selector"]["matchLabels"][k]
        rl.append({"action": "keep",
                   "source_labels": [f"__meta_kubernetes_service_label_{_sanitize(k)}",
                                     f"__meta_kubernetes_service_labelpresent_{_sanitize(k)}"],
                   "regex": f"({v});true"})
    rl.append({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
               "regex": ep["port"]})
    target = ["__meta_kubernetes_endpoint_address_target_kind",
              "__meta_kubernetes_endpoint_address_target_name"]
    rl += [
        {"source_labels": target, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}",
         "target_label": "node"},
        {"source_labels": target, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}",
         "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
         "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": ep["port"]},
    ]
    rl += [_relabel(r) for r in ep.get("relabelings", [])]
    rl += [{"source_labels": ["__address__"], "target_label": "__tmp_hash", "modulus": 1,
            "action": "hashmod"},
           {"source_labels": ["__tmp_hash"], "regex": "0", "action": "keep"}]
    meta = {
        "__meta_kubernetes_namespace": ns,
        "__meta_kubernetes_service_name": service,
        "__meta_kubernetes_endpoint_port_name": ep["port"],
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": pod,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_phase": "Running",
    }
    for k, v in spec["selector"].get("matchLabels", {}).items():  # the Service carries them
        meta[f"__meta_kubernetes_service_label_{_sanitize(k)}"] = v
        meta[f"__meta_kubernetes_service_labelpresent_{_sanitize(k)}"] = "true"
    job = {
        "job_name": f"serviceMonitor/{ns}/{sm['metadata']['name']}/{index}",
        "honor_labels": bool(ep.get("honorLabels", False)) if honor_labels is None else honor_labels,
        "static_configs": [{"targets": [address], "labels": meta}],
        "relabel_configs": rl,
    }
    for k, key in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"),
                   ("path", "metrics_path")):
        if k in ep:
            job[key] = ep[k]
    return job


def namespaces_selected(sm: dict) -> list[str]:
    """The namespaces the operator's kubernetes_sd_configs look in for this ServiceMonitor:
    ``namespaceSelector.any`` -> all, ``matchNames`` -> those, neither -> its own."""
    sel = sm["spec"].get("namespaceSelector") or {}
    if sel.get("any"):
        return ["*"]
    return list(sel.get("matchNames") or [sm["metadata"]["namespace"]])
