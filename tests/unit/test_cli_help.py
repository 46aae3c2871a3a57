"""Every `openrlhf-contrastive COMMAND --help` answers without importing the heavy stack (torch, openrlhf, ...).

(`sample --help` used to import torch, transformers and deepspeed first: about 4 s.)
"""

import subprocess
import sys

import pytest

from openrlhf_contrastive.cli import COMMANDS

HEAVY = ("torch", "openrlhf", "transformers", "deepspeed", "vllm", "ray")

SCRIPT = """
import sys
from openrlhf_contrastive import cli
try:
    cli.main([sys.argv[1], "--help"])
except SystemExit:
    pass
print("IMPORTED", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_imports_nothing_heavy(command):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY), command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED []"
