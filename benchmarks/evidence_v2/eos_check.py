"""Evidence v2, a check added after results: do the critic-free arms collapse, or only their evaluation?

In the critic-free arms (reinforce_cr, rloo4, rloo2) the held-out evaluation of some runs fell to responses of
0.5-2.5 characters, while the same runs' rollouts (train/rollout/response_length_mean) stayed near 7 tokens and
their reward near raw's. OpenRLHF 0.11.2 samples rollouts with vLLM ``min_tokens=1``
(openrlhf/trainer/ppo_utils/samples_generator.py): EOS is masked at the first position, so an empty response is
never sampled in training, and the probability the policy puts on it is never trained down. run.py's evaluation
samples the policy with transformers and no such mask.

For every checkpoint of a finished run (run.py deletes them once evaluated unless it ran with
--keep-checkpoints), this measures on the held-out prompts:

- ``p_eos_first``: the policy's probability of ending the response at its first token (mean over prompts);
- held-out gold and gold win rate against the SFT samples, sampled as run.py samples (``min0``, with run.py's
  seeds, so it must reproduce the run's recorded number) and as OpenRLHF's rollouts sample (``min1``).

    python -m benchmarks.evidence_v2.eos_check --work WORK [--out FILE]   # default FILE: WORK/eos_check.json

WORK is run.py's work directory: runs/ARM/seedN/result.json and runs/ARM/seedN/ckpt/ (checkpoints/global_step<S>_hf
and, in ckpt/ itself, the end), and sft_heldout.json (the SFT reference samples of the held-out prompts).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lab import testbed
from lab.experiment import sample_scored
from lab.testbed import p_eos_first

HERE = Path(__file__).resolve().parent


def heldout_gold(cfg: dict, model_dir: Path, sft: dict, seed: int, min_new_tokens: int) -> dict:
    """run.py's held-out evaluation (lab.experiment.sample_scored), with the first-position EOS mask off (0) or on
    (1)."""
    n = cfg["eval"]["samples_per_prompt"]["heldout"]
    responses, scored = sample_scored(cfg, model_dir, sft, n, seed, min_new_tokens)
    scored.pop("gold_per_prompt")
    return scored | {"empty": statistics.mean(y == "" for ys in responses for y in ys)}


def checkpoints(run_dir: Path, recorded: dict) -> dict[int, Path]:
    """run.py's layout: ckpt/checkpoints/global_step<S>_hf along the run, ckpt/ itself at the end."""
    ckpt, steps = run_dir / "ckpt", sorted(map(int, recorded["along"]))
    found = {step: ckpt / "checkpoints" / f"global_step{step}_hf" for step in steps[:-1]}
    found[steps[-1]] = ckpt
    return {step: path for step, path in found.items() if (path / "config.json").exists()}


def check_run(cfg: dict, run_dir: Path, sft: dict) -> dict:
    recorded = json.loads((run_dir / "result.json").read_text())
    steps = {}
    for step, ckpt in checkpoints(run_dir, recorded).items():
        eval_seed = cfg["eval"]["seed"] + 1000 * recorded["seed"] + step  # run.py's sampling seed for it
        steps[str(step)] = {"p_eos_first": p_eos_first(ckpt, sft["words"]),
                            "min0": heldout_gold(cfg, ckpt, sft, eval_seed, 0),
                            "min1": heldout_gold(cfg, ckpt, sft, eval_seed, 1),
                            "recorded_min0_gold": recorded["along"][str(step)]["heldout"]["gold"]}
    return {"arm": recorded["arm"], "seed": recorded["seed"], "end": max(map(int, recorded["along"])),
            "steps": steps, "provenance": recorded["provenance"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="run.py's work directory (run.py --out)")
    ap.add_argument("--out", type=Path, default=None, help="default WORK/eos_check.json; runs in it are skipped")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = args.out or args.work / "eos_check.json"
    cfg = testbed.load_config(HERE / "config.json")
    reference = args.work / "sft_heldout.json"  # run.py's win-rate reference
    if not reference.exists():
        raise SystemExit(f"eos_check: {reference} does not exist, so {args.work} is not a run.py work directory "
                         f"(run.py writes it before any run). Pass the directory given to run.py as --out.")
    sft = json.loads(reference.read_text())
    result = json.loads(out.read_text()) if out.exists() else {}
    for run_dir in sorted(args.work.glob("runs/*/seed*")):
        key = f"{run_dir.parent.name}/{run_dir.name}"
        if key in result or not (run_dir / "result.json").exists() or not (run_dir / "ckpt").is_dir():
            continue  # checked before, unfinished, or its checkpoints were not kept
        run = check_run(cfg, run_dir, sft)
        if not run["steps"]:
            continue
        result[key] = run
        out.write_text(json.dumps(result, indent=1))
        end = run["steps"].get(str(run["end"]))
        if end:
            print(f"{key}: end p(EOS first) {end['p_eos_first']:.3f}; held-out gold sampled as run.py "
                  f"{end['min0']['gold']:.3f} (recorded {end['recorded_min0_gold']:.3f}), as OpenRLHF's rollouts "
                  f"{end['min1']['gold']:.3f}; win rate {end['min0']['gold_win_rate_vs_sft']:.3f} / "
                  f"{end['min1']['gold_win_rate_vs_sft']:.3f}", flush=True)
    print(f"{len(result)} runs in {out}" + ("" if result else ": no finished run kept its checkpoints (run.py deletes "
                                                              "them once evaluated; run it with --keep-checkpoints)"))


if __name__ == "__main__":
    main()
