"""The plugin inside the real RemoteExperienceMaker.compute_advantages_and_returns of patched openrlhf 0.11.2.

Args come from the real train_ppo_ray parser; experiences are real `Experience` objects. The reference is
openrlhf's own unpatched compute_advantages_and_returns (the pristine file, recovered from the installed
one by un-applying our patch) run on rewards the test replaced by r - g(baselines) itself, plus a closed
form: with gamma = lambda = 1 and no KL, every action token's return is the sample's final reward.
"""

import importlib.util
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from openrlhf_cli import parse_train_args
from openrlhf_contrastive import patching
from openrlhf_contrastive.fingerprint import training_fingerprint
from openrlhf_contrastive.flags import METRIC_RAW_REWARD, METRIC_REWARD, METRIC_SPREAD_RATIO, METRIC_SPREAD_RATIO_PREDICTED
from openrlhf_contrastive.store import StoreWriter, prompt_keys

pytestmark = pytest.mark.integration

K = 4
PROMPTS = [f"<|user|>question {i}: {'why ' * i}?</s><|assistant|>" for i in range(5)]


def pristine_experience_maker():
    """openrlhf 0.11.2's experience_maker.py as released, imported under another module name."""
    if "pristine_experience_maker" in sys.modules:
        return sys.modules["pristine_experience_maker"]
    root = patching.site_packages_of_openrlhf()
    (file_patch,) = [fp for fp in patching.parse_diff(patching.PATCH_FILE.read_text()) if fp.path.endswith("experience_maker.py")]
    source = file_patch.apply((root / file_patch.path).read_text(), reverse=True)
    assert "reward_fn" not in source
    spec = importlib.util.spec_from_loader("pristine_experience_maker", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, "pristine_experience_maker.py", "exec"), module.__dict__)
    sys.modules["pristine_experience_maker"] = module
    return module


def make_args(tmp_path, estimator, n, extra=()):
    flags = [
        "--algo.advantage.estimator", estimator,
        "--rollout.n_samples_per_prompt", str(n),
        "--algo.advantage.gamma", "1.0",
        "--algo.advantage.lambd", "1.0",
        "--algo.kl.init_coef", "0.01",
        *extra,
    ]
    if estimator != "gae":
        flags += ["--critic.model_name_or_path", "critic"]
    return parse_train_args(flags)


def write_store(path, args, prompts, baselines):
    fingerprint = training_fingerprint(args, K, args.rollout.temperature)
    with StoreWriter(path, K, fingerprint) as writer:
        writer.append(prompt_keys(prompts), prompts, baselines)


