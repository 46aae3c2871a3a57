"""The variance decomposition of a store (openrlhf_contrastive.diagnose): S, V, ICC, predicted and leave-one-out
spread ratios, bootstrap intervals, the verdict, and the stores it cannot decompose."""

import json
import math

import numpy as np
import pytest

from openrlhf_contrastive import diagnose


def synthetic_store(between: float, within: float, n: int = 20000, k: int = 4, seed: int = 1) -> np.ndarray:
    """r_ij = m_i + e_ij with Var(m) = between, Var(e) = within: the model of the module docstring."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, math.sqrt(between), (n, 1)) + rng.normal(0, math.sqrt(within), (n, k))


@pytest.mark.parametrize("between, within", [(0.5, 1.0), (0.05, 1.0), (2.0, 0.5)])
def test_known_v_and_s_are_recovered(between, within):
    """20000 prompts x 4: S and V within 4 standard errors (normal theory: Var of a sample variance is 2 sigma^4 /
    df), ICC and the predicted ratio within 0.01; the 95% bootstrap interval of the ICC holds the estimate and (as a 95%
    interval misses 1 time in 20, here by 2.3 standard errors for V = 0.05) comes within half its width of the truth."""
    n, k = 20000, 4
    d = diagnose.diagnose(synthetic_store(between, within, n, k))
    icc = between / (between + within)
    se_within = within * math.sqrt(2 / (n * (k - 1)))
    se_between = (between + within / k) * math.sqrt(2 / (n - 1)) + se_within / k
    assert d.available and d.k == k and d.prompts == n
    assert d.within == pytest.approx(within, abs=4 * se_within) and d.between == pytest.approx(between, abs=4 * se_between)
    assert d.icc == pytest.approx(icc, abs=0.01)
    lo, hi = d.icc_interval
    assert lo < d.icc < hi and lo - (hi - lo) / 2 <= icc <= hi + (hi - lo) / 2 and hi - lo < 0.05
    assert d.predicted_ratio == pytest.approx(math.sqrt((1 - icc) * 1.25), abs=0.01)
    assert d.predicted_ratio_by_k["16"] == pytest.approx(math.sqrt((1 - icc) * (1 + 1 / 16)), abs=0.01)
    assert d.threshold_icc == pytest.approx(0.2)


def test_predicted_ratio_is_what_fresh_sft_samples_show():
    """Fresh samples of the same prompts against the store's baselines spread as predicted (within 0.01)."""
    rng = np.random.default_rng(3)
    n, k = 20000, 4
    m = rng.normal(0, math.sqrt(0.8), n)
    stored = m[:, None] + rng.normal(0, 1.0, (n, k))
    fresh = m + rng.normal(0, 1.0, n)
    measured = (fresh - stored.mean(axis=1)).std() / fresh.std()
    assert diagnose.diagnose(stored).predicted_ratio == pytest.approx(measured, abs=0.01)


def test_fixed_data_match_a_reference_written_out_by_hand():
    """3 prompts x 3 rewards: the module's numbers equal the definitions computed with plain loops."""
    r = np.array([[0.0, 1.0, 2.0], [4.0, 4.0, 7.0], [-1.0, 0.0, 0.5]])
    n, k = r.shape
    means = [sum(row) / k for row in r]
    s2 = [sum((x - mu) ** 2 for x in row) / (k - 1) for row, mu in zip(r, means)]
    S = sum(s2) / n
    grand = sum(means) / n
    V = max(0.0, sum((mu - grand) ** 2 for mu in means) / (n - 1) - S / k)
    icc = V / (V + S)
    loo = [x - (sum(row) - x) / (k - 1) for row in r for x in row]
    flat = [x for row in r for x in row]
    pop_std = lambda xs: math.sqrt(sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs))

    d = diagnose.diagnose(r)
    assert d.within == pytest.approx(S, rel=1e-12) and d.between == pytest.approx(V, rel=1e-12)
    assert d.icc == pytest.approx(icc, rel=1e-12)
    assert d.predicted_ratio == pytest.approx(math.sqrt(S * (1 + 1 / k) / (V + S)), rel=1e-12)
    assert d.predicted_ratio_by_k["2"] == pytest.approx(math.sqrt(S * 1.5 / (V + S)), rel=1e-12)
    assert d.loo_ratio == pytest.approx(pop_std(loo) / pop_std(flat), rel=1e-12)
    assert d.loo_predicted_ratio == pytest.approx(math.sqrt(S * (1 + 1 / (k - 1)) / (V + S)), rel=1e-12)
    # Intervals: a fixed seed gives the same numbers twice; the ratio's interval is the ICC's mapped through ratio(k).
    assert diagnose.diagnose(r).to_dict() == d.to_dict()
    shuffled = diagnose.diagnose(r[::-1, ::-1])  # the same store in another order: the same intervals
    assert shuffled.icc_interval == pytest.approx(d.icc_interval) and shuffled.verdict == d.verdict
    assert d.predicted_ratio_interval == pytest.approx([diagnose.spread_ratio(d.icc_interval[1], k),
                                                        diagnose.spread_ratio(d.icc_interval[0], k)])


