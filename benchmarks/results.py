"""Record benchmark figures in benchmarks/results.json (merged by key, with the command and machine)."""

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}"


def record(figures: dict, smoke: bool) -> None:
    """Merge `figures` into results.json unless this is a smoke run (CI keeps the measured file as it is)."""
    print(json.dumps(figures, indent=2))
    if smoke:
        return
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.update(figures)
    data.setdefault("_provenance", {})
    for key in figures:
        data["_provenance"][key] = {
            "command": " ".join(["python"] + sys.argv),
            "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
