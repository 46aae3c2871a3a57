"""Apply, check and revert `patches/openrlhf-<version>.diff` on the openrlhf installed in this environment.

The diff adds OpenRLHF's generic `--reward_fn` extension point. Each file's state is decided against the
sha256 that openrlhf's own wheel RECORD lists for it: pristine (hash matches), patched (reverting our hunks
gives the pristine hash) or modified by something else (refused, nothing is written). Applying twice is a
no-op; reverting restores the files byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_OPENRLHF = "0.11.2"
PATCH_FILE = Path(__file__).parent / "patches" / f"openrlhf-{SUPPORTED_OPENRLHF}.diff"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(RuntimeError):
    """The installed openrlhf cannot be patched or reverted safely."""


@dataclass
class FilePatch:
    path: str  # relative to site-packages, e.g. openrlhf/trainer/ppo_trainer.py
    new_file: bool
    hunks: list[tuple[int, list[str]]]  # (first old line, 1-based; diff body lines with their ' '/'-'/'+' tag)

    def apply(self, text: str, reverse: bool = False) -> str:
        """`text` with the hunks applied (or un-applied); PatchError when a context line does not match."""
        drop, add = ("+", "-") if reverse else ("-", "+")
        lines = _lines(text)
        out, pos = [], 0
        for start, body in self.hunks:
            old = [line[1:] for line in body if line[0] in (" ", drop)]
            new = [line[1:] for line in body if line[0] in (" ", add)]
            at = start - 1 if old else start  # a pure insertion is anchored after line `start`
            if reverse:
                at = self._new_start(start)
            if lines[at : at + len(old)] != old:
                raise PatchError(f"{self.path}: hunk at line {start} does not match the installed file")
            out += lines[pos:at] + new
            pos = at + len(old)
        return "".join(out + lines[pos:])

    def _new_start(self, old_start: int) -> int:
        shift = 0
        for start, body in self.hunks:
            if start == old_start:
                break
            shift += sum(line[0] == "+" for line in body) - sum(line[0] == "-" for line in body)
        return max(old_start - 1, 0) + shift


def _lines(text: str) -> list[str]:
    """Lines with their "\n", split on "\n" only (str.splitlines also splits on form feeds and the like)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def parse_diff(text: str) -> list[FilePatch]:
    patches: list[FilePatch] = []
    lines = _lines(text)
    i = 0
    while i < len(lines):
        if lines[i].startswith("--- "):
            path = lines[i + 1].split()[1].removeprefix("b/")
            patches.append(FilePatch(path, False, []))
            i += 2
        elif (m := _HUNK.match(lines[i])) is not None:
            if m.group(1) == "0" and m.group(2) == "0":  # @@ -0,0 +1,N @@: the file is new
                patches[-1].new_file = True
            i += 1
            body = []
            while i < len(lines) and lines[i][:1] in (" ", "-", "+", "\\") and not lines[i].startswith("--- "):
                if not lines[i].startswith("\\"):
                    body.append(lines[i] if lines[i] != "\n" else " \n")
                i += 1
            patches[-1].hunks.append((int(m.group(1)), body))
        else:
            i += 1
    return patches


def site_packages_of_openrlhf() -> Path:
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError(
            "openrlhf is not installed in this Python environment "
            f"({importlib.util.find_spec('openrlhf_contrastive').origin}). Install it first: "
            f"pip install openrlhf[vllm]=={SUPPORTED_OPENRLHF}, then run `openrlhf-contrastive patch`."
        )
    return Path(list(spec.submodule_search_locations)[0]).parent


def _check_version() -> str:
    version = importlib.metadata.version("openrlhf")
    if version != SUPPORTED_OPENRLHF:
        raise PatchError(
            f"The installed openrlhf is {version}; this openrlhf-contrastive carries a patch for openrlhf "
            f"{SUPPORTED_OPENRLHF} only. The patch edits exact lines of OpenRLHF's trainer, so applying it to another "
            f"release could break training silently. Install openrlhf=={SUPPORTED_OPENRLHF} "
            "(pip install openrlhf[vllm]==0.11.2) or an openrlhf-contrastive release made for your openrlhf."
        )
    return version


def _record_hashes() -> dict[str, str]:
    hashes = {}
    for file in importlib.metadata.files("openrlhf") or []:
        if file.hash is not None and file.hash.mode == "sha256":
            hashes[str(file).split(".data/purelib/")[-1]] = file.hash.value
    return hashes


def _sha256_b64(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def _plan(action: str) -> tuple[dict[Path, str | None], str]:
    """What `action` ("apply" or "revert") would write ({path: new text, None = delete}) and the current state."""
    _check_version()
    root = site_packages_of_openrlhf()
    pristine_hashes = _record_hashes()
    states, writes = {}, {}
    for fp in parse_diff(PATCH_FILE.read_text()):
        target = root / fp.path
        if fp.new_file:
            patched_text = fp.apply("")
            current = target.read_bytes().decode() if target.exists() else None
            state = "pristine" if current is None else "patched" if current == patched_text else "modified"
            pristine_text = None
        else:
            current = target.read_bytes().decode()
            if _sha256_b64(current) == pristine_hashes.get(fp.path):
                state, pristine_text, patched_text = "pristine", current, fp.apply(current)
            else:
                try:
                    pristine_text = fp.apply(current, reverse=True)
                except PatchError:
                    pristine_text = None
                ok = pristine_text is not None and _sha256_b64(pristine_text) == pristine_hashes.get(fp.path)
                state, patched_text = ("patched", current) if ok else ("modified", None)
        states[fp.path] = state
        if state == "modified":
            continue
        writes[target] = patched_text if action == "apply" else pristine_text
    modified = [path for path, state in states.items() if state == "modified"]
    if modified:
        raise PatchError(
            f"These openrlhf files under {root} differ from both the openrlhf {SUPPORTED_OPENRLHF} release and its "
            f"patched form: {', '.join(modified)}. Something else edited them, so the patch cannot be applied or "
            f"reverted safely. Reinstall openrlhf (pip install --force-reinstall --no-deps openrlhf=={SUPPORTED_OPENRLHF}) "
            "and run `openrlhf-contrastive patch` again."
        )
    kinds = set(states.values())
    return writes, kinds.pop() if len(kinds) == 1 else "partially patched"


def check() -> str:
    """'patched', 'pristine' or 'partially patched'; PatchError for an unsupported or modified openrlhf."""
    return _plan("apply")[1]


def apply() -> str:
    """Patch the installed openrlhf; returns what was done."""
    writes, state = _plan("apply")
    if state == "patched":
        return f"openrlhf {SUPPORTED_OPENRLHF} at {site_packages_of_openrlhf()} is already patched; nothing to do"
    _write(writes)
    return f"patched openrlhf {SUPPORTED_OPENRLHF} at {site_packages_of_openrlhf()} ({len(writes)} files)"


def revert() -> str:
    """Restore the installed openrlhf files byte for byte; returns what was done."""
    writes, state = _plan("revert")
    if state == "pristine":
        return f"openrlhf {SUPPORTED_OPENRLHF} at {site_packages_of_openrlhf()} is not patched; nothing to do"
    _write(writes)
    return f"reverted the patch on openrlhf {SUPPORTED_OPENRLHF} at {site_packages_of_openrlhf()}"


def _write(writes: dict[Path, str | None]) -> None:
    for target, text in writes.items():
        if text is None:
            target.unlink(missing_ok=True)
        else:
            target.write_bytes(text.encode())
