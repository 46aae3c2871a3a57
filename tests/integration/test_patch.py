"""`openrlhf-contrastive patch` and the `--reward_fn` hook contract it adds to OpenRLHF.

Three kinds of openrlhf trees are patched here, never the venv itself (it stays patched):
- a copy of the venv's openrlhf 0.11.2 (package + dist-info with its RECORD), first on PYTHONPATH of a
  subprocess, so the real CLI finds it exactly as it finds a user's installed openrlhf;
- every release in patching.KNOWN_RELEASES, unpacked from its own wheel as pip installs it (the wheel is
  downloaded once into .cache/openrlhf-wheels with `pip download`, then reused);
- the venv's copy again, relabelled as a release the patch does not know.
The hook contract (openrlhf/utils/reward_fn.py as patched into the venv) is tested at the end.
"""

import ast
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from argparse import ArgumentParser
from pathlib import Path
from types import SimpleNamespace

import pytest

import openrlhf
from openrlhf_contrastive import patching

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
WHEELS = REPO / ".cache" / "openrlhf-wheels"
SITE = Path(openrlhf.__file__).parent.parent
DIST_INFO = SITE / "openrlhf-0.11.2.dist-info"
PATCHED = [
    "openrlhf/cli/train_ppo_ray.py",
    "openrlhf/trainer/ppo_trainer.py",
    "openrlhf/trainer/ppo_trainer_async.py",
    "openrlhf/trainer/ppo_utils/experience_maker.py",
]
NEW = "openrlhf/utils/reward_fn.py"
# Where each hook line must land, in every known release: (file, class or None, function or None).
HOOK_PLACES = {
    "add_reward_fn_args(parser)": ("openrlhf/cli/train_ppo_ray.py", None, None),
    "reward_fn.check_args(args)": ("openrlhf/cli/train_ppo_ray.py", None, None),
    "load_reward_fn(getattr(self.args": ("openrlhf/trainer/ppo_utils/experience_maker.py", "RemoteExperienceMaker", "__init__"),
    "self.reward_fn.transform(experiences, args)": (
        "openrlhf/trainer/ppo_utils/experience_maker.py", "RemoteExperienceMaker", "compute_advantages_and_returns",
    ),
    "self.experience_maker.reward_fn.setup(self)": ("openrlhf/trainer/ppo_trainer.py", "PPOTrainer", "fit"),
}
ASYNC_SETUP = ("openrlhf/trainer/ppo_trainer_async.py", "TrainingActor", "fit")


def run(root, *argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "openrlhf_contrastive.cli", *argv], capture_output=True, text=True, env=env, cwd=root
    )


def record_hashes(dist_info):
    """RECORD's sha256 per path as installed (an unpacked wheel's RECORD names openrlhf-X.data/purelib/...)."""
    hashes = {}
    for line in (dist_info / "RECORD").read_text().splitlines():
        name, digest, _ = line.rsplit(",", 2)
        if digest:
            hashes[name.split(".data/purelib/")[-1]] = digest.removeprefix("sha256=")
    return hashes


def sha(path):
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def snapshot(root):
    return {path: path.read_bytes() for path in sorted((root / "openrlhf").rglob("*.py"))}


