"""Scoring policies: node-score and seed004 on the extender's 0..10 scale, neutral without a
report, and an unavailable signal neither a bonus nor a penalty."""

from __future__ import annotations

import pytest

from extender.config import ExtenderConfig
from extender.policies import (NEUTRAL, make_seed004, node_score_policy, seed004_raw, to_priority)
from tests.extender.reports import report

W = dict(ExtenderConfig().seed004)
seed004 = make_seed004(W)


@pytest.mark.parametrize("score,want", [(0.0, 0.0), (100.0, 10.0), (66.455, 6.6455), (None, NEUTRAL)])
def test_node_score_maps_linearly(score, want):
    assert node_score_policy(report(score=score)) == pytest.approx(want)


def test_no_report_is_neutral_for_every_policy():
    assert node_score_policy(None) == seed004(None) == 5.0


@pytest.mark.parametrize("s,p", [(0, 0), (4.49, 4), (4.5, 5), (9.96, 10), (10, 10), (-1, 0), (11, 10)])
def test_to_priority_rounds_and_clamps(s, p):
    assert to_priority(s) == p


def seedlike(**kw):
    """A report whose seed terms are simple numbers."""
    base = dict(cpu_used=1.0, cpu_allocatable=4.0, memory_used=4 * 2**30, memory_allocatable=16 * 2**30,
                per_task_fairness=0.8, tail_latency_p99=30.0, dominant_share=0.25, slo_violation_rate=0.1)
    base.update(kw)
    return report(**base)


def test_seed004_is_the_seeds_calculate_score():
    # base 25 (priority 0) + capacity ((0.75+0.75)/2)*40=30 + fairness 0.8*15=12
    # + latency (1-30/120)*20=15 - dominance 0.25*15=3.75 - violation 0.1*20=2 = 76.25
    r = seedlike()
    assert seed004_raw(r, {"spec": {"priority": 0}}, W) == pytest.approx(76.25)
    assert seed004(r, {"spec": {"priority": 0}}) == 7.6  # int(76.25) = 76 -> 7.6
    # a high-priority pod gets the seed's 35-point base
    assert seed004_raw(r, {"spec": {"priority": 2000}}, W) == pytest.approx(86.25)
    assert seed004_raw(r, {"spec": {"priority": -5}}, W) == pytest.approx(66.25)


def test_seed004_clamps_as_the_seed_does():
    bad = seedlike(cpu_used=4.0, memory_used=16 * 2**30, per_task_fairness=0.0,
                   tail_latency_p99=600.0, dominant_share=1.0, slo_violation_rate=1.0)
    assert seed004_raw(bad, None, W) < 0 and seed004(bad) == 0.0
    great = seedlike(cpu_used=0.0, memory_used=0, per_task_fairness=1.0, tail_latency_p99=0.0,
                     dominant_share=0.0, slo_violation_rate=0.0)
    assert seed004_raw(great, {"spec": {"priority": 10**9}}, W) == pytest.approx(110)
    assert seed004(great, {"spec": {"priority": 10**9}}) == 10.0


def test_seed004_weights_are_configurable():
    w = dict(W, latency=60.0)
    slow, fast = seedlike(tail_latency_p99=110.0), seedlike(tail_latency_p99=5.0)
    gap_default = seed004_raw(fast, None, W) - seed004_raw(slow, None, W)
    gap_heavy = seed004_raw(fast, None, w) - seed004_raw(slow, None, w)
    assert gap_heavy > 2.5 * gap_default


def test_an_unavailable_signal_is_neither_bonus_nor_penalty():
    """Two nodes equal in every available term: the one whose RTT probe is down scores the same
    as a node whose RTT terms sit at the average goodness of its other terms, i.e. the missing
    terms are left out and the rest re-weighted, never read as 0 (a bonus for latency, a
    penalty as 'no capacity')."""
    down = seedlike(tail_latency_p99=None, slo_violation_rate=None,
                    availability={**report()["availability"], "rtt": False})
    up_terms = dict(capacity=0.75, fairness=0.8, dominance=0.75)
    avg = sum(W[k] * g for k, g in up_terms.items()) / sum(W[k] for k in up_terms)
    # the same node with latency and violation at exactly that average goodness
    same = seedlike(tail_latency_p99=(1 - avg) * 120, slo_violation_rate=1 - avg)
    assert seed004_raw(down, None, W) == pytest.approx(seed004_raw(same, None, W))
    # and the agent's availability flag wins over a number that is present
    flagged = seedlike(availability={**report()["availability"], "rtt": False})
    assert seed004_raw(flagged, None, W) == pytest.approx(seed004_raw(down, None, W))
    # nothing available at all: neutral, not 0
    empty = report(cpu_used=None, memory_used=None, tail_latency_p99=None, dominant_share=None,
                   slo_violation_rate=None, per_task_fairness=None)
    assert seed004(empty) == NEUTRAL


def test_cpu_unavailable_uses_memory_for_capacity():
    r = seedlike(cpu_used=None, memory_used=0)
    r2 = seedlike(cpu_used=0.0, memory_used=0)
    assert seed004_raw(r, None, W) == pytest.approx(seed004_raw(r2, None, W))


def test_extender_uses_the_configured_policy():
    from tests.extender.reports import body, make

    ext, _ = make(policy="seed004")
    ext.receive_report(body(seedlike(node_score=99.0)), {})
    pod = {"spec": {"priority": 0}}
    assert ext.prioritize({"Pod": pod, "NodeNames": ["node-a"]}) == [{"Host": "node-a", "Score": 8}]
    ext2, _ = make()
    ext2.receive_report(body(seedlike(node_score=99.0)), {})
    assert ext2.prioritize({"Pod": pod, "NodeNames": ["node-a"]}) == [{"Host": "node-a", "Score": 10}]
