"""Evidence v2's empty-response analysis (benchmarks/evidence_v2/analyze.py): which runs' evaluated responses are
much shorter than their rollouts, and eos_check.py's numbers joined to the right run and end step."""

import pytest


@pytest.fixture(scope="module")
def analyze():
    from benchmarks.evidence_v2 import analyze

    return analyze


def run(eval_chars: float, rollout_tokens: list[float]) -> dict:
    return {"heldout": {"mean_chars": eval_chars},
            "scalars": {"train/rollout/response_length_mean": {str(i + 1): v for i, v in enumerate(rollout_tokens)}}}


def test_short_evaluated_responses_are_flagged_against_the_runs_own_rollouts(analyze):
    runs = {"rloo4": {1: run(1.5, [7.0] * 20), 2: run(6.6, [7.0] * 20), 3: run(3.0, [2.0] * 12 + [7.0] * 8)},
            "raw": {1: run(6.7, [7.2] * 20)}}
    out = analyze.empty_responses(runs, {})
    # seed 3: 3.0 chars against the mean of its last 8 rollout steps (7.0), not of the whole run
    assert out["rloo4"]["seeds_evaluated_short"] == [1, 3] and out["raw"]["seeds_evaluated_short"] == []
    assert out["rloo4"]["runs"][3]["rollout_tokens_end"] == pytest.approx(7.0)
    assert out["rloo4"]["runs"][1]["p_eos_first_end"] is None  # not re-evaluated


def test_eos_check_numbers_are_those_of_the_runs_end_step(analyze):
    checked = {"rloo4/seed1": {"end": 192, "steps": {
        "21": {"p_eos_first": 0.01, "min0": {"gold": 0.42}, "min1": {"gold": 0.43, "gold_win_rate_vs_sft": 0.44}},
        "105": {"p_eos_first": 0.85, "min0": {"gold": -0.37}, "min1": {"gold": 0.38, "gold_win_rate_vs_sft": 0.37}},
        "192": {"p_eos_first": 0.70, "min0": {"gold": -0.21}, "min1": {"gold": 0.43, "gold_win_rate_vs_sft": 0.44}}}}}
    row = analyze.empty_responses({"rloo4": {1: run(1.5, [7.0] * 8)}}, checked)["rloo4"]["runs"][1]
    assert (row["p_eos_first_end"], row["p_eos_first_max"]) == (0.70, 0.85)
    assert (row["gold_as_evaluated"], row["gold_as_rolled_out"], row["win_rate_as_rolled_out"]) == (-0.21, 0.43, 0.44)
    table = analyze.empty_table({"empty_responses": analyze.empty_responses({"rloo4": {1: run(1.5, [7.0] * 8)}},
                                                                            checked)})
    assert "| rloo4 | 1 | 1.5 | 7.0 | 0.700 (0.850) | -0.210 | 0.430 |" in table
