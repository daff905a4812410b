"""Shared by the deploy tests: the repository, the rendered bundle, the rules and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
DASHBOARD = MANIFESTS / "base" / "dashboards" / "ebpf-edge-agent.json"
RULE_OBJECT = MANIFESTS / "base" / "prometheusrule.yaml"
RULES_TEST = Path(__file__).with_name("rules_test.yaml")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl is not installed (it renders the kustomization offline)")
    return path


def render(target: Path = MANIFESTS) -> list[dict]:
    """`kubectl kustomize <target>` as a list of objects (raises with kubectl's message)."""
    p = subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULE_OBJECT.read_text())["spec"]["groups"]


def write_rules_file(directory: Path) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file (what promtool reads)."""
    path = directory / "ebpf-edge-agent.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def alerts() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def dashboard_exprs(rate_interval: str = "10s") -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target and query variable of the dashboard, with
    Grafana's variables replaced the way Grafana would for "All"."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"]))
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", q)
            assert m, f"unexpected variable query {q!r}"
            out.append((f"variable {var['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
    return [(title, e.replace("$__rate_interval", rate_interval).replace("$instance", ".*")
             .replace("$node", ".*"))
            for title, e in out]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(ebpf_[a-z0-9_]+|process_[a-z0-9_]+)\b", expr))