def make_experiences(n, seed=0, micro_batch=2, prompts=PROMPTS):
    """Rollouts of len(prompts) prompts x n samples, in OpenRLHF's order, split into micro-batches."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    g = torch.Generator().manual_seed(seed)
    total, actions = len(prompts) * n, 7
    lengths = torch.randint(2, actions + 1, (total,), generator=g)
    mask = torch.arange(actions)[None, :] < lengths[:, None]
    rewards = torch.randn(total, generator=g)
    kl = 0.1 * torch.randn(total, actions, generator=g) * mask
    values = torch.randn(total, actions, generator=g) * mask
    sample_prompts = [p for p in prompts for _ in range(n)]
    experiences = []
    for start in range(0, total, micro_batch):
        sl = slice(start, start + micro_batch)
        experiences.append(
            Experience(
                action_mask=mask[sl].clone(), kl=kl[sl].clone(), values=values[sl].clone(),
                rewards=rewards[sl].clone(), index=list(range(start, min(start + micro_batch, total))),
                prompts=sample_prompts[sl], labels=[""] * len(sample_prompts[sl]),
                info={"reward": rewards[sl].clone()},
            )
        )
    return experiences


def run_maker(module, args, experiences):
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    maker = module.RemoteExperienceMaker(
        None, None, None, None, FixedKLController(args.algo.kl.init_coef), SimpleNamespace(args=args), None
    )
    return maker.compute_advantages_and_returns(experiences)


def patched_module():
    from openrlhf.trainer.ppo_utils import experience_maker

    return experience_maker


@pytest.fixture(scope="module")
def baselines():
    return np.random.default_rng(0).normal(size=(len(PROMPTS), K))


def cat(experiences, name):
    return torch.cat([getattr(e, name) for e in experiences])


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("estimator", ["gae", "reinforce", "flash_reinforce"])
@pytest.mark.parametrize("shape", ["mean", "median", "sigmoid"])
def test_advantages_and_returns_equal_openrlhf_on_r_minus_g(tmp_path, baselines, estimator, n, shape):
    from openrlhf_contrastive.shapes import contrastive_value

    args = make_args(
        tmp_path, estimator, n,
        ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path), "--contrastive.shape", shape],
    )
    write_store(tmp_path, args, PROMPTS, baselines)

    got = run_maker(patched_module(), args, make_experiences(n))

    expected_input = make_experiences(n)
    for e in expected_input:
        rows = [PROMPTS.index(p) for p in e.prompts]
        e.rewards = contrastive_value(e.rewards, torch.from_numpy(baselines[rows]), shape)
    args.reward_fn = None
    expected = run_maker(pristine_experience_maker(), args, expected_input)

    for name in ("advantages", "returns"):
        torch.testing.assert_close(cat(got, name), cat(expected, name), rtol=1e-6, atol=1e-6)
    raw = cat(make_experiences(n), "rewards")
    assert torch.equal(torch.cat([e.info["reward"] for e in got]), raw)  # info["reward"] stays raw


@pytest.mark.parametrize("estimator", ["gae", "reinforce", "flash_reinforce"])
def test_returns_are_r_minus_mean_baseline_in_closed_form(tmp_path, baselines, estimator):
    """gamma = lambda = 1, KL coefficient 0: each action token's return is the final reward r - mean_j r_j."""
    args = make_args(
        tmp_path, estimator, 4,
        ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path), "--algo.kl.init_coef", "0"],
    )
    write_store(tmp_path, args, PROMPTS, baselines)
    got = run_maker(patched_module(), args, make_experiences(4))
    r = cat(make_experiences(4), "rewards")
    b = torch.from_numpy(baselines.mean(axis=1)).float().repeat_interleave(4)
    final = r - b
    if estimator == "flash_reinforce":
        final = final - final.mean()
    mask = cat(got, "action_mask")
    returns = cat(got, "returns")
    torch.testing.assert_close(returns[mask], final[:, None].expand_as(mask)[mask], rtol=1e-5, atol=1e-5)
    assert (returns[~mask] == 0).all()


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("estimator", ["gae", "reinforce", "flash_reinforce", "rloo", "group_norm"])
def test_without_reward_fn_the_patched_maker_is_identical_to_unpatched(tmp_path, estimator, n):
    if n == 1 and estimator in ("rloo", "group_norm"):
        pytest.skip("openrlhf refuses group estimators with one sample per prompt")
    args = make_args(tmp_path, estimator, n)
    assert args.reward_fn is None
    got = run_maker(patched_module(), args, make_experiences(n))
    expected = run_maker(pristine_experience_maker(), args, make_experiences(n))
    for name in ("advantages", "returns", "rewards"):
        assert torch.equal(cat(got, name), cat(expected, name)), name
    assert [sorted(e.info) for e in got] == [sorted(e.info) for e in expected]


def test_info_holds_length_b_metrics_for_logging(tmp_path, baselines):
    args = make_args(tmp_path, "gae", 4, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS, baselines)
    got = run_maker(patched_module(), args, make_experiences(4, micro_batch=3))
    for e in got:
        B = len(e.prompts)
        for key in ("reward", "contrastive/baseline", "contrastive/raw_reward", "contrastive/reward",
                    "contrastive/beat_baseline", "contrastive/hit"):
            assert isinstance(e.info[key], torch.Tensor) and e.info[key].shape == (B,), key
        rows = [PROMPTS.index(p) for p in e.prompts]
        torch.testing.assert_close(e.info["contrastive/baseline"], torch.from_numpy(baselines[rows].mean(1)).float())
        torch.testing.assert_close(e.info["contrastive/reward"], e.info["contrastive/raw_reward"] - e.info["contrastive/baseline"])
        assert e.info["contrastive/hit"].tolist() == [1.0] * B
        assert e.info["contrastive/beat_baseline"].tolist() == (
            (e.info["contrastive/raw_reward"] > e.info["contrastive/baseline"]).float().tolist()
        )


