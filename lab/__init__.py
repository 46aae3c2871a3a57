"""The lab: what a clone of openrlhf-contrastive has and the installed package does not. NOT SHIPPED.

Which way imports point (tests/unit/test_layout.py fails when a rule is broken):

    openrlhf_contrastive/   the package: imports only itself and its dependencies
        ^
    lab/                    this folder: may import the package
        ^
    benchmarks/, tests/     may import the package and the lab; never each other's scripts

Nothing loads a script by its file path, and nothing edits sys.path: the benchmarks and the lab's entry points
run as modules from the repository root (`python -m lab.demo`, `python -m benchmarks.evidence_v2.run`).

    cpu_training/   the TEST-AND-EXPERIMENT-ONLY device choice that lets OpenRLHF's trainer run on CPU (its scripts
                    run as commands, with their own folder on PYTHONPATH, never imported from here)
    harness.py      one recipe for a CPU train_ppo_ray run: its flags, its environment, launching a command in its
                    own process session, reading its tensorboard scalars
    testbed.py      the evidence testbed: a word-reversal task, its gold reward, a noisy proxy, a tiny SFT policy
    testbed_reward.py  the testbed's reward as an OpenRLHF reward-function file (--reward.remote_url)
    reward_models.py   learned reward models on the testbed (noisy preference pairs, OpenRLHF's train_rm on CPU)
    experiment.py   the arm x seed runner the evidence experiments are configurations of
    stats.py        means with t-intervals, win rates, smoothing: the numbers every analysis reports
    demo.py         `make demo`: the package's demo, then PPO with and without the contrastive reward on the testbed
"""
