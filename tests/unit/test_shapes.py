"""The math of openrlhf_contrastive.shapes against values computed by hand."""

import math

import pytest
import torch

from openrlhf_contrastive.shapes import (
    GROUP_CENTRED_ESTIMATORS,
    baseline_statistic,
    cancelling_estimator_reason,
    contrastive_batch,
    contrastive_value,
    parse_shape,
    zscore_std_floor,
)

R = torch.tensor([1.0, 0.0, 5.0])
B = torch.tensor([[0.0, 1.0, 2.0, 5.0], [1.0, 1.0, 1.0, 1.0], [4.0, 6.0, 5.0, 5.0]])


def value(shape, coef=1.0, r=R, b=B):
    return contrastive_value(r, b, shape, coef).tolist()


def test_mean_is_the_papers_contrastive_value():
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


def test_zscore_uses_the_sample_std_floored_at_the_pooled_std_over_sqrt_k():
    # pooled within-prompt std 2 (given, as the store computes it at load): floor 2 / sqrt(4) = 1
    assert zscore_std_floor(2.0, 4) == 1.0
    got = contrastive_value(R, B, "zscore", pooled_std=2.0).tolist()
    # row 0: mean 2, sample std sqrt((4+1+0+9)/3) = sqrt(14/3) = 2.16, above the floor
    assert got[0] == pytest.approx((1.0 - 2.0) / math.sqrt(14 / 3))
    # identical baselines: std 0 -> divided by the floor 1
    assert got[1] == pytest.approx(-1.0)
    # row 2: [4,6,5,5], sample std sqrt(2/3) = 0.816 is below the floor: r = 6 gives (6 - 5) / 1
    assert contrastive_value(torch.tensor([6.0]), B[2:], "zscore", pooled_std=2.0).item() == pytest.approx(1.0)


def test_zscore_needs_the_stores_pooled_std():
    for missing in (None, 0.0):
        with pytest.raises(ValueError, match="pooled within-prompt std > 0"):
            contrastive_value(R, B, "zscore", pooled_std=missing)


def store_of(tmp_path, rewards):
    """A real store of these baseline rewards (n, k), loaded: BaselineStore computes pooled_std at load."""
    import numpy as np

    from openrlhf_contrastive.store import BaselineStore, StoreWriter, prompt_keys

    prompts = [f"prompt {i}" for i in range(len(rewards))]
    with StoreWriter(tmp_path, rewards.shape[1], {}) as writer:
        writer.append(prompt_keys(prompts), prompts, np.asarray(rewards, dtype=np.float64))
    return BaselineStore.load(tmp_path), prompt_keys(prompts)


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_zscore_is_scale_free(tmp_path, scale):
    """Every reward and baseline times 0.01 or 100 (another reward model's units): every zscore value is unchanged,
    on prompts of every spread, including k equal baselines and spreads below the floor."""
    import numpy as np

    rng = np.random.default_rng(0)
    k = 4
    baselines = rng.normal(size=(64, k)) * rng.uniform(0.01, 3.0, size=(64, 1)) + rng.normal(size=(64, 1))
    baselines[:8] = baselines[:8, :1]  # k equal baselines
    rewards = rng.normal(size=64) * 2
    values = []
    for factor, path in ((1.0, tmp_path / "units"), (scale, tmp_path / "scaled")):
        store, keys = store_of(path, baselines * factor)
        b, hit = store.lookup(keys)
        value, _ = contrastive_batch(torch.from_numpy(rewards * factor), torch.from_numpy(b), torch.from_numpy(hit),
                                     parse_shape("zscore"), 1.0, store.pooled_std)
        values.append(value)
    assert store.pooled_std == pytest.approx(np.sqrt(np.mean(np.var(baselines * scale, axis=1, ddof=1))))
    floored = np.std(baselines, axis=1, ddof=1) < store.pooled_std / scale / np.sqrt(k)
    assert 8 < floored.sum() < 64  # the floor acts on some prompts (the equal ones and more), not on all
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=0)


