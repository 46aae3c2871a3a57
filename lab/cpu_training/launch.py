"""TEST-ONLY launcher: `python launch.py <train_ppo_ray flags>` runs the real openrlhf.cli.train_ppo_ray on CPU.

It declares logical GPUs to an in-process Ray (one per OpenRLHF GPU actor: vLLM engine, actor, ref, critic,
reward model), puts this folder on PYTHONPATH so that sitecustomize.py installs the cuda -> cpu device choice of
cpu_device.py in every process of the run (Ray workers, vLLM engine cores), and runs train_ppo_ray as __main__
(its own `ray.init` is skipped because Ray is already up). Ray starts through ray_start.py, which starts it again
when the raylet does not register within Ray's fixed 30 s (seen on an overloaded 2-core machine).

`python launch.py -m MODULE <args>` runs another module the same way, e.g. `-m openrlhf_contrastive.cli sample ...
--contrastive.backend openrlhf --reward.model_name_or_path RM`, whose RewardModelActor group needs the device
choice and logical GPUs just as train_ppo_ray's does. lab/harness.py builds these commands and runs them in a
process session of their own.
"""

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    import cpu_device

    cpu_device.install()
    import ray
    from ray_start import init_ray

    init_ray(
        num_cpus=int(os.environ.get("CPU_TRAINING_RAY_CPUS", "8")),
        num_gpus=int(os.environ.get("CPU_TRAINING_RAY_GPUS", "5")),
        include_dashboard=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    module, args = ("openrlhf.cli.train_ppo_ray", sys.argv[1:]) if sys.argv[1:2] != ["-m"] else (sys.argv[2], sys.argv[3:])
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