@pytest.fixture()
def copy(tmp_path):
    """A copy of the installed (patched) openrlhf, reverted to pristine by the code under test."""
    shutil.copytree(SITE / "openrlhf", tmp_path / "openrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DIST_INFO, tmp_path / DIST_INFO.name)
    result = run(tmp_path, "patch", "--revert")
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_revert_restores_every_file_byte_for_byte(copy):
    hashes = record_hashes(DIST_INFO)
    for path in PATCHED:
        assert sha(copy / path) == hashes[path], path
    assert not (copy / NEW).exists()
    result = run(copy, "patch", "--check")
    assert result.returncode == 1 and result.stdout.strip().endswith(": pristine")


def test_apply_gives_the_patched_files_and_applying_twice_changes_nothing(copy):
    result = run(copy, "patch")
    assert result.returncode == 0 and "patched openrlhf 0.11.2" in result.stdout and not result.stderr
    for path in PATCHED + [NEW]:
        assert (copy / path).read_bytes() == (SITE / path).read_bytes(), path
    before = {path: (copy / path).stat().st_mtime_ns for path in PATCHED + [NEW]}
    again = run(copy, "patch")
    assert again.returncode == 0 and "already patched; nothing to do" in again.stdout
    assert {path: (copy / path).stat().st_mtime_ns for path in PATCHED + [NEW]} == before
    assert run(copy, "patch", "--check").returncode == 0


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
    readme = (REPO / "README.md").read_text()
    assert "unrecognized arguments: --reward_fn" in readme and "openrlhf-contrastive patch" in readme


# -- every known release, from its own wheel -------------------------------------------------------------------


def release_site_packages(version, into):
    """openrlhf `version` as pip installs it into a site-packages: the wheel's purelib at the top, dist-info beside."""
    wheels = sorted(WHEELS.glob(f"openrlhf-{version}-*.whl"))
    if not wheels:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"openrlhf=={version}", "-d", str(WHEELS)],
            capture_output=True, text=True, timeout=600,
        )
        wheels = sorted(WHEELS.glob(f"openrlhf-{version}-*.whl"))
        assert wheels, f"could not download openrlhf {version} from the package index:\n{download.stderr[-2000:]}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(into)
    data = into / f"openrlhf-{version}.data"
    for layer in data.iterdir():
        for item in layer.iterdir():
            shutil.move(str(item), into / item.name)
    shutil.rmtree(data)
    return into


def hook_function(source, needle):
    """(class, function) enclosing the line holding `needle`, or (None, None) at module level."""
    line = next(i for i, text in enumerate(source.splitlines(), 1) if needle in text)
    place = (None, None)
    for cls in [None, *[n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]]:
        body = cls.body if cls else ast.parse(source).body
        for fn in body:
            if isinstance(fn, ast.FunctionDef) and fn.lineno <= line <= fn.end_lineno:
                place = (cls.name if cls else None, fn.name)
    return place


FLAG_PLUGIN = '''
import openrlhf


class Scaled:
    """Adds one flag and checks it: proves add_args and check_args run in the release's own train_ppo_ray."""

    def add_args(self, parser):
        parser.add_argument("--scaled.scale", type=float, default=1.0)

    def check_args(self, args):
        print(f"check_args saw scale {args.scaled.scale} from {openrlhf.__path__[0].rsplit('/', 1)[0]}")
'''


def parse_with_release(site, workdir):
    """The release's patched train_ppo_ray (first on PYTHONPATH) parses --reward_fn with a plugin of one flag."""
    (workdir / "scaled_plugin.py").write_text(FLAG_PLUGIN)
    path = [str(site), str(workdir), str(REPO / "lab" / "cpu_training"), os.environ.get("PYTHONPATH", "")]
    code = ("from openrlhf_cli import parse_train_args; "
            "parse_train_args(['--reward_fn', 'scaled_plugin:Scaled', '--scaled.scale', '3'])")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)))


@pytest.mark.parametrize("version", patching.KNOWN_RELEASES)
def test_each_known_release_applies_checks_and_reverts_from_its_own_wheel(tmp_path, version):
    site = release_site_packages(version, tmp_path)
    hashes = record_hashes(site / f"openrlhf-{version}.dist-info")
    pristine = snapshot(site)
    for path in PATCHED:
        assert sha(site / path) == hashes[path], path  # the wheel as released

    found = patching.plan(site)
    assert (found.install.version, found.state, found.warning()) == (version, "pristine", None)
    assert patching.apply(site) == f"patched openrlhf {version} at {site} (5 files)"
    assert patching.check(site) == "patched"
    for needle, (path, cls, fn) in {**HOOK_PLACES, "experience_maker.reward_fn.setup": ASYNC_SETUP}.items():
        source = (site / path).read_text()
        assert hook_function(source, needle) == (cls, fn), (version, needle)
        ast.parse(source)
    maker = (site / HOOK_PLACES["self.reward_fn.transform(experiences, args)"][0]).read_text().splitlines()
    at = next(i for i, line in enumerate(maker) if "self.reward_fn.transform" in line)
    assert maker[at - 2].strip() == "apply_length_penalties(experiences, args)"  # right after the length penalties
    assert "already patched" in patching.apply(site)
    parsed = parse_with_release(site, tmp_path)
    assert parsed.returncode == 0 and f"check_args saw scale 3.0 from {site}" in parsed.stdout, parsed.stderr[-3000:]

    assert patching.revert(site) == f"reverted the patch on openrlhf {version} at {site}"
    assert snapshot(site) == pristine and not (site / NEW).exists()
    assert patching.check(site) == "pristine"


