"""Apply, check and revert OpenRLHF's `--reward_fn` extension point (`patches/openrlhf-0.11.2.diff`) on an installed openrlhf.

One diff, written against openrlhf 0.11.2, serves every release that has the hook points: each hunk goes where
its lines occur in the file, whatever the offset from the line number the diff gives (as `patch` applies a hunk
with an offset); lines found nowhere or more than once are refused rather than guessed. KNOWN_RELEASES are the
releases the tests apply, check and revert it on, each from its own wheel.

Each file's state is decided against the sha256 that the installed openrlhf's own RECORD lists for it:
pristine (the hash matches), patched (un-applying our hunks gives the hash) or modified by something else
(refused, nothing is written). Everything is computed in memory before anything is written, so a patch that
does not fit (an openrlhf without the hook points) is a dry run that fails and leaves the files as they were.
On a release outside KNOWN_RELEASES the patch is applied when that dry run succeeds, with a warning. Applying
twice is a no-op; reverting restores the files byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

KNOWN_RELEASES = ("0.10.4", "0.11.0", "0.11.1", "0.11.2")
RECOMMENDED = KNOWN_RELEASES[-1]
PATCH_FILE = Path(__file__).parent / "patches" / f"openrlhf-{RECOMMENDED}.diff"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_WHEEL_DATA = re.compile(r"^[^/]+\.data/(?:purelib|platlib)/")  # RECORD paths of an unpacked, not installed, wheel


class PatchError(RuntimeError):
    """The openrlhf at hand cannot be patched or reverted safely."""


@dataclass
class Hunk:
    old_start: int  # 1-based first line in openrlhf 0.11.2's file (0: the file is new)
    new_start: int  # the same in the patched file
    body: list[str]  # the diff's lines with their ' ', '-' or '+' tag

    def sides(self, reverse: bool) -> tuple[list[str], list[str], int]:
        """The lines to find, the lines to put in their place, and where the diff expects them (0-based)."""
        drop, add = ("+", "-") if reverse else ("-", "+")
        find = [line[1:] for line in self.body if line[0] in (" ", drop)]
        put = [line[1:] for line in self.body if line[0] in (" ", add)]
        start = self.new_start if reverse else self.old_start
        return find, put, start - 1 if find else start  # a pure insertion goes after line `start`


@dataclass
class FilePatch:
    path: str  # relative to site-packages, e.g. openrlhf/trainer/ppo_trainer.py
    new_file: bool
    hunks: list[Hunk]

    def apply(self, text: str, reverse: bool = False) -> str:
        """`text` with the hunks applied (or un-applied); PatchError when a hunk's lines are not in `text`."""
        return self.apply_with_offsets(text, reverse)[0]

    def apply_with_offsets(self, text: str, reverse: bool = False) -> tuple[str, list[int]]:
        """The patched text and, per hunk, how many lines from the diff's line number it was found."""
        lines = _lines(text)
        out, pos, shift, offsets = [], 0, 0, []
        for number, hunk in enumerate(self.hunks, 1):
            find, put, expected = hunk.sides(reverse)
            at = self._locate(lines, find, pos, expected + shift, number)
            offsets.append(at - expected)
            shift = at - expected  # where a later hunk should be, for a pure insertion and for messages
            out += lines[pos:at] + put
            pos = at + len(find)
        return "".join(out + lines[pos:]), offsets

    def _locate(self, lines: list[str], find: list[str], pos: int, guess: int, number: int) -> int:
        if not find:
            return min(max(guess, pos), len(lines))
        found = [i for i in range(pos, len(lines) - len(find) + 1) if lines[i : i + len(find)] == find]
        if len(found) != 1:
            where = "nowhere" if not found else f"{len(found)} times (lines {', '.join(str(i + 1) for i in found)})"
            first = next(line.strip() for line in find if line.strip())
            raise PatchError(f"{self.path}: the lines of hunk {number} (near line {guess + 1}, {first!r} ...) occur {where}")
        return found[0]


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
            patches[-1].hunks.append(Hunk(int(m.group(1)), int(m.group(3)), body))
        else:
            i += 1
    return patches


def site_packages_of_openrlhf() -> Path:
    """The directory this Python imports openrlhf from."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError(
            "openrlhf is not installed in this Python environment "
            f"({importlib.util.find_spec('openrlhf_contrastive').origin}). Install it first: "
            f"pip install openrlhf[vllm]=={RECOMMENDED}, then run `openrlhf-contrastive patch`."
        )
    return Path(list(spec.submodule_search_locations)[0]).parent


@dataclass
class Install:
    """An installed openrlhf: where, which release, and the sha256 its wheel's RECORD gives each file."""

    root: Path  # the directory holding openrlhf/ and openrlhf-<version>.dist-info/
    version: str
    record: dict[str, str]  # path relative to root -> urlsafe base64 sha256, as RECORD writes it

    @classmethod
    def find(cls, site_packages: Path | str | None = None) -> Install:
        root = site_packages_of_openrlhf() if site_packages is None else Path(site_packages)
        if not (root / "openrlhf").is_dir():
            raise PatchError(
                f"{root} holds no openrlhf package. Pass the site-packages directory that holds openrlhf/ and its "
                "openrlhf-<version>.dist-info/, or leave it out to patch the openrlhf this Python imports."
            )
        dist = next(iter(importlib.metadata.distributions(name="openrlhf", path=[str(root)])), None)
        if dist is None:
            raise PatchError(
                f"{root} holds openrlhf/ but no openrlhf-*.dist-info with its RECORD, so there is no release hash to "
                "tell its files from edited ones (an editable or source-tree openrlhf?). Install openrlhf from a "
                f"wheel (pip install openrlhf[vllm]=={RECOMMENDED}) and run `openrlhf-contrastive patch` again."
            )
        record = {}
        for file in dist.files or []:
            if file.hash is not None and file.hash.mode == "sha256":
                record[_WHEEL_DATA.sub("", str(file))] = file.hash.value
        return cls(root, dist.version, record)

    @property
    def known(self) -> bool:
        return self.version in KNOWN_RELEASES

    def __str__(self) -> str:
        return f"openrlhf {self.version} at {self.root}"


