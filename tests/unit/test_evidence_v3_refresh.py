"""Evidence v3's refresh comparison (benchmarks/evidence_v3/analyze.py, issue 25): which arm a refreshing arm is
compared with, the generations a run had spent by a step, and its gold at the other arm's total generations."""

import json
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "evidence_v3" / "config.json"


@pytest.fixture(scope="module")
def analyze():
    from benchmarks.evidence_v3 import analyze

    return analyze


def run(gold_by_step: dict, refresh_steps: list[int], final_gold: float, beat: float = 0.7) -> dict:
    """A finished run of 192 steps of 32 rollouts on a store of 4096 baselines, refreshed (4096 each) at the steps."""
    refreshes = [{"policy_step": s, "generations": 4096, "seconds": 20.0, "mean_shift": 0.1, "mean_abs_shift": 0.3}
                 for s in refresh_steps]
    return {"steps": 192, "wall_s": 300.0, "heldout": {"gold": final_gold},
            "generations": {"online": 6144, "offline": 4096, "refresh": 4096 * len(refresh_steps),
                            "total": 10240 + 4096 * len(refresh_steps)},
            "refresh": {"refreshes": refreshes} if refresh_steps else None,
            "along": {str(s): {"heldout": {"gold": g}} for s, g in gold_by_step.items()},
            "scalars": {"train/contrastive/beat_baseline": {str(s): beat for s in range(1, 193)}}}


def test_each_refreshing_arm_is_compared_with_the_same_arm_without_refresh(analyze):
    cfg = json.loads(CONFIG.read_text())
    assert analyze.without_refresh(cfg, "cr_refresh") == "cr_mean"
    assert analyze.without_refresh(cfg, "reinforce_cr_refresh") == "reinforce_cr"
    assert analyze.without_refresh(cfg, "cr_mean") is None


def test_refresh_generations_count_from_the_step_after_their_policy_step(analyze):
    r = run({96: 0.5, 192: 0.6}, [32, 64], 0.6)
    assert analyze.generations_at(r, 32) == 4096 + 32 * 32  # the refresh at policy step 32 precedes step 33
    assert analyze.generations_at(r, 33) == 4096 + 33 * 32 + 4096
    assert analyze.generations_at(r, 192) == r["generations"]["total"]


def test_gold_at_equal_generations_interpolates_along_the_checkpoints(analyze):
    r = run({32: 0.50, 64: 0.60, 192: 0.70}, [32, 64, 96, 128, 160], 0.70)
    # 10240 generations (a whole run without refresh) are spent exactly at step 64: 4096 + 2048 + 4096
    assert analyze.gold_at_generations(r, 0.4, 10240) == pytest.approx(0.60)
    halfway = (analyze.generations_at(r, 32) + analyze.generations_at(r, 64)) / 2
    assert analyze.gold_at_generations(r, 0.4, halfway) == pytest.approx(0.55)
    assert analyze.gold_at_generations(r, 0.4, 4096) == pytest.approx(0.4)  # the SFT start
    assert analyze.gold_at_generations(r, 0.4, 10 ** 6) is None  # more than the run ever spent


def test_refresh_comparison_pairs_seeds_and_reports_cost(analyze):
    cfg = json.loads(CONFIG.read_text())
    runs = {"cr_mean": {1: run({192: 0.52}, [], 0.52, beat=0.75), 2: run({192: 0.50}, [], 0.50, beat=0.77)},
            "cr_refresh": {1: run({64: 0.49, 192: 0.55}, [32, 64, 96, 128, 160], 0.55, beat=0.62)}}
    out, text = analyze.refresh_comparison(cfg, runs, 0.47)
    a = out["cr_refresh"]
    assert a["without_refresh"] == "cr_mean" and a["paired_seeds"] == [1] and a["refresh_every"] == "32"
    assert a["heldout_gold_minus_without"]["mean"] == pytest.approx(0.03)
    assert a["gold_at_equal_generations"]["mean"] == pytest.approx(0.49)
    assert a["gold_at_equal_generations_minus_without"]["mean"] == pytest.approx(-0.03)
    assert a["refresh_generations"]["mean"] == 5 * 4096 and a["refresh_seconds_per_run"]["mean"] == 100.0
    assert a["beat_share_last_32"]["mean"] == pytest.approx(0.62)
    assert "| cr_refresh (cr_mean) | 1 | 32 |" in text
    assert "cr_mean" not in out  # only refreshing arms get a row