def test_zscore_of_equal_0_1_baselines_is_bounded(tmp_path):
    """Rule-based 0/1 rewards: all k baselines wrong (or all right) is common; the value must stay sane: at most
    sqrt(k) / pooled std in size (pooled std: the store's typical spread), instead of 1 / 0."""
    k = 8
    rows = [[0.0] * k, [1.0] * k, [1.0] * k, [1.0] + [0.0] * (k - 1), [1.0] * 4 + [0.0] * 4]
    store, keys = store_of(tmp_path, torch.tensor(rows).numpy())
    # sample variances 0, 0, 0, 1/8 (one of eight differs) and 2/7 (half and half), pooled over the 5 prompts
    pooled = math.sqrt((1 / 8 + 2 / 7) / 5)
    assert store.pooled_std == pytest.approx(pooled)
    b, _ = store.lookup(keys)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    got = contrastive_value(r, torch.from_numpy(b), "zscore", pooled_std=store.pooled_std).tolist()
    floor = pooled / math.sqrt(k)
    assert got[:3] == pytest.approx([1 / floor, -1 / floor, 0.0])
    assert got[3] == pytest.approx((1 - 1 / k) / max(math.sqrt(1 / 8), floor))
    assert max(abs(x) for x in got) <= math.sqrt(k) / pooled


def test_sigmoid_is_the_mean_of_sigmoids_of_the_differences():
    expected = sum(1 / (1 + math.exp(-(1.0 - b))) for b in [0.0, 1.0, 2.0, 5.0]) / 4
    assert value("sigmoid")[0] == pytest.approx(expected)
    assert value("sigmoid")[1] == pytest.approx(1 / (1 + math.exp(1.0)))


def test_winrate_counts_ties_half_and_is_centred():
    # r=1 vs [0,1,2,5]: beats 1, ties 1 -> (1 + 0.5) / 4 - 0.5 = -0.125
    # r=0 vs [1,1,1,1]: beats none -> -0.5 ; r=5 vs [4,6,5,5]: beats 1, ties 2 -> 2/4 - 0.5 = 0
    assert value("winrate") == [-0.125, -0.5, 0.0]


def test_logmeanexp_is_a_star_pos_v_star_between_the_mean_and_the_max():
    # beta = 1, row 0: log mean exp([0,1,2,5]) = log((1 + e + e^2 + e^5) / 4)
    v0 = math.log((1 + math.e + math.e**2 + math.e**5) / 4)
    assert value("logmeanexp:1")[0] == pytest.approx(1.0 - v0, rel=1e-6)
    # beta = 2: 2 * log mean exp(r_j / 2)
    v0 = 2 * math.log((1 + math.exp(0.5) + math.e + math.exp(2.5)) / 4)
    assert value("logmeanexp:2")[0] == pytest.approx(1.0 - v0, rel=1e-6)
    assert value("logmeanexp:2", coef=0.5)[0] == pytest.approx(1.0 - 0.5 * v0, rel=1e-6)
    # equal baselines: V* is that value for every beta
    assert value("logmeanexp:0.3")[1] == pytest.approx(-1.0)
    # beta -> 0: the max (no overflow); beta -> inf: the mean (no lost digits), in float32
    assert value("logmeanexp:1e-4") == pytest.approx(value("max"), abs=1e-3)
    assert value("logmeanexp:1e6") == pytest.approx(value("mean"), abs=1e-5)


def test_logsigmoid_against_the_85th_percentile_of_a_normal_fit():
    # row 0: mean 2, population std sqrt(14/4), z_0.85 = 1.0364334; log sigmoid(x) = -log(1 + e^-x)
    z = 1.0364333894937898
    ref0 = 2.0 + z * math.sqrt(14 / 4)
    got = value("logsigmoid")
    assert got[0] == pytest.approx(-math.log1p(math.exp(-(1.0 - ref0))), rel=1e-6)
    # equal baselines: the reference is that value; r = 0 vs 1 -> log sigmoid(-1)
    assert got[1] == pytest.approx(-math.log1p(math.e), rel=1e-6)
    # an explicit level and the coefficient: logsigmoid:0.5 is the mean, coef scales it
    assert value("logsigmoid:0.5", coef=0.5)[0] == pytest.approx(-math.log1p(math.exp(-(1.0 - 0.5 * 2.0))), rel=1e-6)
    assert all(v < 0 for v in got)  # log sigmoid is negative, bounded above by 0
    # k = 1: the reference is the single baseline
    assert contrastive_value(torch.tensor([2.0]), torch.tensor([[2.0]]), "logsigmoid").item() == pytest.approx(math.log(0.5))


def test_the_batch_gives_the_value_where_hit_r_where_missed_and_the_five_metrics():
    hit = torch.tensor([True, False, True])
    value_, metrics = contrastive_batch(R, B, hit, parse_shape("mean"), 1.0)
    assert value_.tolist() == [-1.0, 0.0, 0.0]  # row 1 missed: r itself
    assert metrics["contrastive/reward"] is value_
    assert metrics["contrastive/baseline"].tolist() == [2.0, 0.0, 5.0]
    assert metrics["contrastive/raw_reward"].tolist() == R.tolist()
    assert metrics["contrastive/beat_baseline"].tolist() == [0.0, 0.0, 0.0]
    assert metrics["contrastive/hit"].tolist() == [1.0, 0.0, 1.0]
    assert contrastive_batch(R.to(torch.bfloat16), B, hit, parse_shape("mean"), 1.0)[0].dtype == torch.float32