def test_leave_one_out_agrees_with_the_prediction_on_a_large_store():
    d = diagnose.diagnose(synthetic_store(0.5, 1.0))
    assert d.loo_ratio == pytest.approx(d.loo_predicted_ratio, abs=0.005)


def test_verdicts_say_what_the_baseline_does():
    helps = diagnose.diagnose(synthetic_store(1.0, 1.0, n=4000))
    assert helps.verdict.startswith("prompts explain 5") and "removes prompt difficulty" in helps.verdict
    weak = diagnose.diagnose(synthetic_store(0.0, 1.0, n=4000))
    assert "adds more noise than it removes" in weak.verdict and "will not fix that" in weak.verdict
    # V = 0.2, S = 1: k = 4 adds noise, k >= 6 (V > S / k) would not
    needs_k = diagnose.diagnose(synthetic_store(0.2, 1.0, n=40000))
    assert "adds more noise" in needs_k.verdict and "k >= 6 baselines per prompt" in needs_k.verdict
    lines = helps.lines()
    assert lines[0] == f"will it help? {helps.verdict}" and "ICC" in lines[1] and "leave-one-out" in lines[3]
    json.dumps(helps.to_dict())  # summary.json and inspect --json hold it


@pytest.mark.parametrize("rewards, message", [
    (np.arange(10.0).reshape(10, 1), "k = 1 baseline reward per prompt"),
    (np.array([[0.1, 0.4, 0.2]]), "holds 1 prompt(s)"),
    (np.zeros((0, 4)), "holds 0 prompt(s)"),
    (np.full((5, 4), 0.25), "All 20 stored rewards equal 0.25"),
])
def test_stores_that_cannot_be_decomposed_say_why_and_what_to_do(rewards, message):
    with np.errstate(all="raise"):  # never a division by zero
        d = diagnose.diagnose(rewards)
    assert not d.available and message in d.verdict and d.icc is None
    assert d.lines() == [f"will it help? {d.verdict}"]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        diagnose.decompose(rewards)


def test_equal_rewards_within_every_prompt_mean_the_baseline_removes_everything():
    """k equal rewards per prompt (e.g. a deterministic policy): S = 0, ICC = 1, r - b = 0; no division by zero
    even in resamples that only draw one prompt value."""
    r = np.repeat(np.array([[0.0], [1.0], [0.0], [1.0]]), 4, axis=1)
    with np.errstate(all="raise"):
        d = diagnose.diagnose(r)
    assert d.within == 0 and d.icc == 1 and d.predicted_ratio == 0 and d.loo_ratio == 0


def test_large_stores_get_fewer_resamples_and_say_so():
    """prompts x resamples is capped (a million prompts take seconds): 200 000 prompts get 250 resamples."""
    d = diagnose.diagnose(synthetic_store(0.5, 1.0, n=200_000))
    assert d.resamples == diagnose.RESAMPLED_CELLS // 200_000 == 250 and d.to_dict()["resamples"] == 250
    lo, hi = d.icc_interval
    assert lo < d.icc < hi