def test_a_prompt_missing_from_the_store(tmp_path, baselines):
    args = make_args(tmp_path, "gae", 4, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS[:-1], baselines[:-1])
    with pytest.raises(ValueError, match=r"(?s)4 of 20 rollouts of this PPO batch have no baselines.*question 4.*--contrastive.on_missing raw"):
        run_maker(patched_module(), args, make_experiences(4, micro_batch=4))

    args.contrastive.on_missing = "raw"
    raw = cat(make_experiences(4, micro_batch=4), "rewards")
    got = run_maker(patched_module(), args, make_experiences(4, micro_batch=4))
    last = got[-1]  # the micro-batch holding the 4 rollouts of the missing prompt
    assert last.info["contrastive/hit"].tolist() == [0.0] * 4
    assert torch.equal(last.info["contrastive/reward"], raw[-4:])
    assert got[0].info["contrastive/hit"].tolist() == [1.0] * 4


def test_nan_rewards_are_refused_not_swallowed(tmp_path, baselines):
    args = make_args(tmp_path, "gae", 1, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS, baselines)
    experiences = make_experiences(1)
    experiences[1].rewards[0] = math.nan
    with pytest.raises(ValueError, match="1 of 5 rewards are NaN or infinite"):
        run_maker(patched_module(), args, experiences)


def test_a_store_made_under_other_settings_is_refused_at_parse_time(tmp_path, baselines):
    args = make_args(tmp_path, "gae", 1, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS, baselines)
    flags = ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"(?s)temperature: store has 1.0, now 0.5.*accept_fingerprint_mismatch"):
        parse_train_args(flags + ["--rollout.temperature", "0.5"])
    accepted = parse_train_args(flags + ["--rollout.temperature", "0.5", "--contrastive.accept_fingerprint_mismatch"])
    assert accepted.contrastive.accept_fingerprint_mismatch


def trainer_of(args, prompts):
    """What setup(trainer) reads of OpenRLHF's PPOTrainer: args, tokenizer, the prompt dataset."""
    dataset = SimpleNamespace(prompts=list(prompts), labels=[""] * len(prompts))
    return SimpleNamespace(args=args, tokenizer=None, prompts_dataloader=SimpleNamespace(dataset=dataset))


def test_a_store_too_small_for_the_shape_is_refused_before_any_rollout(tmp_path, baselines, monkeypatch):
    """A store of k = 1 accepted under --contrastive.accept_fingerprint_mismatch cannot feed zscore: refused when
    train_ppo_ray parses its flags and, for a store that appears later, in setup(trainer), not at the first PPO step."""
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.plugin import ContrastiveReward

    store = tmp_path / "store"
    flags = ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(store), "--contrastive.shape", "zscore",
             "--contrastive.accept_fingerprint_mismatch"]
    args = make_args(tmp_path, "gae", 1, flags)
    with StoreWriter(store, 1, training_fingerprint(args, 1, args.rollout.temperature)) as writer:
        writer.append(prompt_keys(PROMPTS), PROMPTS, baselines[:, :1])
    expected = r"--contrastive.shape=zscore .* needs at least 2 baseline rewards per prompt, and the store .* has k = 1"
    with pytest.raises(SystemExit, match=expected):
        make_args(tmp_path, "gae", 1, flags)
    monkeypatch.setattr(stage, "run_in_job", lambda *a, **kw: pytest.fail("no stage: the store holds every prompt"))
    with pytest.raises(ValueError, match=expected + r".*--contrastive.k >= 2"):
        ContrastiveReward().setup(trainer_of(args, PROMPTS))


