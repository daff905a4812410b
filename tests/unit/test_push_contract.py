"""Push contract v2: what each answer of the extender means to the pusher, several endpoints
with their own mailboxes, a name that resolves to several replicas (TLS checked against the
name), and the report's instance id (loopback only, no kernel)."""

import logging
import shutil
import subprocess
import time

import pytest

from agent.export.extender import PushGroup, Pusher, push_metrics
from tests.extender_stub import ExtenderStub
from tests.unit.test_pusher import wait_for


@pytest.fixture
def ext():
    e = ExtenderStub()
    yield e
    e.close()


def make(url, **kw):
    p = Pusher(url, kw.pop("timeout", 0.5), backoff_first=0.05, backoff_max=0.1, **kw)
    p.start()
    return p


def test_accepted_is_delivered(ext):
    p = make(ext.url)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.delivered == 1)
        assert not p.pending and p.last_delivered_sequence == 1
    finally:
        p.stop()


def test_stale_is_counted_and_not_retried(ext):
    ext.mode = "stale"
    p = make(ext.url)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.stale == 1)
        time.sleep(0.4)  # several backoff periods: no retry
        assert p.attempts == 1 and p.delivered == 0 and not p.pending
        assert p.last_success is None  # stale is not a delivery
    finally:
        p.stop()


def test_a_2xx_without_the_contracts_body_is_invalid_and_retried(ext):
    ext.mode = "badbody"
    p = make(ext.url)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.failures["invalid_response"] >= 2)
        assert p.delivered == 0 and p.pending
    finally:
        p.stop()


@pytest.mark.parametrize("code", [400, 401, 403, 413])
def test_refusals_are_not_retried_and_logged_once_with_the_message(ext, caplog, code):
    ext.mode = f"status:{code}"
    caplog.set_level(logging.ERROR, logger="agent.export.extender")
    p = make(ext.url, interval=0.2)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.failures[f"http_{code}"] == 1)
        time.sleep(0.4)
        assert p.attempts == 1 and not p.pending  # this report is dropped, not retried
        p.offer({"sequence": 2})  # the next report is tried (at the next interval)
        # the worker counts the attempt before it reads the answer: wait for both
        assert wait_for(lambda: p.attempts == 2 and p.rejected == 2)
        assert p.failures[f"http_{code}"] == 2
        logged = [r for r in caplog.records if f"HTTP {code}" in r.getMessage()]
        assert len(logged) == 1 and f"stub refuses with {code}" in logged[0].getMessage()
    finally:
        p.stop()


@pytest.mark.parametrize("mode,cause", [("status:429", "http_429"), ("status:503", "http_5xx"),
                                        ("status:404", "http_4xx"), ("hang", "timeout")])
def test_transient_failures_are_retried_with_backoff(ext, mode, cause):
    ext.mode = mode
    p = make(ext.url, timeout=0.2)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.failures[cause] >= 2), p.failures
        assert p.pending
    finally:
        p.stop()


def test_one_hanging_endpoint_never_delays_another():
    slow, fast = ExtenderStub(), ExtenderStub()
    slow.mode = "hang"
    g = PushGroup([slow.url, fast.url], 1.0, interval=0.1, backoff_first=0.05, backoff_max=0.1)
    g.start()
    try:
        for seq in range(1, 8):
            g.offer({"sequence": seq})
            time.sleep(0.15)
        assert wait_for(lambda: any(r["sequence"] == 7 for r in fast.received))
        assert len(fast.received) >= 5, [r["sequence"] for r in fast.received]
        assert not slow.received
        by = {p.endpoint: p for p in g.pushers}
        assert by[fast.url + "/metrics/report"].delivered >= 5
        assert by[slow.url + "/metrics/report"].delivered == 0
    finally:
        g.stop()
        slow.close()
        fast.close()


