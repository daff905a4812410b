"""kube-scheduler's extender wire format: golden ExtenderArgs / HostPriorityList /
ExtenderFilterResult documents with the upstream Go field names (k8s.io/kube-scheduler/extender/v1:
ExtenderArgs{Pod, Nodes, NodeNames}, ExtenderFilterResult{Nodes, NodeNames, FailedNodes,
FailedAndUnresolvableNodes, Error}, HostPriority{Host, Score}), both nodeCacheCapable modes,
any case on input, and malformed arguments answered without an exception."""

from __future__ import annotations

import pytest

from extender.wire import ci, parse_args
from tests.extender.reports import body, fixture, make, report

# the upstream Go struct fields; the scheduler (no JSON tags) sends and expects exactly these
EXTENDER_ARGS_FIELDS = {"Pod", "Nodes", "NodeNames"}
FILTER_RESULT_FIELDS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
HOST_PRIORITY_FIELDS = {"Host", "Score"}

BUSY = [{**report()["pods"][1], "uid": "busy", "net_rx_bytes": 10_000,
         "net_tx_bytes": 1_150_000_000}]  # 920 Mbit/s over a 10 s window


def cluster(**cfg):
    """node-a healthy (score 80, quiet), node-b sick (score 33, its link nearly full), node-c
    without a report."""
    ext, clock = make(**cfg)
    assert ext.receive_report(body(report("node-a", score=80.0, window_seconds=10.0)), {})[0] == 200
    assert ext.receive_report(body(report("node-b", score=33.0, window_seconds=10.0, pods=BUSY,
                                          pod_uids=["busy"])), {})[0] == 200
    return ext


def test_the_golden_documents_use_the_upstream_field_names():
    for name in ("args-nodenames.json", "args-nodes.json"):
        assert set(fixture(name)) == EXTENDER_ARGS_FIELDS
    for name in ("filter-result-nodenames.json", "filter-result-nodes.json"):
        assert set(fixture(name)) == FILTER_RESULT_FIELDS
    for hp in fixture("host-priority-list.json"):
        assert set(hp) == HOST_PRIORITY_FIELDS


@pytest.mark.parametrize("args", ["args-nodenames.json", "args-nodes.json", "args-lowercase.json"])
def test_prioritize_answers_the_golden_host_priority_list(args):
    ext = cluster()
    assert ext.prioritize(fixture(args)) == fixture("host-priority-list.json")


def test_filter_with_node_names_answers_node_names():
    ext = cluster(default_node_capacity_bps=1e9)
    assert ext.filter(fixture("args-nodenames.json")) == fixture("filter-result-nodenames.json")


def test_filter_with_full_nodes_answers_nodes_and_reads_capacity_from_them():
    ext = cluster()  # no default capacity: it comes from each Node's allocatable example.com/SLO
    assert ext.filter(fixture("args-nodes.json")) == fixture("filter-result-nodes.json")


def test_lower_case_input_is_read_and_the_answer_is_capitalised():
    ext = cluster(default_node_capacity_bps=1e9)
    out = ext.filter(fixture("args-lowercase.json"))
    assert out == fixture("filter-result-nodenames.json")
    mixed = {"pOD": fixture("pod.json"), "NODENAMES": ["node-a"]}
    assert ext.prioritize(mixed) == [{"Host": "node-a", "Score": 8}]


def test_without_the_annotation_every_node_passes():
    ext = cluster(default_node_capacity_bps=1e9)
    args = fixture("args-nodenames.json")
    del args["Pod"]["metadata"]["annotations"]
    out = ext.filter(args)
    assert out["NodeNames"] == ["node-a", "node-b", "node-c"] and out["FailedNodes"] == {}


def test_a_node_without_a_fresh_report_passes_the_filter_and_is_neutral():
    ext = cluster(default_node_capacity_bps=1e9)
    ext.clock.advance(31)  # 3 x push_interval 10 s: both reports expire
    out = ext.filter(fixture("args-nodenames.json"))
    assert out["NodeNames"] == ["node-a", "node-b", "node-c"] and not out["FailedNodes"]
    assert [h["Score"] for h in ext.prioritize(fixture("args-nodenames.json"))] == [5, 5, 5]


@pytest.mark.parametrize("bad", [
    None, [], "text", 7, {}, {"Pod": {}}, {"Pod": "x", "NodeNames": ["a"]},
    {"NodeNames": "node-a"}, {"NodeNames": [1, 2]}, {"NodeNames": [""]},
    {"Nodes": {"items": [{"metadata": {}}]}}, {"Nodes": {"items": "x"}}, {"Nodes": []},
])
def test_malformed_args_get_an_empty_list_or_an_error_never_an_exception(bad):
    ext = cluster()
    assert ext.prioritize(bad) == []
    out = ext.filter(bad)
    assert set(out) == FILTER_RESULT_FIELDS
    assert out["Error"] and out["FailedNodes"] == {}
    assert out["Nodes"] is None and out["NodeNames"] is None


def test_a_bad_bandwidth_annotation_is_an_error_not_a_filter():
    ext = cluster(default_node_capacity_bps=1e9)
    args = fixture("args-nodenames.json")
    args["Pod"]["metadata"]["annotations"]["ebpf-edge-agent.io/bandwidth"] = "lots"
    out = ext.filter(args)
    assert "lots" in out["Error"] and out["FailedNodes"] == {}


def test_empty_node_lists_are_valid():
    ext = cluster()
    assert ext.prioritize({"Pod": None, "NodeNames": []}) == []
    out = ext.filter({"Pod": None, "Nodes": {"items": []}})
    assert out["Error"] == "" and out["Nodes"]["items"] == []


def test_ci_prefers_the_exact_key_and_matches_any_case():
    assert ci({"NodeNames": 1, "nodenames": 2}, "NodeNames") == 1
    assert ci({"nodeNAMES": 2}, "NodeNames") == 2
    assert ci(None, "x", "d") == "d"


def test_parse_args_modes():
    a = parse_args(fixture("args-nodes.json"))
    assert not a.cache_capable and a.node_names == ("node-a", "node-b", "node-c")
    b = parse_args(fixture("args-nodenames.json"))
    assert b.cache_capable and b.nodes is None and b.node_names == a.node_names