def test_zscore_on_a_store_without_spread_is_refused_in_setup(tmp_path, baselines):
    """Every prompt's baselines equal (0/1 rewards, all right or all wrong): zscore has no scale to divide by. At
    parse time a store may still grow (the in-job stage), so setup, which loads it complete, refuses."""
    from openrlhf_contrastive.plugin import ContrastiveReward

    flags = ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path), "--contrastive.shape", "zscore"]
    args = make_args(tmp_path, "gae", 1, flags)
    write_store(tmp_path, args, PROMPTS, np.repeat(np.arange(len(PROMPTS), dtype=float)[:, None] % 2, K, axis=1))
    make_args(tmp_path, "gae", 1, flags)
    with pytest.raises(ValueError, match=f"on every one of its {len(PROMPTS)} prompts the {K} baselines are equal"):
        ContrastiveReward().setup(trainer_of(args, PROMPTS))
    args.contrastive.shape = "mean"
    ContrastiveReward().setup(trainer_of(args, PROMPTS))


def test_rewards_of_shape_b_by_1_from_an_http_reward_server(tmp_path, baselines):
    """OpenRLHF wraps an HTTP server's list reward as torch.tensor([[x]]): rewards (B, 1) work as (B,) do."""
    args = make_args(tmp_path, "gae", 4, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS, baselines)
    flat = run_maker(patched_module(), args, make_experiences(4))
    column = make_experiences(4)
    for e in column:
        e.rewards = e.rewards[:, None]
    got = run_maker(patched_module(), args, column)
    for name in ("advantages", "returns"):
        torch.testing.assert_close(cat(got, name), cat(flat, name))
    assert all(e.info["contrastive/reward"].shape == (len(e.prompts),) for e in got)


BASE_REWARD = '''
import torch

def reward_func(queries, prompts, labels):
    """The response is the reward, written out: r = float(query minus prompt)."""
    return {"rewards": torch.tensor([float(q[len(p):]) for q, p in zip(queries, prompts)])}
'''


@pytest.mark.parametrize("shape", ["mean", "quantile:0.3", "zscore", "winrate", "logmeanexp:0.5", "logsigmoid"])
def test_patched_and_unpatched_paths_give_identical_values_and_metrics(tmp_path, baselines, shape):
    """The plugin's transform (patched OpenRLHF) and reward_func.py (stock OpenRLHF) on one batch and one store,
    including rollouts of a prompt the store lacks (--contrastive.on_missing raw)."""
    from openrlhf_contrastive.plugin import ContrastiveReward
    from openrlhf_contrastive.reward_func import UnpatchedContrastiveReward

    store = tmp_path / "store"
    settings = ["--contrastive.shape", shape, "--contrastive.coef", "0.7", "--contrastive.on_missing", "raw"]
    args = make_args(tmp_path, "gae", 4, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(store), *settings])
    write_store(store, args, PROMPTS[:-1], baselines[:-1])
    experiences = make_experiences(4, micro_batch=3)
    prompts = [p for e in experiences for p in e.prompts]
    rewards = cat(experiences, "rewards")

    ContrastiveReward().transform(experiences, args)
    patched = {key: torch.cat([e.info[key] for e in experiences]) for key in experiences[0].info if key != "reward"}

    (tmp_path / "base.py").write_text(BASE_REWARD)
    unpatched = UnpatchedContrastiveReward({
        "CONTRASTIVE_BASE_REWARD": str(tmp_path / "base.py"), "CONTRASTIVE_BASELINE_PATH": str(store),
        "CONTRASTIVE_SHAPE": shape, "CONTRASTIVE_COEF": "0.7", "CONTRASTIVE_ON_MISSING": "raw",
        "CONTRASTIVE_ACCEPT_FINGERPRINT_MISMATCH": "1",
    })([p + repr(r) for p, r in zip(prompts, rewards.tolist())], prompts, [""] * len(prompts))

    # The per-batch spread ratio and its prediction are the patched path's only: the stock path's reward function
    # sees the rollout actor's calls, not the PPO batch.
    assert sorted(patched) == sorted([*unpatched["extra_logs"], METRIC_SPREAD_RATIO, METRIC_SPREAD_RATIO_PREDICTED])
    patched = {key: patched[key] for key in unpatched["extra_logs"]}
    assert len(patched) == 5
    assert patched["contrastive/hit"].tolist() == [1.0] * 16 + [0.0] * 4
    for key, tensor in patched.items():
        assert torch.equal(tensor, unpatched["extra_logs"][key]), key
    assert torch.equal(cat(experiences, "rewards"), unpatched["rewards"])


