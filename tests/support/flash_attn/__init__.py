"""Test-only stand-in for the CUDA-only flash-attn package; see tests/support/README.md."""
