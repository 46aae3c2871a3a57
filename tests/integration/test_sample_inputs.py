"""`openrlhf-contrastive sample` refuses bad input with what / why / fix, before a model loads or a header is written,
and refuses a reward source that returns anything but one finite reward per response before writing it.

Real CLI (`cli.main`), real hf backend, tiny models built here, reward-function files written here.
"""

import json
import textwrap

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy

    tmp = tmp_path_factory.mktemp("inputs")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"Question {i}: what is {i} plus two?"}) + "\n" for i in range(6)))
    return build_policy(tmp / "policy"), prompts


def reward_file(tmp_path, body: str):
    path = tmp_path / "reward.py"
    path.write_text("import torch\n\n\ndef reward_func(queries, prompts, labels):\n" + textwrap.indent(body, "    "))
    return path


GOOD_REWARD = "r = torch.tensor([float(len(q) % 5) for q in queries])\nreturn {'rewards': r, 'scores': r}\n"


def flags(models, store, reward, *extra):
    policy, prompts = models
    return [
        "--actor.model_name_or_path", str(policy), "--reward.remote_url", str(reward),
        "--data.prompt_dataset", str(prompts), "--data.max_len", "64", "--rollout.max_new_tokens", "6",
        "--contrastive.k", "2", "--contrastive.chunk_size", "3", "--contrastive.backend", "hf",
        "--contrastive.baseline_path", str(store), *extra,
    ]


def sample(capsys, argv) -> tuple[int, str]:
    """Exit code and the command's own last stderr line (the refusal; logging and progress bars come before)."""
    from openrlhf_contrastive import cli

    rc = cli.main(["sample", *argv])
    lines = capsys.readouterr().err.rstrip().splitlines()
    return rc, lines[-1] if lines else ""


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--contrastive.k", "0"], "--contrastive.k is 0"),
        (["--contrastive.k", "-1"], "--contrastive.k is -1"),
        (["--rollout.temperature", "0"], "temperature 0.0 (--rollout.temperature)"),
        (["--contrastive.temperature", "-1"], "temperature -1.0 (--contrastive.temperature)"),
        (["--contrastive.chunk_size", "0"], "--contrastive.chunk_size is 0"),
        (["--contrastive.shape", "zscore", "--contrastive.k", "1"], "--contrastive.k >= 2"),
        (["--train.agent_func_path", "agent.py"], "the hf backend does not use"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(models, tmp_path, capsys, extra, expected):
    rc, err = sample(capsys, flags(models, tmp_path / "s", reward_file(tmp_path, GOOD_REWARD), *extra))
    assert rc == 2 and expected in err
    assert not (tmp_path / "s").exists()
    # the corrected command then runs (nothing was written that would make it a fingerprint mismatch)
    assert sample(capsys, flags(models, tmp_path / "s", reward_file(tmp_path, GOOD_REWARD)))[0] == 0


@pytest.mark.parametrize("space, expected", [
    (None, ["vLLM runs on its CPU backend here and VLLM_CPU_KVCACHE_SPACE is not set",
            "of the memory of the CPU's NUMA node", "set VLLM_CPU_KVCACHE_SPACE=<GiB>", "or use --contrastive.backend hf"]),
    ("1.5", ["VLLM_CPU_KVCACHE_SPACE='1.5': vLLM reads it as a whole number of GiB", "VLLM_CPU_KVCACHE_SPACE=1."]),
], ids=["unset", "fraction"])
def test_vllm_cpu_engines_without_a_usable_kv_cache_size_are_refused_before_anything_starts(
    models, tmp_path, capsys, monkeypatch, space, expected
):
    """On vLLM's CPU platform the openrlhf backend would size its engines' KV cache by a share of the NUMA node's
    memory (or vLLM would fail to read the size): `sample` says so and how to fix it before Ray or an engine starts
    (tests/conftest.py pins the size)."""
    import ray

    if space is None:
        monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    else:
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", space)
    rc, err = sample(capsys, flags(models, tmp_path / "s", reward_file(tmp_path, GOOD_REWARD), "--contrastive.backend", "openrlhf"))
    assert rc == 2 and err.startswith(f"openrlhf-contrastive sample: {expected[0]}")
    assert all(part in err for part in expected)
    assert not ray.is_initialized() and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "holds no prompts"),
        (b'{"input": "a"}\n{oops\n', "line 2, is not JSON"),
        (b'{"question": "a"}\n', "has no key 'input'"),
        (b'{"input": "caf\xe9"}\n', "is not UTF-8"),
    ],
)
def test_bad_prompt_files_are_refused_naming_the_file(models, tmp_path, capsys, content, expected):
    policy, _ = models
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    rc, err = sample(capsys, flags((policy, bad), tmp_path / "s", reward_file(tmp_path, GOOD_REWARD)))
    assert rc == 2 and expected in err and str(bad) in err
    assert not (tmp_path / "s").exists()


