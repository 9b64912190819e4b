"""The statistics the start benchmark prints (benchmarks/start.py, benchmarks/run.py):
pure arithmetic over made-up rounds, no timing."""
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
import start  # noqa: E402


def timings(with_side, without):
    return start.Timings(seconds={"a": with_side, "b": without},
                         cpu={"a": with_side, "b": without}, pids={"a": [], "b": []},
                         faults={"a": [], "b": []})


def test_ratio_is_the_median_of_per_round_ratios():
    t = timings([1.1, 2.0, 3.3], [1.0, 2.0, 3.0])      # 1.1, 1.0, 1.1
    assert t.ratios("a", "b") == [1.1 / 1.0, 1.0, 3.3 / 3.0]
    assert t.ratio("a", "b") == 3.3 / 3.0


def test_interval_takes_the_binomial_order_statistics_around_the_median():
    # n = 12: k = floor((12 - 1.96 * sqrt(12)) / 2) = 2, so the 3rd and 10th of 12
    ratios = [1.00 + i / 100 for i in range(12)]
    t = timings(ratios, [1.0] * 12)
    lo, hi = t.interval("a", "b")
    assert (round(lo, 2), round(hi, 2)) == (1.02, 1.09)
    # too few rounds for any 95 % statement: the whole range
    few = timings([1.0, 1.1, 1.2], [1.0] * 3)
    assert few.interval("a", "b") == (1.0, 1.2)


def test_verdict_says_when_the_interval_spans_the_target():
    assert run._verdict(1.01, 1.00, 1.015, 1.02) == "PASS"
    assert run._verdict(1.05, 1.03, 1.07, 1.02) == "FAIL"
    # a CI past the target is not a pass, whatever the median (rev3 item 10)
    assert run._verdict(1.01, 0.99, 1.03, 1.02) == (
        "INCONCLUSIVE (the median would PASS; the 95 % CI spans 1.02)")
    assert run._verdict(1.03, 1.00, 1.05, 1.02) == (
        "INCONCLUSIVE (the median would FAIL; the 95 % CI spans 1.02)")


def test_order_is_a_williams_square():
    """Every side starts once in each place, and right after each other side once,
    over len(sides) rounds; two sides alternate A B, B A."""
    names = ["GPU auto", "GPU off", "CPU auto", "CPU off"]
    rows = [start.order(names, r) for r in range(4)]
    assert rows[0] == ["GPU auto", "GPU off", "CPU off", "CPU auto"]
    for place in range(4):
        assert sorted(row[place] for row in rows) == sorted(names)
    follows = [(row[i], row[i + 1]) for row in rows for i in range(3)]
    assert len(follows) == len(set(follows)) == 4 * 3        # each ordered pair once
    assert start.order(names, 5) == rows[1]
    assert [start.order(["a", "b"], r) for r in range(3)] == [["a", "b"], ["b", "a"],
                                                              ["a", "b"]]
