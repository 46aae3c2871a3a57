"""`openrlhf-contrastive {patch, sample, inspect, demo, evaluate, rescore}`."""

from __future__ import annotations

import argparse
import logging
import sys

from openrlhf_contrastive import evaluate, patching, report, rescore, stage
from openrlhf_contrastive.demo import run as demo
from openrlhf_contrastive.store import StoreError


def _patch(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openrlhf-contrastive patch",
        description="Add the generic --reward_fn extension point to the openrlhf installed in this Python environment "
        f"(verified on openrlhf {', '.join(patching.KNOWN_RELEASES)}; another release is patched only when every hunk "
        "finds its context, with a warning). Run it once per environment, on every node.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="say whether openrlhf is patched; exit 1 when it is not")
    mode.add_argument("--revert", action="store_true", help="restore openrlhf's files byte for byte")
    parser.add_argument(
        "--site-packages", metavar="DIR", default=None,
        help="the directory holding openrlhf/ and its .dist-info (default: where this Python imports openrlhf from)",
    )
    args = parser.parse_args(argv)
    try:
        found = patching.plan(args.site_packages)
        warning = found.warning()  # a release outside patching.KNOWN_RELEASES
        if warning and not args.revert:
            print(warning, file=sys.stderr)
        if args.check:
            print(f"{found.install}: {found.state}")
            return 0 if found.state == "patched" else 1
        print(patching.revert(args.site_packages) if args.revert else patching.apply(args.site_packages))
        return 0
    except patching.PatchError as e:
        print(f"openrlhf-contrastive patch: {e}", file=sys.stderr)
        return 2


def _reporting_user_errors(command: str, run, argv: list[str]) -> int:
    """Run a command; a user error (bad input, store, reward source, a file that cannot be written) ends with its
    what / why / fix message on stderr and exit code 2 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except (StoreError, ValueError) as e:
        print(f"openrlhf-contrastive {command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that is full or read-only, a quota, a file size limit, an unreadable file
        print(
            f"openrlhf-contrastive {command}: {e}. Reading or writing a file failed: free space or fix the permissions "
            f"of the named file (for a store, its directory) and rerun the same command: every prompt whose record was "
            "written is kept, the rest are done again.",
            file=sys.stderr,
        )
        return 2
    return 0


def _sample(argv: list[str]) -> int:
    return _reporting_user_errors("sample", stage.main, argv)


def _inspect(argv: list[str]) -> int:
    return report.main(argv)


def _demo(argv: list[str]) -> int:
    return demo.main(argv)


def _evaluate(argv: list[str]) -> int:
    return _reporting_user_errors("evaluate", evaluate.main, argv)


def _rescore(argv: list[str]) -> int:
    return rescore.main(argv)


COMMANDS = {"patch": _patch, "sample": _sample, "inspect": _inspect, "demo": _demo, "evaluate": _evaluate, "rescore": _rescore}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(
            "usage: openrlhf-contrastive {" + ",".join(COMMANDS) + "} ...\n"
            "  patch    add the --reward_fn extension point to the installed openrlhf (--check, --revert)\n"
            "  sample   the offline stage: k baseline rewards per prompt into --contrastive.baseline_path\n"
            "  inspect  summarise a baseline store (prompts, k, provenance, baselines, will it help?, coverage); a PNG\n"
            "  demo     the CPU end-to-end demo: baselines on vLLM, fresh rollouts, r and r - b, a report\n"
            "  evaluate a policy (e.g. a PPO checkpoint) against the store's SFT baselines: win rates, second rewards, a judge\n"
            "  rescore  score a store's kept responses with another reward into a new store (no generation)",
            file=sys.stderr,
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
