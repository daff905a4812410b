"""The extender over real HTTP on loopback: the agent's own Pusher delivers to it (accepted,
stale, refusals dropped), oversized bodies get 413 from Content-Length alone, scheduler verbs
never answer 500, TLS, /metrics and /healthz."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time

import pytest

from agent.export.extender import Pusher
from extender.server import ExtenderServer
from tests.extender.reports import body, fixture, make, report


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def served():
    ext, clock = make()
    srv = ExtenderServer(ext, "127.0.0.1", 0).start()
    yield ext, srv
    srv.stop()


def post(srv, path, raw: bytes, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    c.request("POST", path, body=raw, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, json.loads(data) if data.startswith((b"{", b"[")) else data


def test_the_agents_pusher_is_answered_as_its_contract_expects(served):
    ext, srv = served
    p = Pusher(srv.url, 1.0, backoff_first=0.05, backoff_max=0.1)
    p.start()
    try:
        p.offer(report(seq=1, score=90.0))
        assert wait_for(lambda: p.delivered == 1)
        p.offer(report(seq=1, score=10.0))  # the same sequence again: stale, not retried
        assert wait_for(lambda: p.stale == 1)
        time.sleep(0.3)
        assert p.attempts == 2 and not p.pending
        p.offer(report(seq=2, schema_version="2.0"))  # refused for good: dropped, not retried
        assert wait_for(lambda: p.failures["http_400"] == 1)
        time.sleep(0.3)
        assert p.attempts == 3 and p.rejected == 1
        assert ext.store.get("node-a").sequence == 1 and ext.score("node-a") == 9.0
    finally:
        p.stop()


def test_the_agents_pusher_with_a_token(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("abc123")
    ext, _ = make(token_file=str(tok))
    srv = ExtenderServer(ext, "127.0.0.1", 0).start()
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.write_text("nope")
    good.write_text("abc123\n")
    p1 = Pusher(srv.url, 1.0, token_file=str(bad), backoff_first=0.05, backoff_max=0.1)
    p2 = Pusher(srv.url, 1.0, token_file=str(good), backoff_first=0.05, backoff_max=0.1)
    p1.start()
    p2.start()
    try:
        p1.offer(report(seq=1))
        assert wait_for(lambda: p1.failures["http_401"] == 1)
        assert ext.store.get("node-a") is None
        p2.offer(report(seq=1))
        assert wait_for(lambda: p2.delivered == 1)
    finally:
        p1.stop()
        p2.stop()
        srv.stop()


def test_oversized_body_is_refused_from_its_content_length_without_reading_it():
    ext, _ = make(max_body_bytes=2048)
    srv = ExtenderServer(ext, "127.0.0.1", 0).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            # announce 10 MB, send none of it: the answer comes anyway
            s.sendall(b"POST /metrics/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10000000\r\n\r\n")
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 413"), data
        assert ext.registry.get_sample_value("ebpf_extender_reports_rejected_total",
                                             {"cause": "too_large"}) == 1
        # a verb above the limit is answered, not failed
        code, doc = post(srv, "/prioritize", b" " * 3000)
        assert (code, doc) == (200, [])
    finally:
        srv.stop()


def test_scheduler_verbs_never_answer_500(served):
    ext, srv = served
    post(srv, "/metrics/report", body(report("node-a", score=80.0)))
    for raw in (b"", b"{", b"\xff", b"[]", b"null", b'{"Nodes": 3}'):
        code, doc = post(srv, "/prioritize", raw)
        assert (code, doc) == (200, []), raw
        code, doc = post(srv, "/filter", raw)
        assert code == 200 and doc["Error"] and doc["FailedNodes"] == {}, raw
    code, doc = post(srv, "/prioritize", json.dumps(fixture("args-nodenames.json")).encode())
    assert code == 200 and doc[0] == {"Host": "node-a", "Score": 8}
    # one kept-alive connection serves several calls (the scheduler reuses its connection)
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for _ in range(3):
        assert post(srv, "/prioritize", b'{"NodeNames": ["node-a"]}', conn=c) == \
            (200, [{"Host": "node-a", "Score": 8}])
    c.close()


def test_a_raising_policy_still_answers(served):
    ext, srv = served
    post(srv, "/metrics/report", body(report("node-a")))

    def boom(r, pod):
        raise RuntimeError("bug")
    ext.policy = boom
    assert post(srv, "/prioritize", b'{"NodeNames": ["node-a"]}') == (200, [])
    assert ext.registry.get_sample_value("ebpf_extender_requests_total",
                                         {"verb": "prioritize", "result": "error"}) == 1


def test_metrics_and_healthz(served):
    ext, srv = served
    post(srv, "/metrics/report", body(report("node-a")))
    post(srv, "/prioritize", b'{"NodeNames": ["node-a", "node-z"]}')
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    for name in ("ebpf_extender_reports_accepted_total 1.0", "ebpf_extender_nodes_fresh 1.0",
                 "ebpf_extender_nodes_known 1.0", 'ebpf_extender_reports_rejected_total{cause="schema"} 0.0',
                 "ebpf_extender_request_duration_seconds_bucket", "ebpf_extender_scores_bucket",
                 "ebpf_extender_neutral_scores_total 1.0", "ebpf_extender_reports_expired_total 0.0"):
        assert name in text, name
    c.request("GET", "/healthz")
    r = c.getresponse()
    assert r.status == 200 and b"1 of 1" in r.read()
    c.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ext, _ = make(tls_cert_file=str(cert), tls_key_file=str(key))
    srv = ExtenderServer(ext, "127.0.0.1", 0).start()
    assert srv.url.startswith("https://")
    # a client that connects and says nothing does not block the others
    idle = socket.create_connection(("127.0.0.1", srv.port))
    p = Pusher(srv.url, 2.0, ca_file=str(cert), backoff_first=0.05, backoff_max=0.1)
    p.start()
    try:
        p.offer(report(seq=1))
        assert wait_for(lambda: p.delivered == 1), p.last_error
        assert ext.store.get("node-a") is not None
    finally:
        p.stop()
        idle.close()
        srv.stop()
