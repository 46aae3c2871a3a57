"""openrlhf 0.11.2's own unit tests (shipped in its wheel as a top-level `tests` package) pass when patched."""

import os
import subprocess
import sys

import pytest

import openrlhf
from openrlhf_contrastive import patching

pytestmark = pytest.mark.integration


def test_openrlhf_unit_tests_pass_on_the_patched_install(tmp_path):
    assert patching.check() == "patched"
    suite = os.path.join(os.path.dirname(os.path.dirname(openrlhf.__file__)), "tests")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this project's pytest settings
    result = subprocess.run(
        [sys.executable, "-m", "pytest", suite, "-c", str(tmp_path / "pytest.ini"), "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 200, summary  # 221 in openrlhf 0.11.2