def test_missing_policy_and_store_path_that_is_a_file(models, tmp_path, capsys):
    _, prompts = models
    rc, err = sample(capsys, flags((tmp_path / "no-such-model", prompts), tmp_path / "s", reward_file(tmp_path, GOOD_REWARD)))
    assert rc == 2 and "--actor.model_name_or_path" in err and "does not exist" in err
    (tmp_path / "file").write_text("not a store")
    rc, err = sample(capsys, flags(models, tmp_path / "file", reward_file(tmp_path, GOOD_REWARD)))
    assert rc == 2 and "is a file, not a directory" in err


@pytest.mark.parametrize(
    "body, expected",
    [
        ("raise RuntimeError('reward server down')\n", "raised RuntimeError: reward server down"),
        ("r = torch.full((len(queries),), float('nan'))\nreturn {'rewards': r, 'scores': r}\n", "non-finite reward nan"),
        ("r = torch.zeros(2 * len(queries))\nreturn {'rewards': r, 'scores': r}\n", "2 values instead of one"),
        ("r = torch.zeros(0)\nreturn {'rewards': r, 'scores': r}\n", "0 values instead of one"),
        ("return [0.0 for _ in queries]\n", "returned list, not a dict"),
    ],
)
def test_reward_source_problems_are_refused_naming_prompt_and_source(models, tmp_path, capsys, body, expected):
    from openrlhf_contrastive.store import BaselineStore

    reward = reward_file(tmp_path, body)
    rc, err = sample(capsys, flags(models, tmp_path / "s", reward))
    assert rc == 2 and expected in err, err
    assert err.startswith(f"openrlhf-contrastive sample: --reward.remote_url {reward} gave ")
    assert "of the prompt 'Question 0" in err
    assert len(BaselineStore.load(tmp_path / "s")) == 0  # nothing of the failing chunk was stored


FULL_DISK = """
import resource, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from openrlhf_contrastive import cli
sys.exit(cli.main(["sample", *sys.argv[2:]]))
"""


def test_a_disk_that_fills_up_ends_with_the_fix_and_loses_nothing(models, tmp_path):
    """Files may not grow past 4 KiB (RLIMIT_FSIZE). First the datasets cache cannot be written; once it is (a run of
    3 prompts without the limit), the store's prompts.bin fills up after some chunks."""
    import subprocess
    import sys

    from openrlhf_contrastive.store import BaselineStore

    policy, _ = models
    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"Question {i}: what is {i} plus two?"}) + "\n" for i in range(100)))
    argv = flags((policy, prompts), tmp_path / "s", reward_file(tmp_path, GOOD_REWARD))

    def run(*extra, limit=None):
        cmd = [sys.executable, "-c", FULL_DISK, str(limit)] if limit else [sys.executable, "-m", "openrlhf_contrastive.cli"]
        proc = subprocess.run([*cmd, *([] if limit else ["sample"]), *argv, *extra], capture_output=True, text=True,
                              timeout=600)
        return proc.returncode, proc.stderr.rstrip().splitlines()[-1] if proc.stderr.strip() else ""

    rc, last = run(limit=4096)
    assert rc == 2 and last.startswith("openrlhf-contrastive sample: --data.prompt_dataset") and "has free space" in last
    assert "File too large" in last and not (tmp_path / "s").exists()

    assert run("--data.max_samples", "3")[0] == 0  # fills the datasets cache, samples 3 prompts
    rc, last = run(limit=4096)
    assert rc == 2 and last.startswith("openrlhf-contrastive sample: [Errno 27] File too large"), last
    assert "free space or fix the permissions" in last and "is kept" in last
    done = len(BaselineStore.load(tmp_path / "s"))
    assert 3 < done < 100
    assert run()[0] == 0
    assert len(BaselineStore.load(tmp_path / "s")) == 100
