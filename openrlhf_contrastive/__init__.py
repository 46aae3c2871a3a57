"""openrlhf-contrastive: contrastive rewards (Shen et al. 2024, arXiv 2403.07708) for OpenRLHF.

PPO trains on r(x, y) - g(r(x, y_1), ..., r(x, y_k)), where y_j are baseline responses sampled offline from the
SFT policy. Importing this package is cheap: it imports neither torch, ray, vllm, deepspeed nor openrlhf.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("openrlhf-contrastive")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
