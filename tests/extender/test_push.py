"""POST /metrics/report as the Extender answers it: the push contract v2 (accepted / stale as JSON
bodies, 400 / 401 / 413 refusals that change nothing), sequence and instance rules, TTL expiry
with a fake clock, and the schema validator against jsonschema."""

from __future__ import annotations

import copy
import json
import random

import jsonschema
import pytest
from prometheus_client import generate_latest

from extender.config import default_schema_file
from extender.validate import SchemaError, compile_schema
from tests.extender.reports import GOLDEN, body, make, report


def sample(ext, name, labels=None):
    v = ext.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def test_accepted_then_newer_replaces():
    ext, _ = make()
    assert ext.receive_report(body(report(seq=1, score=20.0)), {}) == (200, {"status": "accepted"})
    assert ext.receive_report(body(report(seq=2, score=90.0)), {}) == (200, {"status": "accepted"})
    assert ext.store.get("node-a").sequence == 2
    assert ext.score("node-a") == 9.0
    assert sample(ext, "ebpf_extender_reports_accepted_total") == 2


@pytest.mark.parametrize("seq,cause", [(5, "duplicate"), (4, "out_of_order"), (1, "out_of_order")])
def test_duplicate_and_out_of_order_are_stale_and_change_nothing(seq, cause):
    ext, _ = make()
    ext.receive_report(body(report(seq=5, score=70.0)), {})
    code, doc = ext.receive_report(body(report(seq=seq, score=10.0)), {})
    assert code == 200 and doc["status"] == "stale" and doc["reason"]
    e = ext.store.get("node-a")
    assert e.sequence == 5 and e.report["node_score"] == 70.0
    assert sample(ext, "ebpf_extender_reports_stale_total", {"cause": cause}) == 1


def test_agent_restart_new_instance_with_sequence_reset_replaces_the_old_one():
    ext, _ = make()
    ext.receive_report(body(report(instance="instance-old1", seq=500, score=30.0)), {})
    code, doc = ext.receive_report(body(report(instance="instance-new1", seq=1, score=90.0)), {})
    assert (code, doc) == (200, {"status": "accepted"})
    assert ext.store.get("node-a").instance == "instance-new1" and ext.score("node-a") == 9.0
    assert sample(ext, "ebpf_extender_agent_restarts_total") == 1
    # a late report of the dead process never flips the node back
    code, doc = ext.receive_report(body(report(instance="instance-old1", seq=501, score=0.0)), {})
    assert doc["status"] == "stale" and ext.store.get("node-a").instance == "instance-new1"
    assert ext.receive_report(body(report(instance="instance-new1", seq=2)), {})[1]["status"] == "accepted"


def test_nodes_are_independent():
    ext, _ = make()
    ext.receive_report(body(report("node-a", seq=9)), {})
    assert ext.receive_report(body(report("node-b", seq=1)), {})[1]["status"] == "accepted"
    assert ext.store.nodes() == ["node-a", "node-b"]


def test_ttl_is_three_push_intervals_from_receipt_on_the_injected_clock():
    ext, clock = make()
    ext.receive_report(body(report(score=90.0, push_interval=10.0)), {})
    clock.advance(29.9)
    assert ext.score("node-a") == 9.0
    clock.advance(0.2)  # 30.1 s after receipt
    assert ext.store.fresh("node-a") is None and ext.score("node-a") == 5.0
    assert ext.prioritize({"NodeNames": ["node-a"]}) == [{"Host": "node-a", "Score": 5}]
    text = generate_latest(ext.registry).decode()
    assert "ebpf_extender_nodes_fresh 0.0" in text and "ebpf_extender_nodes_known 1.0" in text
    assert sample(ext, "ebpf_extender_reports_expired_total") == 1
    generate_latest(ext.registry)  # counted once per report, not per scrape
    assert sample(ext, "ebpf_extender_reports_expired_total") == 1
    # a newer report makes it fresh again
    ext.receive_report(body(report(seq=2, score=40.0, push_interval=10.0)), {})
    assert ext.score("node-a") == 4.0


