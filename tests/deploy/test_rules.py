"""promtool checks the PrometheusRule's rules and runs their unit tests; every alert fires in one
and stays silent in another, names the node and links its section of docs/runbooks.md."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.common import ROOT, RULES_TEST, alerts, write_rules_file

RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/ebpf-edge-agent/ebpf-edge-agent/blob/main/docs/runbooks.md"
# the ServiceMonitor's `node` label, else `instance` (a scrape configuration without the label)
NODE = "{{ with $labels.node }}{{ . }}{{ else }}{{ $labels.instance }}{{ end }}"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run make dev-setup (Debian's prometheus)")
    return path


def test_promtool_check_rules(tmp_path):
    f = write_rules_file(tmp_path)
    p = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in p.stdout, p.stdout


def test_promtool_unit_tests(tmp_path):
    write_rules_file(tmp_path)
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yaml")
    p = subprocess.run([promtool(), "test", "rules", "rules_test.yaml"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def seconds(duration: str) -> float:
    """A Prometheus duration (``90s``, ``10m``, ``1h30m``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_every_alert_has_a_firing_unit_test():
    doc = yaml.safe_load(RULES_TEST.read_text())
    fired = {t["alertname"] for case in doc["tests"] for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    assert fired == {a["alert"] for a in alerts()}


def test_every_alert_has_a_silent_unit_test_past_its_for():
    """A case in which the alert never fires, evaluated after its `for` has passed: the
    expression keeps it silent, not the pending period."""
    doc = yaml.safe_load(RULES_TEST.read_text())
    for a in alerts():
        hold = seconds(a.get("for", "0s"))
        silent = [case["name"] for case in doc["tests"]
                  if (evals := [t for t in case["alert_rule_test"] if t["alertname"] == a["alert"]])
                  and not any(t["exp_alerts"] for t in evals)
                  and any(seconds(t["eval_time"]) > hold for t in evals)]
        assert silent, f"{a['alert']}: no unit test case where it stays silent after {a.get('for')}"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to '-'
    (a `#` line inside a fenced code block is a shell comment, not a heading)."""
    out = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", prose, re.MULTILINE):
        out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_every_alert_links_its_runbook_section():
    anchors = github_anchors(RUNBOOKS.read_text())
    for a in alerts():
        url = a["annotations"].get("runbook_url")
        assert url, f"{a['alert']} has no runbook_url"
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE, url
        assert anchor == a["alert"].lower(), url
        assert anchor in anchors, f"{a['alert']}: docs/runbooks.md has no heading for #{anchor}"


def test_every_runbook_section_of_an_alert_has_the_alert():
    names = {a["alert"].lower() for a in alerts()}
    sections = {s for s in github_anchors(RUNBOOKS.read_text()) if s.startswith("ebpf")}
    assert sections == names


def test_every_summary_names_the_node():
    for a in alerts():
        assert NODE in a["annotations"]["summary"], f"{a['alert']}: {a['annotations']['summary']}"


def test_probe_down_reads_the_down_state_not_probe_up():
    """ebpf_probe_up is 0 for an unsupported probe too; only `down` is an outage."""
    (rule,) = [a for a in alerts() if a["alert"] == "EbpfProbeDown"]
    assert 'ebpf_probe_state{state="down"}' in rule["expr"]
    assert "ebpf_probe_up" not in rule["expr"]


def test_the_required_alerts_exist():
    names = {a["alert"] for a in alerts()}
    assert names == {"EbpfAgentTargetDown", "EbpfReportStale", "EbpfProbeDown",
                     "EbpfProbeLostEvents", "EbpfPushStale", "EbpfHighTcpRetransmitRate",
                     "EbpfHighDropRate", "EbpfRttP99AboveSlo"}
