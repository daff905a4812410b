"""Every PromQL expression of the dashboard and of the alerts runs against a real Prometheus
scraping the real agent while the network lab makes slow, lossy traffic, and returns data.
Alerts that a healthy lab cannot trigger (probe down, stale push) must stay silent here, every
series they read must exist, and their firing case is a promtool unit test (test_rules.py)."""

from __future__ import annotations

import os
import time

import pytest

from tests.deploy.common import alerts, dashboard_exprs, metric_names

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("the agent loads BPF and the lab makes namespaces: needs root",
                allow_module_level=True)

PORT = 5203
# what the lab provokes: 5 mbit/s tbf with an 8 % random drop gives retransmits above the
# alert's 2 % (3 % drop gave 1.2-1.8 % here, counted over every namespace of the machine) and an
# RTT of 20-40 ms, above the 10 ms SLO the agent is given here (the default is 100 ms)
FIRE_IN_LAB = {"EbpfHighTcpRetransmitRate", "EbpfRttP99AboveSlo"}
SILENT_IN_LAB = {"EbpfProbeDown", "EbpfPushStale", "EbpfHighDropRate"}


@pytest.fixture(scope="module")
def prom():
    from tests.bpf.netlab import NetLab
    from tests.e2e.agent_proc import Agent, Prometheus
    from tests.extender_stub import ExtenderStub

    ext = ExtenderStub()
    with NetLab() as lab:
        lab.a.limit_rate("5mbit")
        lab.b.drop_randomly(PORT, 0.08)
        lab.spawn(lab.b, "sink", lab.b.ip4, str(PORT), "90")
        time.sleep(0.5)
        lab.spawn(lab.a, "send", lab.b.ip4, str(PORT), "80")
        with Agent("--sample-interval", "2", "--extender-url", ext.url, "--push-interval", "2",
                   "--push-timeout", "1",
                   env={"EBPF_EDGE_AGENT_DEFAULT_RTT_SLO_MS": "10"}) as agent, Prometheus(f"127.0.0.1:{agent.port}") as p:
            agent.wait_ready()
            p.wait_for("ebpf_rtt_p99_milliseconds > 0")
            p.wait_for("ebpf_push_last_success_timestamp_seconds")
            time.sleep(12)  # several windows, so rate() over 10 s has two samples or more
            yield p
    ext.close()


@pytest.mark.parametrize("title,expr", dashboard_exprs())
def test_dashboard_expression_returns_data(prom, title, expr):
    res = prom.query(expr)
    assert res, f"panel {title!r}: {expr} returned nothing"


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
def test_alert_expression(prom, alert):
    rule = next(a for a in alerts() if a["alert"] == alert)
    for name in metric_names(rule["expr"]):
        assert prom.query(name), f"{alert} reads {name}, which the agent does not export"
    res = prom.query(rule["expr"])
    if alert in FIRE_IN_LAB:
        values = {n: prom.query(n) for n in metric_names(rule["expr"])}
        assert res, f"{alert} should hold in the lab (tbf + 8 % loss, 10 ms SLO): {rule['expr']}; {values}"
    else:
        assert alert in SILENT_IN_LAB
        assert not res, f"{alert} holds in a healthy lab: {res}"


def test_every_alert_is_classified():
    assert {a["alert"] for a in alerts()} == FIRE_IN_LAB | SILENT_IN_LAB