def test_ttl_override_and_factor():
    ext, clock = make(ttl_seconds=5.0)
    ext.receive_report(body(report(push_interval=30.0)), {})
    clock.advance(5.1)
    assert ext.store.fresh("node-a") is None
    ext2, clock2 = make(ttl_factor=2.0)
    ext2.receive_report(body(report(push_interval=30.0)), {})
    clock2.advance(59)
    assert ext2.store.fresh("node-a") is not None
    clock2.advance(2)
    assert ext2.store.fresh("node-a") is None


def test_expired_nodes_are_forgotten_after_forget_after():
    ext, clock = make(forget_after=100.0)
    ext.receive_report(body(report(push_interval=10.0)), {})
    clock.advance(30 + 99)
    assert ext.store.sweep() == (1, 0)
    clock.advance(2)
    assert ext.store.sweep() == (0, 0) and ext.store.get("node-a") is None


def refused(ext, raw, headers=None):
    before = ext.store.get("node-a")
    code, doc = ext.receive_report(raw, headers or {})
    assert ext.store.get("node-a") is before  # nothing changed
    return code, doc


@pytest.fixture
def held():
    ext, clock = make()
    assert ext.receive_report(body(report(seq=3, score=70.0)), {})[0] == 200
    return ext


def test_wrong_major_version_is_refused_with_the_reason(held):
    code, doc = refused(held, body(report(seq=4, schema_version="2.0")))
    assert code == 400 and doc["status"] == "rejected" and "2.0" in doc["error"]
    assert sample(held, "ebpf_extender_reports_rejected_total", {"cause": "schema_major"}) == 1
    # a newer minor version of major 1 is read (fields are only added within a major)
    code, doc = held.receive_report(body(report(seq=4, schema_version="1.9", new_field={"x": 1})), {})
    assert (code, doc["status"]) == (200, "accepted")


CONNECT_FIELDS = ("connect_p50_ms", "connect_p99_ms", "connects", "connect_failures",
                  "passive_opens", "connect_failure_rate")


def test_schema_1_2_adds_the_connect_fields_compatibly(held):
    """A 1.1 report (no connect fields) is still read; a 1.2 one with them filled is read; a
    connect field out of its range is refused by both validators."""
    old = report(seq=4, schema_version="1.1")
    for k in CONNECT_FIELDS:
        old.pop(k)
    for p in old["pods"]:
        for k in ("connects", "connect_failures", "passive_opens", "connect_p99_ms",
                  "connect_failure_rate"):
            p.pop(k, None)
    old["availability"].pop("connect")
    assert held.receive_report(body(old), {})[0] == 200
    new = report(seq=5, connect_p50_ms=20.6, connect_p99_ms=41.0, connects=40,
                 connect_failures=10, passive_opens=40, connect_failure_rate=0.2)
    new["pods"][0].update(connects=40, connect_failures=10, passive_opens=0,
                          connect_p99_ms=41.0, connect_failure_rate=0.2)
    assert GOLDEN["schema_version"] == "1.2"
    assert held.receive_report(body(new), {})[0] == 200
    fast, ref = compile_schema(SCHEMA), jsonschema.Draft202012Validator(SCHEMA)
    for bad in ({"connect_failure_rate": 1.5}, {"connects": -1}, {"connect_failures": 2.5},
                {"connect_p99_ms": "slow"}):
        r = report(seq=6, **bad)
        assert not ref.is_valid(r), bad
        with pytest.raises(SchemaError, match=next(iter(bad))):
            fast(r)
        assert refused(held, body(r))[0] == 400


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r.pop("sequence"), "sequence"),
    (lambda r: r.update(sequence=0), "sequence"),
    (lambda r: r.update(node_score=150), "node_score"),
    (lambda r: r.update(node_name=""), "node_name"),
    (lambda r: r.update(push_interval_seconds=0), "push_interval_seconds"),
    (lambda r: r.update(cpu_used="lots"), "cpu_used"),
    (lambda r: r["pods"][0].pop("uid"), "uid"),
    (lambda r: r["probes"]["tcp_rtt"].update(state="sideways"), "state"),
    (lambda r: r.update(timestamp="yesterday"), "timestamp"),
])
def test_wrong_schema_is_refused_with_the_path(held, mutate, needle):
    r = report(seq=4)
    mutate(r)
    code, doc = refused(held, body(r))
    assert code == 400 and needle in doc["error"], doc
    assert sample(held, "ebpf_extender_reports_rejected_total", {"cause": "schema"}) == 1


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[1, 2]", b"null", b'"report"'])
def test_not_json_or_not_an_object_is_refused(held, raw):
    code, doc = refused(held, raw)
    assert code == 400 and doc["status"] == "rejected"


