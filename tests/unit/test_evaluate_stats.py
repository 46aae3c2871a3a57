"""evaluate's statistics and judge checks, computed by hand (no models)."""

import math

import numpy as np
import pytest

from openrlhf_contrastive.checks import InputError
from openrlhf_contrastive.evaluate import call_judge, compare, interval, judge_win_rates, t975, win_rates


def test_win_rate_counts_ties_half():
    policy = np.array([[1.0, 3.0]])
    baseline = np.array([[1.0, 2.0, 4.0]])
    # 1 vs (1, 2, 4): tie, loss, loss = 0.5; 3 vs (1, 2, 4): win, win, loss = 2  -> 2.5 / 6
    assert win_rates(policy, baseline) == pytest.approx([2.5 / 6])


def test_interval_is_students_t_over_prompts():
    values = np.array([0.2, 0.4, 0.6, 0.8])
    half = 3.182 * values.std(ddof=1) / 2
    assert interval(values) == pytest.approx([0.5 - half, 0.5 + half])
    assert interval(np.array([0.9, 1.0, 1.0]), 0, 1)[1] == 1.0  # clipped
    assert all(math.isnan(v) for v in interval(np.array([0.3])))
    assert t975(31) == pytest.approx(2.040, abs=2e-3) and t975(1000) == pytest.approx(1.962, abs=1e-3)


def test_compare_lists_improved_and_degraded_prompts():
    policy = np.array([[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    baseline = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    figures = compare(policy, baseline, ["up", "down", "same"], top=5)
    assert figures["win_rate"] == pytest.approx(0.5) and figures["difference"] == pytest.approx(0.0)
    assert figures["improved"] == pytest.approx(1 / 3) and figures["degraded"] == pytest.approx(1 / 3)
    assert [r["prompt"] for r in figures["most_improved"]] == ["up"]
    assert [r["prompt"] for r in figures["most_degraded"]] == ["down"]
    assert compare(policy, None, ["a", "b", "c"], 5)["baseline_mean"] is None


@pytest.mark.parametrize("out, message", [
    ([0.5], "returned 1 values for 2 pairs"),
    ([0.5, -0.1], "returned -0.1 for pair 1"),
    ([0.5, float("inf")], "returned inf for pair 1"),
    ("ab", "not a sequence of numbers"),
])
def test_judge_output_is_checked(out, message):
    with pytest.raises(InputError, match=message):
        call_judge(lambda p, a, b: out, "judge.py", ["p", "q"], ["a", "b"], ["c", "d"])


def test_judge_pairs_alternate_positions():
    seen = []

    def judge(prompts, a, b):
        seen.extend(zip(a, b))
        return [1.0] * len(a)  # always prefers position a

    wins = judge_win_rates(judge, "judge.py", ["x", "y"], [["P0", "P1", "P2"], ["P3", "P4", "P5"]], [["B0", "B1"], ["B2", "B3"]])
    assert seen == [("P0", "B0"), ("B1", "P1"), ("P2", "B0"), ("B2", "P3"), ("P4", "B3"), ("B2", "P5")]
    assert wins == pytest.approx([2 / 3, 1 / 3]) and wins.mean() == pytest.approx(0.5)