RECORDER = '''
class Recorder:
    """Records the rewards the transform hook receives."""

    seen = []

    def transform(self, experiences, args):
        type(self).seen += [experience.rewards.clone() for experience in experiences]
'''


@pytest.mark.parametrize("version", patching.KNOWN_RELEASES)
def test_the_transform_gets_float32_rewards_with_penalties_on_every_release(tmp_path, monkeypatch, version):
    """Releases before 0.11.2 apply the length penalties in the reward's own dtype; the patch promotes first."""
    import torch
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from openrlhf_cli import parse_train_args

    site = release_site_packages(version, tmp_path / "site")
    patching.apply(site)
    module_name = f"recorder_{version.replace('.', '_')}"
    (tmp_path / f"{module_name}.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    maker_module = type(sys)(f"experience_maker_{module_name}")  # this release's patched file, on the venv's openrlhf
    source = (site / "openrlhf/trainer/ppo_utils/experience_maker.py").read_text()
    exec(compile(source, maker_module.__name__, "exec"), maker_module.__dict__)
    args = parse_train_args([
        "--reward_fn", f"{module_name}:Recorder", "--rollout.n_samples_per_prompt", "2",
        "--reward.overlong_buffer_len", "2", "--rollout.max_new_tokens", "6",
    ])
    rewards = torch.tensor([3.14159, 2.71828, -1.41421, 0.57721], dtype=torch.bfloat16)
    experience = Experience(
        action_mask=torch.ones(4, 6, dtype=torch.bool), kl=torch.zeros(4, 6), values=torch.zeros(4, 6),
        rewards=rewards.clone(), index=[0, 1, 2, 3], prompts=["a", "a", "b", "b"], labels=[""] * 4,
        info={"reward": rewards.clone()}, response_length=torch.tensor([6, 3, 6, 3]),
    )
    maker = maker_module.RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), SimpleNamespace(args=args), None)
    maker.compute_advantages_and_returns([experience])
    (seen,) = sys.modules[module_name].Recorder.seen
    overlong = torch.tensor([-1.0, 0.0, -1.0, 0.0])  # 6 of at most 6 new tokens, buffer 2: the full penalty
    assert seen.dtype == torch.float32
    assert torch.equal(seen, rewards.float() + overlong)  # -2.4140625, where bfloat16 arithmetic gives -2.40625


def test_an_unknown_release_is_patched_by_context_with_a_warning(copy):
    metadata = copy / DIST_INFO.name / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 0.11.2", "Version: 0.11.3"))
    check = run(copy, "patch", "--check")
    assert check.returncode == 1 and check.stdout.strip() == f"openrlhf 0.11.3 at {copy}: pristine"
    assert "WARNING: openrlhf 0.11.3 is not a release this patch was verified on (0.10.4, 0.11.0, 0.11.1, 0.11.2)" in check.stderr
    result = run(copy, "patch")
    assert result.returncode == 0 and "patched openrlhf 0.11.3" in result.stdout
    assert "WARNING" in result.stderr and "pip install openrlhf[vllm]==0.11.2" in result.stderr
    for path in PATCHED + [NEW]:
        assert (copy / path).read_bytes() == (SITE / path).read_bytes(), path
    assert run(copy, "patch", "--revert").returncode == 0
    assert sha(copy / PATCHED[3]) == record_hashes(DIST_INFO)[PATCHED[3]]


def test_a_release_without_the_hook_points_is_refused_after_a_dry_run(copy):
    """A hypothetical release whose experience maker renamed the length-penalty call: its RECORD says so too."""
    metadata = copy / DIST_INFO.name / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 0.11.2", "Version: 0.12.0"))
    maker = copy / PATCHED[3]
    maker.write_text(maker.read_text().replace("apply_length_penalties(experiences, args)", "apply_penalties(experiences)"))
    record = copy / DIST_INFO.name / "RECORD"
    old = record_hashes(DIST_INFO)[PATCHED[3]]
    record.write_text(record.read_text().replace(old, sha(maker)))
    before = snapshot(copy)
    for argv in (["patch"], ["patch", "--check"]):
        result = run(copy, *argv)
        assert result.returncode == 2, result
        assert f"openrlhf 0.12.0 at {copy} lacks the hook points" in result.stderr
        assert "experience_maker.py: the lines of hunk 2" in result.stderr and "occur nowhere" in result.stderr
        assert "Nothing was written" in result.stderr and "pip install openrlhf[vllm]==0.11.2" in result.stderr
    assert snapshot(copy) == before and not (copy / NEW).exists()