def test_oversized_push_is_413(held):
    ext, _ = make(max_body_bytes=1024)
    assert len(body(report())) > 1024
    code, doc = ext.receive_report(body(report()), {})
    assert code == 413 and "1024" in doc["error"] and ext.store.get("node-a") is None
    assert sample(ext, "ebpf_extender_reports_rejected_total", {"cause": "too_large"}) == 1


def test_bearer_token_is_required_when_configured(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("s3cret\n")
    ext, _ = make(token_file=str(tok))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Basic s3cret"}):
        code, doc = ext.receive_report(body(report()), headers)
        assert code == 401 and ext.store.get("node-a") is None, headers
    assert sample(ext, "ebpf_extender_reports_rejected_total", {"cause": "unauthenticated"}) == 4
    assert ext.receive_report(body(report()), {"authorization": "Bearer s3cret"})[0] == 200
    # rotation: the file is re-read when it changes
    import os
    tok.write_text("n3w")
    os.utime(tok, (1, 1))
    assert ext.receive_report(body(report(seq=2)), {"Authorization": "Bearer s3cret"})[0] == 401
    assert ext.receive_report(body(report(seq=2)), {"Authorization": "Bearer n3w"})[0] == 200


# ---------------------------------------------------------------------------------------------
# the fast validator agrees with jsonschema

SCHEMA = json.loads(default_schema_file().read_text())


def _mutations(doc, rng):
    """Documents near ``doc``: one field removed, retyped or pushed out of range."""
    values = [None, -1, 0, 1.5, 2, 101, "", "x", True, [], {}, [1], {"a": 1}, "1.2", "2.0"]
    for _ in range(400):
        d = copy.deepcopy(doc)
        target = d
        if rng.random() < 0.3 and d["pods"]:
            target = rng.choice(d["pods"])
        key = rng.choice(sorted(target))
        if rng.random() < 0.2:
            del target[key]
        else:
            target[key] = rng.choice(values)
        yield d


def test_the_fast_validator_agrees_with_jsonschema():
    fast = compile_schema(SCHEMA)
    ref = jsonschema.Draft202012Validator(SCHEMA)
    rng = random.Random(18)
    both_valid = both_invalid = 0
    for d in [GOLDEN, *_mutations(GOLDEN, rng)]:
        want = ref.is_valid(d)
        try:
            fast(d)
            got = True
        except SchemaError:
            got = False
        assert got == want, (want, {k: d.get(k) for k in d if k != "pods"})
        both_valid += want
        both_invalid += not want
    assert both_valid > 20 and both_invalid > 100  # both sides exercised


def test_an_unsupported_schema_keyword_fails_at_compile_time():
    s = copy.deepcopy(SCHEMA)
    s["properties"]["node_name"]["oneOf"] = [{"type": "string"}]
    with pytest.raises(ValueError, match="oneOf"):
        compile_schema(s)
