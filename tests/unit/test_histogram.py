import math
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.stats.histogram import SlotLayout, diff_counts, merge_counts, percentile

L = SlotLayout(5, 30)
ROOT = Path(__file__).resolve().parents[2]


def test_linear_region_has_one_slot_per_value():
    for v in range(64):
        assert L.slot_of(v) == v
        assert L.bounds(v) == (v, v + 1)


@pytest.mark.parametrize("value,slot", [
    (63, 63), (64, 64), (65, 64), (66, 65), (127, 95), (128, 96), (131, 96), (132, 97),
    (255, 127), (256, 128), (2**20, 15 * 32 + 32), (2**20 - 1, 14 * 32 + 63),
])
def test_slot_boundaries(value, slot):
    assert L.slot_of(value) == slot


def test_every_value_lies_in_its_slot_bounds_and_slots_are_monotonic():
    rnd = random.Random(1)
    values = sorted({rnd.randrange(0, 2**36) for _ in range(20000)} | set(range(0, 300))
                    | {2**k + d for k in range(1, 36) for d in (-1, 0, 1)})
    prev = -1
    for v in values:
        s = L.slot_of(v)
        lo, hi = L.bounds(s)
        assert lo <= v < hi, (v, s, lo, hi)
        assert s >= prev
        prev = s


def test_bounds_tile_the_line_without_gaps():
    for s in range(L.slots - 1):
        assert L.bounds(s)[1] == L.bounds(s + 1)[0]


def test_slot_width_is_at_most_one_sub_bucket_of_lower_bound():
    for s in range(2 * L.sub, L.slots - 1):
        lo, hi = L.bounds(s)
        assert (hi - lo) / lo <= 1 / L.sub


def test_values_beyond_range_clamp_into_last_slot_with_infinite_bound():
    top = 1 << (L.sub_bits + L.max_shift + 1)
    assert L.slot_of(top - 1) == L.slots - 1
    assert L.slot_of(top) == L.slots - 1
    assert L.slot_of(2**63) == L.slots - 1
    assert math.isinf(L.bounds(L.slots - 1)[1])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="-1"):
        L.slot_of(-1)
    with pytest.raises(ValueError, match="slot"):
        L.bounds(L.slots)
    with pytest.raises(ValueError, match="sub_bits"):
        SlotLayout(0, 3)
    with pytest.raises(ValueError, match="quantile"):
        percentile(L, {1: 1}, 1.5)


def test_empty_histogram_has_no_percentile():
    assert percentile(L, {}, 0.5) is None
    assert percentile(L, {5: 0}, 0.5) is None


def test_percentile_in_open_last_slot_returns_its_lower_bound():
    last = L.slots - 1
    assert percentile(L, {last: 10}, 0.99) == L.bounds(last)[0]


def _exact(samples, q):
    """Nearest-rank sample quantile."""
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def _hist(samples):
    counts = {}
    for v in samples:
        s = L.slot_of(v)
        counts[s] = counts.get(s, 0) + 1
    return counts


DISTRIBUTIONS = {
    "uniform_us": lambda r: r.randint(100, 500_000),
    "lognormal_ns": lambda r: int(r.lognormvariate(11, 1.5)),
    "exponential_ns": lambda r: int(r.expovariate(1 / 2e6)) + 1000,
    "bimodal_us": lambda r: int(r.gauss(300, 20) if r.random() < 0.9 else r.gauss(250_000, 30_000)),
    "pareto_ns": lambda r: int(5000 * r.paretovariate(1.2)),
    "narrow_ms_as_us": lambda r: int(r.gauss(280_000, 2_000)),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_percentile_within_3_percent_of_exact(name, q):
    r = random.Random(hash(name) & 0xFFFF)
    samples = [max(100, DISTRIBUTIONS[name](r)) for _ in range(50_000)]
    est = percentile(L, _hist(samples), q)
    exact = _exact(samples, q)
    assert abs(est - exact) / exact <= 0.03, (name, q, est, exact)


def test_diff_counts_plain_window():
    assert diff_counts({1: 5, 2: 3}, {1: 7, 2: 3, 9: 1}) == ({1: 2, 9: 1}, False)


def test_diff_counts_detects_reset_and_returns_what_accumulated_since():
    delta, reset = diff_counts({1: 500, 2: 30}, {1: 4, 2: 31})
    assert reset and delta == {1: 4, 2: 31}


def test_diff_counts_vanished_key_is_a_reset():
    delta, reset = diff_counts({1: 5, 2: 3}, {1: 6})
    assert reset and delta == {1: 6}


def test_merge_counts():
    assert merge_counts([{1: 1}, {1: 2, 3: 4}, {}]) == {1: 3, 3: 4}


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no host C compiler to build bpf/hist.h for comparison")
def test_c_slot_rule_matches_python(tmp_path):
    """bpf/hist.h (what the kernel runs) and SlotLayout.slot_of agree on every tested value."""
    cc = shutil.which("cc") or shutil.which("gcc")
    src = tmp_path / "harness.c"
    src.write_text(
        "#include <stdio.h>\n#include <stdint.h>\n"
        "typedef uint32_t u32; typedef uint64_t u64;\n"
        "#define __always_inline inline __attribute__((always_inline))\n"
        '#include "hist.h"\n'
        "int main(void){ unsigned long long v; printf(\"%u\\n\", (unsigned)HIST_SLOTS);\n"
        " while (scanf(\"%llu\", &v) == 1) printf(\"%u\\n\", hist_slot(v)); return 0; }\n"
    )
    exe = tmp_path / "harness"
    for layout in (SlotLayout(5, 30), SlotLayout(5, 21), SlotLayout(3, 10)):
        subprocess.run([cc, "-O2", f"-I{ROOT / 'bpf'}", f"-DHIST_SUB_BITS={layout.sub_bits}",
                        f"-DHIST_MAX_SHIFT={layout.max_shift}", str(src), "-o", str(exe)],
                       check=True)
        r = random.Random(7)
        values = (list(range(0, 200)) + [2**k + d for k in range(1, 63) for d in (-1, 0, 1)]
                  + [r.randrange(0, 2**40) for _ in range(5000)] + [2**64 - 1])
        out = subprocess.run([str(exe)], input="\n".join(map(str, values)), text=True,
                             capture_output=True, check=True).stdout.split()
        assert int(out[0]) == layout.slots
        assert [int(x) for x in out[1:]] == [layout.slot_of(v) for v in values]