def test_a_directory_without_openrlhf_is_refused(tmp_path):
    result = run(tmp_path, "patch", "--check", "--site-packages", str(tmp_path))
    assert result.returncode == 2 and f"{tmp_path} holds no openrlhf package" in result.stderr


# -- the diff itself -------------------------------------------------------------------------------------------


def test_the_diff_in_the_package_is_the_one_in_patches():
    """patches/ shows the diff in the repository; the package carries the same bytes into the wheel."""
    assert not patching.PATCH_FILE.parent.is_symlink()
    assert patching.PATCH_FILE.read_bytes() == (REPO / "patches" / patching.PATCH_FILE.name).read_bytes()


def test_the_patch_adds_few_lines_to_openrlhf_files():
    added = {fp.path: sum(line[0] == "+" for hunk in fp.hunks for line in hunk.body)
             for fp in patching.parse_diff(patching.PATCH_FILE.read_text())}
    assert sorted(added) == sorted(PATCHED + [NEW])
    assert sum(added[path] for path in PATCHED) <= 14, added


# -- the hook contract: openrlhf/utils/reward_fn.py as patched into the venv -----------------------------------

PLUGIN = '''
class OnlyTransform:
    """Does not subclass RewardFn (a plugin need not import openrlhf) and defines one hook."""

    made = 0

    def __init__(self):
        type(self).made += 1

    def transform(self, experiences, args):
        for experience in experiences:
            experience.rewards = experience.rewards * 2

    def add_args(self, parser):
        parser.add_argument("--only.scale", type=float, default=2.0)
'''


@pytest.fixture()
def plugin_module(tmp_path, monkeypatch, request):
    name = f"reward_fn_plugin_{request.node.name.replace('[', '_').replace(']', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_plugin_that_does_not_subclass_gets_the_no_op_defaults(plugin_module):
    import torch

    from openrlhf.utils.reward_fn import RewardFn, load_reward_fn

    reward_fn = load_reward_fn(f"{plugin_module}:OnlyTransform")
    assert isinstance(reward_fn, RewardFn)
    assert reward_fn.check_args(SimpleNamespace()) is None and reward_fn.setup(object()) is None
    experience = SimpleNamespace(rewards=torch.tensor([1.0, -0.5]))
    reward_fn.transform([experience], SimpleNamespace())
    assert experience.rewards.tolist() == [2.0, -1.0]
    assert isinstance(load_reward_fn(None), RewardFn)  # no --reward_fn: every hook does nothing


def test_the_parser_and_the_experience_maker_get_one_plugin_object(plugin_module, monkeypatch):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.utils.reward_fn import add_reward_fn_args, load_reward_fn

    name = f"{plugin_module}:OnlyTransform"
    monkeypatch.setattr(sys, "argv", ["train_ppo_ray", "--reward_fn", name, "--only.scale", "3"])
    parser = ArgumentParser()
    from_parser = add_reward_fn_args(parser)
    args = parser.parse_args()
    assert (args.reward_fn, getattr(args, "only.scale")) == (name, 3.0)
    args.algo = SimpleNamespace(advantage=SimpleNamespace(estimator="gae"))  # what the maker reads besides reward_fn
    maker = RemoteExperienceMaker(None, None, None, None, None, SimpleNamespace(args=args), None)
    assert maker.reward_fn is from_parser is load_reward_fn(name)
    assert sys.modules[plugin_module].OnlyTransform.made == 1


def test_an_unknown_reward_fn_says_what_is_installed():
    from openrlhf.utils.reward_fn import load_reward_fn

    with pytest.raises(ValueError, match=r"--reward_fn 'nope' is neither .*openrlhf.reward_fns: contrastive\).*Install"):
        load_reward_fn("nope")