def test_a_name_resolving_to_two_replicas_gets_a_push_at_each():
    a = ExtenderStub("127.0.0.1")
    b = ExtenderStub("127.0.0.2", port=a.port)
    answers = {"extender.test": ["127.0.0.1", "127.0.0.2"]}
    g = PushGroup([f"http://extender.test:{a.port}"], 1.0, interval=0.1,
                  resolve=lambda host, port: answers[host], resolve_every=0.1,
                  backoff_first=0.05, backoff_max=0.1)
    g.start()
    try:
        g.offer({"sequence": 1})
        assert wait_for(lambda: a.received and b.received)
        assert a.headers[0]["host"] == b.headers[0]["host"] == f"extender.test:{a.port}"
        fams = {m.name: m for m in push_metrics(g.pushers)}
        addrs = {s.labels["address"] for s in fams["ebpf_push_delivered"].samples}
        assert addrs == {"127.0.0.1", "127.0.0.2"}
        # a replica goes away: re-resolved, its pusher stops; the other goes on
        answers["extender.test"] = ["127.0.0.2"]
        assert wait_for(lambda: [p.address for p in g.pushers] == ["127.0.0.2"])
        n_a = len(a.received)
        g.offer({"sequence": 2})
        assert wait_for(lambda: any(r["sequence"] == 2 for r in b.received))
        assert len(a.received) == n_a
    finally:
        g.stop()
        a.close()
        b.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_to_a_replica_is_verified_against_the_name_not_the_address(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=extender.test", "-addext", "subjectAltName=DNS:extender.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = ExtenderStub("127.0.0.1", tls=(str(cert), str(key)))
    names = {"extender.test": ["127.0.0.1"], "impostor.test": ["127.0.0.1"]}
    groups = [PushGroup([f"https://{name}:{srv.port}"], 1.0, interval=0.1, ca_file=str(cert),
                        resolve=lambda host, port: names[host], backoff_first=0.05,
                        backoff_max=0.1) for name in ("extender.test", "impostor.test")]
    for g in groups:
        g.start()
    try:
        for g in groups:
            g.offer({"sequence": 1})
        assert wait_for(lambda: all(g.pushers for g in groups))
        good, bad = (g.pushers[0] for g in groups)
        assert wait_for(lambda: good.delivered == 1), good.last_error
        assert wait_for(lambda: bad.failures["tls"] >= 1), bad.failures
        assert bad.delivered == 0 and good.address == "127.0.0.1"
    finally:
        for g in groups:
            g.stop()
        srv.close()


def test_an_unresolvable_name_is_tried_as_it_is_and_counted():
    def fail(host, port):
        raise OSError("Name or service not known")

    g = PushGroup(["http://nowhere.invalid:9"], 0.2, interval=0.1, resolve=fail,
                  backoff_first=0.05, backoff_max=0.1)
    g.start()
    try:
        g.offer({"sequence": 1})
        assert wait_for(lambda: g.pushers)
        (p,) = g.pushers
        assert p.address == ""
        assert wait_for(lambda: p.failures["connection"] >= 1), p.failures
    finally:
        g.stop()


def test_several_urls_in_config_and_each_is_checked():
    from agent.config import Config, ConfigError

    c = Config(extender_url="http://a.example:8888, https://b.example:8443")
    assert c.extender_urls == ("http://a.example:8888", "https://b.example:8443")
    with pytest.raises(ConfigError, match="extender_url"):
        Config(extender_url="http://a.example:8888,ftp://b")


def test_report_carries_the_instance_and_push_interval():
    from agent.config import Config
    from agent.export.payload import build_payload
    from agent.report import AGENT_INSTANCE
    from tests.unit import report_fixture as F

    r = F.report(Config(push_interval=15))
    p = build_payload(r)
    assert p["push_interval_seconds"] == 15 and p["agent_instance"] == "5f2c0d8e9a1b4c3d"
    assert p["schema_version"].split(".")[0] == "1"
    assert len(AGENT_INSTANCE) == 32  # random per process (uuid4)