def logged(experiences, key) -> float:
    """What OpenRLHF's actor logs as train/<key>: the sample-weighted mean of the info tensors over the batch."""
    return float(torch.cat([e.info[key] for e in experiences]).double().mean())


def test_spread_ratio_is_logged_from_r_and_r_minus_b_of_the_batch(tmp_path, baselines):
    """Through the real compute_advantages_and_returns: train/contrastive/spread_ratio is std(r - b) / std(r) of the
    batch's rollouts (r and b as the test computes them), spread_ratio_predicted the store's prediction."""
    from openrlhf_contrastive.diagnose import diagnose

    args = make_args(tmp_path, "gae", 4, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS, baselines)
    original = make_experiences(4, micro_batch=3)
    r = cat(original, "rewards").double()
    b = torch.tensor([baselines[PROMPTS.index(p)].mean() for e in original for p in e.prompts])
    experiences = run_maker(patched_module(), args, make_experiences(4, micro_batch=3))
    assert torch.cat([e.info[METRIC_REWARD] for e in experiences]).double() == pytest.approx((r - b).tolist(), abs=1e-6)
    assert logged(experiences, METRIC_SPREAD_RATIO) == pytest.approx(float((r - b).std(unbiased=False) / r.std(unbiased=False)), rel=1e-5)
    assert logged(experiences, METRIC_SPREAD_RATIO_PREDICTED) == pytest.approx(diagnose(baselines).predicted_ratio, rel=1e-6)


def test_spread_ratio_of_fresh_sft_samples_matches_the_prediction(tmp_path):
    """Step 1's rollouts are fresh samples of the policy that wrote the store: on 3000 prompts whose rewards follow
    r = m(x) + e (Var m = 0.6, Var e = 1), the logged ratio equals the prediction within 0.03."""
    rng = np.random.default_rng(5)
    prompts = [f"prompt {i}" for i in range(3000)]
    m = rng.normal(0, 0.6 ** 0.5, len(prompts))
    args = make_args(tmp_path, "gae", 1, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, prompts, m[:, None] + rng.normal(0, 1, (len(prompts), K)))
    experiences = make_experiences(1, micro_batch=500, prompts=prompts)
    rewards = torch.tensor(m + rng.normal(0, 1, len(prompts)), dtype=torch.float32)
    for i, e in enumerate(experiences):
        e.rewards = rewards[500 * i : 500 * (i + 1)].clone()
        e.info["reward"] = e.rewards.clone()
    run_maker(patched_module(), args, experiences)
    predicted = logged(experiences, METRIC_SPREAD_RATIO_PREDICTED)
    assert predicted == pytest.approx(((1 - 0.6 / 1.6) * (1 + 1 / K)) ** 0.5, abs=0.03)
    assert logged(experiences, METRIC_SPREAD_RATIO) == pytest.approx(predicted, abs=0.03)


def test_setup_shows_the_coverage_and_the_diagnosis_at_openrlhfs_log_level(tmp_path, baselines, monkeypatch):
    """train_ppo_ray shows OpenRLHF's INFO lines and the root logger's warnings only: setup's lines go through
    OpenRLHF's own handler (stdout, INFO), read here from a stream put in its place."""
    import io

    from openrlhf.utils import logging_utils

    from openrlhf_contrastive.diagnose import diagnose
    from openrlhf_contrastive.plugin import ContrastiveReward

    stream = io.StringIO()
    monkeypatch.setattr(logging_utils._default_handler, "stream", stream)
    args = make_args(tmp_path, "gae", 1, ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path)])
    write_store(tmp_path, args, PROMPTS, baselines)
    ContrastiveReward().setup(trainer_of(args, PROMPTS))
    out = stream.getvalue()
    assert f"covers {len(PROMPTS)} of {len(PROMPTS)} training prompts" in out
    assert f"will it help? {diagnose(baselines).verdict}" in out