def test_k_equal_one():
    b = torch.tensor([[2.0], [3.0]])
    r = torch.tensor([1.0, 3.0])
    assert contrastive_value(r, b, "mean").tolist() == [-1.0, 0.0]
    assert contrastive_value(r, b, "median").tolist() == [-1.0, 0.0]
    assert contrastive_value(r, b, "winrate").tolist() == [-0.5, 0.0]
    with pytest.raises(ValueError, match="at least 2 baseline rewards"):
        contrastive_value(r, b, "zscore", pooled_std=1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rewards_and_baselines_are_refused(bad):
    with pytest.raises(ValueError, match="1 of 3 rewards are NaN or infinite"):
        contrastive_value(torch.tensor([1.0, bad, 0.0]), B, "mean")
    b = B.clone()
    b[2, 1] = bad
    with pytest.raises(ValueError, match="baseline rewards are NaN or infinite"):
        contrastive_value(R, b, "mean")


def test_dtype_is_promoted_to_at_least_float32():
    assert contrastive_value(R.to(torch.bfloat16), B, "mean").dtype == torch.float32
    assert contrastive_value(R.double(), B, "mean").dtype == torch.float64


def test_shapes_print_as_written():
    for spec in ["mean", "quantile:0.25", "logmeanexp:0.5", "logsigmoid", "logsigmoid:0.9", "zscore"]:
        assert str(parse_shape(spec)) == spec


def test_baseline_statistic_matches_the_shift():
    for spec in ["mean", "median", "min", "max", "quantile:0.3", "logmeanexp:0.7"]:
        shape = parse_shape(spec)
        assert torch.allclose(R - baseline_statistic(B, shape), contrastive_value(R, B, shape))


@pytest.mark.parametrize(
    "spec",
    ["avg", "quantile", "quantile:1.5", "quantile:x", "mean:2", "", "logmeanexp", "logmeanexp:0", "logmeanexp:-1",
     "logmeanexp:inf", "logsigmoid:1", "logsigmoid:0", "logsigmoid:x"],
)
def test_unknown_shapes_are_refused_with_the_choices(spec):
    with pytest.raises(ValueError, match="--contrastive.shape"):
        parse_shape(spec)


@pytest.mark.parametrize("estimator", GROUP_CENTRED_ESTIMATORS)
@pytest.mark.parametrize("spec", ["mean", "median", "min", "max", "quantile:0.9", "logmeanexp:1"])
def test_shift_shapes_cancel_under_group_centred_estimators(spec, estimator):
    assert "cancels exactly" in cancelling_estimator_reason(parse_shape(spec), estimator)


@pytest.mark.parametrize("estimator", ["gae", "reinforce", "flash_reinforce"])
@pytest.mark.parametrize("spec", ["mean", "zscore", "sigmoid", "winrate", "logmeanexp:1", "logsigmoid"])
def test_nothing_cancels_under_estimators_without_a_group_baseline(spec, estimator):
    assert cancelling_estimator_reason(parse_shape(spec), estimator) is None


def test_zscore_cancels_only_under_group_norm_and_nonlinear_shapes_never():
    zscore = parse_shape("zscore")
    assert cancelling_estimator_reason(zscore, "group_norm") is not None
    assert cancelling_estimator_reason(zscore, "rloo") is None
    for spec in ["sigmoid", "winrate", "logsigmoid", "logsigmoid:0.5"]:
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
        return contrastive_value(r.reshape(-1), rows_b, spec, pooled_std=1.0).reshape(3, 4)

    for spec in ["mean", "median", "quantile:0.2", "min", "max", "logmeanexp:0.5"]:
        assert torch.allclose(_group_centre(shaped(spec)), _group_centre(r))
        assert torch.allclose(_group_norm(shaped(spec)), _group_norm(r))
    assert torch.allclose(_group_norm(shaped("zscore")), _group_norm(r), atol=1e-6)
    assert not torch.allclose(_group_centre(shaped("zscore")), _group_centre(r))
    for spec in ["sigmoid", "winrate", "logsigmoid"]:
        assert not torch.allclose(_group_norm(shaped(spec)), _group_norm(r))
