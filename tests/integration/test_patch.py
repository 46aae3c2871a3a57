"""`openrlhf-contrastive patch` on a private copy of the venv's openrlhf 0.11.2 (the venv itself stays patched).

The copy (package + dist-info with its RECORD) goes first on PYTHONPATH of a subprocess, so the real
patching code finds it exactly as it finds a user's installed openrlhf.
"""

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import openrlhf

pytestmark = pytest.mark.integration

SITE = Path(openrlhf.__file__).parent.parent
DIST_INFO = SITE / "openrlhf-0.11.2.dist-info"
PATCHED = [
    "openrlhf/cli/train_ppo_ray.py",
    "openrlhf/trainer/ppo_trainer.py",
    "openrlhf/trainer/ppo_trainer_async.py",
    "openrlhf/trainer/ppo_utils/experience_maker.py",
]
NEW = "openrlhf/utils/reward_fn.py"


def run(root, *argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "openrlhf_contrastive.cli", *argv], capture_output=True, text=True, env=env, cwd=root
    )


def record_hash(path):
    for line in (DIST_INFO / "RECORD").read_text().splitlines():
        name, digest, _ = line.rsplit(",", 2)
        if name.endswith(path):
            return digest.removeprefix("sha256=")
    raise KeyError(path)


def sha(path):
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


@pytest.fixture()
def copy(tmp_path):
    """A copy of the installed (patched) openrlhf, reverted to pristine by the code under test."""
    shutil.copytree(SITE / "openrlhf", tmp_path / "openrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DIST_INFO, tmp_path / DIST_INFO.name)
    result = run(tmp_path, "patch", "--revert")
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_revert_restores_every_file_byte_for_byte(copy):
    for path in PATCHED:
        assert sha(copy / path) == record_hash(path), path
    assert not (copy / NEW).exists()
    result = run(copy, "patch", "--check")
    assert result.returncode == 1 and result.stdout.strip().endswith(": pristine")


def test_apply_gives_the_patched_files_and_applying_twice_changes_nothing(copy):
    result = run(copy, "patch")
    assert result.returncode == 0 and "patched openrlhf 0.11.2" in result.stdout
    for path in PATCHED + [NEW]:
        assert (copy / path).read_bytes() == (SITE / path).read_bytes(), path
    before = {path: (copy / path).stat().st_mtime_ns for path in PATCHED + [NEW]}
    again = run(copy, "patch")
    assert again.returncode == 0 and "already patched; nothing to do" in again.stdout
    assert {path: (copy / path).stat().st_mtime_ns for path in PATCHED + [NEW]} == before
    assert run(copy, "patch", "--check").returncode == 0


def test_an_unsupported_openrlhf_version_is_refused(copy):
    metadata = copy / DIST_INFO.name / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 0.11.2", "Version: 0.11.3"))
    for argv in (["patch"], ["patch", "--check"], ["patch", "--revert"]):
        result = run(copy, *argv)
        assert result.returncode == 2
        assert "installed openrlhf is 0.11.3" in result.stderr and "Install openrlhf==0.11.2" in result.stderr
    assert sha(copy / PATCHED[0]) == record_hash(PATCHED[0])  # nothing written


def test_files_edited_by_something_else_are_refused(copy):
    with open(copy / PATCHED[1], "a") as f:
        f.write("# local edit\n")
    result = run(copy, "patch")
    assert result.returncode == 2
    assert "openrlhf/trainer/ppo_trainer.py" in result.stderr and "--force-reinstall" in result.stderr
    assert not (copy / NEW).exists()


def test_reward_fn_on_an_unpatched_openrlhf_fails_at_parse_time(copy):
    """What README's troubleshooting describes: argparse rejects --reward_fn before anything starts."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "openrlhf.cli.train_ppo_ray", "--reward_fn", "contrastive",
         "--contrastive.baseline_path", "x"],
        capture_output=True, text=True, env=env, cwd=copy, timeout=300,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --reward_fn contrastive --contrastive.baseline_path x" in result.stderr
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "unrecognized arguments: --reward_fn" in readme and "openrlhf-contrastive patch" in readme