def _sha256_b64(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


@dataclass
class FileState:
    state: str  # "pristine" or "patched"
    pristine: str | None  # the release's text (None: a file the patch adds)
    patched: str
    offsets: list[int]  # per hunk, lines between the diff's position and where its context was found


@dataclass
class Plan:
    """What the patch finds in an install and what applying or reverting it writes (nothing is written yet)."""

    install: Install
    files: dict[str, FileState]  # path relative to install.root -> its state and both texts

    @property
    def state(self) -> str:
        kinds = {file.state for file in self.files.values()}
        return kinds.pop() if len(kinds) == 1 else "partially patched"

    def writes(self, action: str) -> dict[Path, str | None]:
        """{file: text to write, None = delete} for "apply" or "revert"; files already in that state are left alone."""
        goal = "patched" if action == "apply" else "pristine"
        return {
            self.install.root / path: file.patched if action == "apply" else file.pristine
            for path, file in self.files.items()
            if file.state != goal
        }

    def warning(self) -> str | None:
        """For a release outside KNOWN_RELEASES: what the dry run found and what to check."""
        if self.install.known:
            return None
        moved = [f"{Path(path).name} {off:+d}" for path, file in self.files.items() for off in file.offsets if off]
        return (
            f"WARNING: openrlhf {self.install.version} is not a release this patch was verified on "
            f"({', '.join(KNOWN_RELEASES)}). Every hunk of the patch finds its context lines there"
            f"{' (offsets: ' + ', '.join(moved) + ')' if moved else ''}, but OpenRLHF may have changed what happens "
            "around the hook points. Check a short run (the plugin's metrics appear in the training logs), or "
            f"install a verified release: pip install openrlhf[vllm]=={RECOMMENDED}. "
            "`openrlhf-contrastive patch --revert` restores the files byte for byte."
        )


def plan(site_packages: Path | str | None = None) -> Plan:
    """Read the install and the diff, decide each file's state and compute both texts; PatchError when unsafe."""
    install = Install.find(site_packages)
    files, modified, misfits = {}, [], []
    for fp in parse_diff(PATCH_FILE.read_text()):
        target = install.root / fp.path
        current = target.read_bytes().decode() if target.exists() else None
        release_hash = install.record.get(fp.path)
        if fp.new_file:
            ours = fp.apply("")
            if current is None or current == ours:
                files[fp.path] = FileState("pristine" if current is None else "patched", None, ours, [0])
            else:
                modified.append(f"{fp.path} (exists and is not the file this patch adds)")
        elif current is None or release_hash is None:
            modified.append(f"{fp.path} ({'missing' if current is None else 'not listed in the RECORD'})")
        elif _sha256_b64(current) == release_hash:
            try:
                patched, offsets = fp.apply_with_offsets(current)
            except PatchError as e:
                misfits.append(str(e))
                continue
            assert fp.apply(patched, reverse=True) == current, f"{fp.path}: the patch does not revert to the release"
            files[fp.path] = FileState("pristine", current, patched, offsets)
        else:
            try:
                pristine, offsets = fp.apply_with_offsets(current, reverse=True)
            except PatchError:
                pristine = None
            if pristine is not None and _sha256_b64(pristine) == release_hash:
                files[fp.path] = FileState("patched", pristine, current, offsets)
            else:
                modified.append(fp.path)
    if modified:
        raise PatchError(
            f"These files of {install} differ from both the openrlhf {install.version} release (the sha256 in its "
            f"RECORD) and its patched form: {', '.join(modified)}. Something else edited them, so the patch cannot be "
            f"applied or reverted safely. Reinstall openrlhf (pip install --force-reinstall --no-deps "
            f"openrlhf=={install.version}) and run `openrlhf-contrastive patch` again."
        )
    if misfits:
        raise PatchError(
            f"{install} lacks the hook points the --reward_fn patch needs; a dry run found: {'; '.join(misfits)}. "
            f"Nothing was written. The patch is verified on openrlhf {', '.join(KNOWN_RELEASES)}: install one of "
            f"them (pip install openrlhf[vllm]=={RECOMMENDED}), or an openrlhf-contrastive release made for "
            f"openrlhf {install.version}."
        )
    return Plan(install, files)


def check(site_packages: Path | str | None = None) -> str:
    """'patched', 'pristine' or 'partially patched'; PatchError for a modified or unpatchable openrlhf."""
    return plan(site_packages).state


def apply(site_packages: Path | str | None = None) -> str:
    """Patch the openrlhf in `site_packages` (default: the one this Python imports); returns what was done."""
    found = plan(site_packages)
    if found.state == "patched":
        return f"{found.install} is already patched; nothing to do"
    writes = found.writes("apply")
    _write(writes)
    return f"patched {found.install} ({len(writes)} files)"


def revert(site_packages: Path | str | None = None) -> str:
    """Restore the openrlhf files byte for byte; returns what was done."""
    found = plan(site_packages)
    if found.state == "pristine":
        return f"{found.install} is not patched; nothing to do"
    _write(found.writes("revert"))
    return f"reverted the patch on {found.install}"


def _write(writes: dict[Path, str | None]) -> None:
    for target, text in writes.items():
        if text is None:
            target.unlink(missing_ok=True)
        else:
            target.write_bytes(text.encode())
