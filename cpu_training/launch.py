"""TEST-ONLY launcher: `python launch.py <train_ppo_ray flags>` runs the real openrlhf.cli.train_ppo_ray on CPU.

It declares logical GPUs to an in-process Ray (one per OpenRLHF GPU actor: vLLM engine, actor, ref, critic,
reward model), puts this folder on PYTHONPATH so that sitecustomize.py installs the cuda -> cpu device choice of
cpu_device.py in every process of the run (Ray workers, vLLM engine cores), and runs train_ppo_ray as __main__
(its own `ray.init` is skipped because Ray is already up).
"""

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, HERE)
    import cpu_device

    cpu_device.install()
    import ray

    ray.init(
        num_cpus=int(os.environ.get("CPU_TRAINING_RAY_CPUS", "8")),
        num_gpus=int(os.environ.get("CPU_TRAINING_RAY_GPUS", "5")),
        include_dashboard=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    sys.argv = ["openrlhf.cli.train_ppo_ray", *sys.argv[1:]]
    try:
        runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
