"""The math of openrlhf_contrastive.shapes against values computed by hand."""

import math

import pytest
import torch

from openrlhf_contrastive.shapes import (
    GROUP_CENTRED_ESTIMATORS,
    ZSCORE_EPS,
    baseline_statistic,
    cancelling_estimator_reason,
    contrastive_reward,
    parse_shape,
)

R = torch.tensor([1.0, 0.0, 5.0])
B = torch.tensor([[0.0, 1.0, 2.0, 5.0], [1.0, 1.0, 1.0, 1.0], [4.0, 6.0, 5.0, 5.0]])


def value(shape, coef=1.0, r=R, b=B):
    return contrastive_reward(r, b, shape, coef).tolist()


def test_mean_is_the_papers_contrastive_reward():
    # means: 2.0, 1.0, 5.0
    assert value("mean") == [-1.0, -1.0, 0.0]


def test_coefficient_scales_the_baseline_only():
    assert value("mean", coef=0.5) == [0.0, -0.5, 2.5]
    assert value("mean", coef=0.0) == R.tolist()


def test_median_of_even_k_is_the_midpoint_of_the_two_middle_values():
    # sorted: [0,1,2,5] -> 1.5; [1,1,1,1] -> 1; [4,5,5,6] -> 5
    assert value("median") == [-0.5, -1.0, 0.0]


def test_min_max_and_quantiles():
    assert value("min") == [1.0, -1.0, 1.0]
    assert value("max") == [-4.0, -1.0, -1.0]
    # quantile 0.25 of [0,1,2,5] with linear interpolation: position 0.75 -> 0.75
    assert value("quantile:0.25")[0] == pytest.approx(1.0 - 0.75)
    assert value("quantile:0") == value("min")
    assert value("quantile:1") == value("max")


def test_zscore_uses_the_sample_std():
    # row 0: mean 2, sample std sqrt(((4+1+0+9)/3)) = sqrt(14/3)
    std0 = math.sqrt(14 / 3)
    got = value("zscore")
    assert got[0] == pytest.approx((1.0 - 2.0) / (std0 + ZSCORE_EPS))
    # identical baselines: std 0 -> divided by eps only, finite
    assert got[1] == pytest.approx(-1.0 / ZSCORE_EPS)


def test_sigmoid_is_the_mean_of_sigmoids_of_the_differences():
    expected = sum(1 / (1 + math.exp(-(1.0 - b))) for b in [0.0, 1.0, 2.0, 5.0]) / 4
    assert value("sigmoid")[0] == pytest.approx(expected)
    assert value("sigmoid")[1] == pytest.approx(1 / (1 + math.exp(1.0)))


def test_winrate_counts_ties_half_and_is_centred():
    # r=1 vs [0,1,2,5]: beats 1, ties 1 -> (1 + 0.5) / 4 - 0.5 = -0.125
    # r=0 vs [1,1,1,1]: beats none -> -0.5 ; r=5 vs [4,6,5,5]: beats 1, ties 2 -> 2/4 - 0.5 = 0
    assert value("winrate") == [-0.125, -0.5, 0.0]


def test_k_equal_one():
    b = torch.tensor([[2.0], [3.0]])
    r = torch.tensor([1.0, 3.0])
    assert contrastive_reward(r, b, "mean").tolist() == [-1.0, 0.0]
    assert contrastive_reward(r, b, "median").tolist() == [-1.0, 0.0]
    assert contrastive_reward(r, b, "winrate").tolist() == [-0.5, 0.0]
    with pytest.raises(ValueError, match="at least 2 baseline rewards"):
        contrastive_reward(r, b, "zscore")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rewards_and_baselines_are_refused(bad):
    with pytest.raises(ValueError, match="1 of 3 rewards are NaN or infinite"):
        contrastive_reward(torch.tensor([1.0, bad, 0.0]), B, "mean")
    b = B.clone()
    b[2, 1] = bad
    with pytest.raises(ValueError, match="baseline rewards are NaN or infinite"):
        contrastive_reward(R, b, "mean")


def test_dtype_is_promoted_to_at_least_float32():
    assert contrastive_reward(R.to(torch.bfloat16), B, "mean").dtype == torch.float32
    assert contrastive_reward(R.double(), B, "mean").dtype == torch.float64


def test_baseline_statistic_matches_the_shift():
    for spec in ["mean", "median", "min", "max", "quantile:0.3"]:
        shape = parse_shape(spec)
        assert torch.allclose(R - baseline_statistic(B, shape), contrastive_reward(R, B, shape))


@pytest.mark.parametrize("spec", ["avg", "quantile", "quantile:1.5", "quantile:x", "mean:2", ""])
def test_unknown_shapes_are_refused_with_the_choices(spec):
    with pytest.raises(ValueError, match="--contrastive.shape"):
        parse_shape(spec)


@pytest.mark.parametrize("estimator", GROUP_CENTRED_ESTIMATORS)
@pytest.mark.parametrize("spec", ["mean", "median", "min", "max", "quantile:0.9"])
def test_shift_shapes_cancel_under_group_centred_estimators(spec, estimator):
    assert "cancels exactly" in cancelling_estimator_reason(parse_shape(spec), estimator)


@pytest.mark.parametrize("estimator", ["gae", "reinforce", "flash_reinforce"])
@pytest.mark.parametrize("spec", ["mean", "zscore", "sigmoid", "winrate"])
def test_nothing_cancels_under_estimators_without_a_group_baseline(spec, estimator):
    assert cancelling_estimator_reason(parse_shape(spec), estimator) is None


def test_zscore_cancels_only_under_group_norm_and_nonlinear_shapes_never():
    zscore = parse_shape("zscore")
    assert cancelling_estimator_reason(zscore, "group_norm") is not None
    assert cancelling_estimator_reason(zscore, "rloo") is None
    for spec in ["sigmoid", "winrate"]:
        for estimator in GROUP_CENTRED_ESTIMATORS:
            assert cancelling_estimator_reason(parse_shape(spec), estimator) is None


def _group_centre(r):
    return r - r.mean(-1, keepdim=True)


def _group_norm(r):
    return (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-9)


def test_the_cancellation_table_is_true_numerically():
    """What the table claims, checked on random groups: 3 prompts x 4 rollouts, 4 baselines each."""
    torch.manual_seed(0)
    r = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)
    rows_b = b.repeat_interleave(4, dim=0)

    def shaped(spec):
        return contrastive_reward(r.reshape(-1), rows_b, spec).reshape(3, 4)

    for spec in ["mean", "median", "quantile:0.2", "min", "max"]:
        assert torch.allclose(_group_centre(shaped(spec)), _group_centre(r))
        assert torch.allclose(_group_norm(shaped(spec)), _group_norm(r))
    assert torch.allclose(_group_norm(shaped("zscore")), _group_norm(r), atol=1e-6)
    assert not torch.allclose(_group_centre(shaped("zscore")), _group_centre(r))
    for spec in ["sigmoid", "winrate"]:
        assert not torch.allclose(_group_norm(shaped(spec)), _group_norm(r))
