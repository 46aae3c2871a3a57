"""The baseline store at scale: write and load 1,000,000 prompts with k = 4; load time, memory, lookups/s.

The load runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is measured against the same
subprocess's footprint just before `BaselineStore.load`. "Beyond the raw rewards" subtracts N * k * 8 bytes.

    .venv/bin/python -m benchmarks.bench_store [--smoke]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import record

from openrlhf_contrastive.store import StoreWriter, prompt_keys  # noqa: E402

LOAD = """
import json, resource, sys, time
import numpy as np
from openrlhf_contrastive.store import BaselineStore, prompt_keys
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    store = BaselineStore.load(sys.argv[1])
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prompts = [f"Prompt {i}: what is the answer to question number {i}?" for i in range(0, len(store), 7)][:200000]
start = time.perf_counter()
for i in range(0, len(prompts), 1024):
    _, hit = store.lookup(prompt_keys(prompts[i:i + 1024]))
    assert hit.all()
lookup_s = time.perf_counter() - start
print(json.dumps({"n": len(store), "k": store.k, "load_s": times, "rss_before_kb": before, "rss_peak_kb": peak,
                  "lookups": len(prompts), "lookup_s": lookup_s}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="10,000 prompts, nothing recorded (CI)")
    opts = parser.parse_args()
    n, k, chunk = (10_000, 4, 5_000) if opts.smoke else (1_000_000, 4, 50_000)
    path = Path(tempfile.mkdtemp()) / "store"
    rng = np.random.default_rng(0)

    start = time.perf_counter()
    with StoreWriter(path, k, {"k": k, "benchmark": True}) as writer:
        for s in range(0, n, chunk):
            prompts = [f"Prompt {i}: what is the answer to question number {i}?" for i in range(s, min(s + chunk, n))]
            writer.append(prompt_keys(prompts), prompts, rng.normal(size=(len(prompts), k)))
    write_s = time.perf_counter() - start
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20

    out = subprocess.run([sys.executable, "-c", LOAD, str(path), "5"], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    load_s = statistics.median(m["load_s"])
    rss_mb = (m["rss_peak_kb"] - m["rss_before_kb"]) / 1024
    raw_mb = n * k * 8 / 2**20
    print(f"store of {n:,} prompts, k={k}: {size_mb:.1f} MB on disk, written in {write_s:.1f} s")
    print(f"  load (median of 5, fresh process): {load_s:.3f} s   (target < 2 s)")
    print(f"  peak RSS added by the load: {rss_mb:.1f} MB; raw rewards {raw_mb:.1f} MB; "
          f"beyond the raw rewards {rss_mb - raw_mb:.1f} MB (target < 200 MB)")
    print(f"  lookups incl. hashing the prompt strings: {m['lookups'] / m['lookup_s']:,.0f} /s")
    record({"store_load_s": round(load_s, 3), "store_rss_mb": round(rss_mb - raw_mb, 1),
            "store_rss_total_mb": round(rss_mb, 1), "store_lookups_per_s": round(m["lookups"] / m["lookup_s"]),
            "store_write_s": round(write_s, 1), "store_prompts": n}, opts.smoke)


if __name__ == "__main__":
    main()
