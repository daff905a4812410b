"""promtool checks the PrometheusRule's rules and runs their unit tests; every alert has one."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.common import RULES_TEST, alerts, write_rules_file


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


def test_every_alert_has_a_firing_unit_test():
    doc = yaml.safe_load(RULES_TEST.read_text())
    fired = {t["alertname"] for case in doc["tests"] for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    assert fired == {a["alert"] for a in alerts()}


def test_the_required_alerts_exist():
    names = {a["alert"] for a in alerts()}
    assert names == {"EbpfProbeDown", "EbpfPushStale", "EbpfHighTcpRetransmitRate",
                     "EbpfHighDropRate", "EbpfRttP99AboveSlo"}
