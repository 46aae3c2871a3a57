"""`openrlhf-contrastive inspect`: the printed summary and the PNG, on a small store written by StoreWriter."""

import json

import numpy as np
import pytest

from openrlhf_contrastive import report
from openrlhf_contrastive.store import BaselineStore, StoreWriter, prompt_keys

FINGERPRINT = {"policy": "sha256:abc", "reward": ["sha256:def"], "k": 3, "prompt": {"label_key": None}, "info": {"openrlhf": "0.11.2"}}


@pytest.fixture
def store(tmp_path):
    prompts = [f"prompt {i}" for i in range(6)]
    rewards = np.arange(18, dtype=float).reshape(6, 3) / 10  # prompt i: mean 0.3 i + 0.1, std 0.1
    with StoreWriter(tmp_path / "store", 3, FINGERPRINT) as w:
        w.append(prompt_keys(prompts), prompts, rewards)
    return tmp_path / "store"


def write_rollouts(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_inspect_prints_k_provenance_distribution_coverage_and_writes_the_png(store, tmp_path, capsys):
    rollouts = write_rollouts(tmp_path / "r.jsonl", [
        {"prompt": "prompt 0", "reward": 0.5},  # baseline mean 0.1: beats it
        {"prompt": "prompt 5", "reward": 1.0},  # baseline mean 1.6: below
        {"prompt": "not stored", "reward": 0.0},
        {"prompt": "prompt 5", "reward": 2.0},
    ])
    png = tmp_path / "out" / "report.png"
    assert report.main([str(store), "--rollouts", rollouts, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "prompts 6, k = 3" in out
    assert '"sha256:abc"' in out and 'info.openrlhf' in out
    assert "min 0.100" in out and "max 1.600" in out
    assert "hardest (lowest baseline)" in out and "'prompt 0'" in out
    assert "coverage of the rollouts' prompts: 75.0% of 4 rollouts" in out
    assert "beat their baseline 66.7%" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_match_rollouts_gives_r_and_b_of_the_hits(store):
    s = BaselineStore.load(store)
    scored = report.match_rollouts(s, [{"prompt": "prompt 2", "reward": 1.0}, {"prompt": "x", "reward": 3.0}])
    assert scored.hit.tolist() == [True, False]
    assert scored.reward.tolist() == [1.0] and scored.baseline == pytest.approx([0.7])


def test_prompt_coverage_and_default_png_next_to_the_store(store, tmp_path, capsys):
    prompts = write_rollouts(tmp_path / "p.jsonl", [{"prompt": "prompt 1"}, {"prompt": "other"}])
    assert report.main([str(store), "--prompts", prompts]) == 0
    assert "coverage of the given prompts: 50.0%" in capsys.readouterr().out
    assert (store / "report.png").exists()


@pytest.mark.parametrize(
    "content, message",
    [('{"prompt": "prompt 1"}\n', "lacks 'prompt' or 'reward'"), ("not json\n", "is not a JSON line")],
)
def test_bad_rollouts_files_say_what_and_how(store, tmp_path, capsys, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    assert report.main([str(store), "--rollouts", str(tmp_path / "bad.jsonl")]) == 2
    assert message in capsys.readouterr().out


def test_a_missing_store_is_refused_with_the_fix(tmp_path, capsys):
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "openrlhf-contrastive sample" in capsys.readouterr().out


def test_training_runs_add_a_row_of_curves_and_win_rates_to_the_png(store, tmp_path):
    import matplotlib.image

    s = BaselineStore.load(store)
    scored = report.match_rollouts(s, [{"prompt": "prompt 0", "reward": 0.5}, {"prompt": "prompt 5", "reward": 1.0}])
    runs = [report.TrainingRun("contrastive", [1, 2], [0.4, 0.6], [0.0, 0.1], 0.55, [0.4, 0.7]),
            report.TrainingRun("raw", [1, 2], [0.4, 0.5], [0.0, 0.05], 0.45, [0.3, 0.6])]
    heights = {}
    for name, training in (("stage", None), ("trained", runs)):
        png = report.plot(s, tmp_path / f"{name}.png", scored, training=training)
        heights[name] = matplotlib.image.imread(png).shape[0]
    assert heights["trained"] == pytest.approx(heights["stage"] * 3 / 2, abs=2)  # 3 rows of panels instead of 2


def test_inspect_says_whether_the_baseline_can_help_in_text_and_json(store, tmp_path, capsys):
    """The fixture's prompts differ by 0.3 per prompt, its rewards within a prompt by 0.1: prompts explain 97%."""
    within, between = 0.01, 0.09 * 3.5 - 0.01 / 3  # S: each prompt's variance; V: Var(means) - S / k
    assert report.main([str(store), "--png", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "will it help? prompts explain 97% of this reward's variance; r - b should spread 0.20x as much as r" in out
    assert "leave-one-out on the store" in out
    assert report.main([str(store), "--json", "--png", str(tmp_path / "r.png")]) == 0
    figures = json.loads(capsys.readouterr().out)
    d = figures["diagnosis"]
    assert d["within"] == pytest.approx(within) and d["between"] == pytest.approx(between)
    assert d["icc"] == pytest.approx(between / (between + within))
    assert d["predicted_ratio"] == pytest.approx((within * (1 + 1 / 3) / (between + within)) ** 0.5)
    assert figures["prompts"] == 6 and figures["k"] == 3 and figures["png"] == str(tmp_path / "r.png")


def test_inspect_of_a_store_it_cannot_decompose_says_why(tmp_path, capsys):
    with StoreWriter(tmp_path / "one", 1, {**FINGERPRINT, "k": 1}) as w:
        w.append(prompt_keys(["a", "b"]), ["a", "b"], np.array([[0.1], [0.5]]))
    assert report.main([str(tmp_path / "one"), "--png", str(tmp_path / "r.png")]) == 0
    assert "will it help? This store holds k = 1 baseline reward per prompt" in capsys.readouterr().out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
