"""Dedup index memory per document, up to a million documents.

    python benchmarks/dedup_memory.py [--docs 1000000] [--json out.json]

Feeds random fingerprints (every document distinct, so every band key is a new index entry: the
worst case for memory) through ``Deduplicator.decide`` in batches of 512, the way ``data prepare``
does, and prints the resident memory growth (VmRSS from /proc) and bytes per document at checkpoints,
with the bytes the index's arrays hold (``Deduplicator.state_bytes``: signatures, band-key table,
exact-key table; the tables double when 3/4 full, so this steps between ~0.9 and ~1.2 KB/doc).
The signatures themselves are made with numpy (MinHash values are uniform 32-bit integers), since
only the index's size is measured here.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from scratchllm.data.config import DedupConfig
from scratchllm.data.dedup import Deduplicator, Fingerprints


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = DedupConfig()
    dd = Deduplicator(cfg)
    rng = np.random.default_rng(0)
    batch = 512
    checkpoints = sorted({c for c in (10_000, 100_000, 250_000, 500_000, args.docs) if c <= args.docs})
    base = rss()
    t0 = time.perf_counter()
    rows = []
    done = 0
    while done < args.docs:
        n = min(batch, args.docs - done)
        sigs = rng.integers(0, 1 << 32, (n, cfg.num_perm), dtype=np.uint32)
        keys = [rng.bytes(16) for _ in range(n)]
        dd.decide(Fingerprints(n, keys, sigs, dd.band_keys(sigs), np.zeros(n, bool)))
        done += n
        if done in checkpoints or (checkpoints and done >= checkpoints[0]):
            while checkpoints and done >= checkpoints[0]:
                checkpoints.pop(0)
            grown = rss() - base
            held = dd.state_bytes()
            rows.append({"documents": done, "rss_growth_mb": grown / 2**20, "bytes_per_doc": grown / done,
                         "state_bytes_per_doc": held / done, "seconds": time.perf_counter() - t0})
            print(f"{done:>9,} docs: +{grown / 2**20:8.1f} MB resident, {grown / done:7.0f} bytes/doc "
                  f"(arrays held: {held / done:5.0f} bytes/doc), {time.perf_counter() - t0:6.1f} s", flush=True)
    print(f"bands x rows = {dd.bands} x {dd.rows}, num_perm = {cfg.num_perm}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bands": dd.bands, "rows": dd.rows, "num_perm": cfg.num_perm, "rows_": rows}, f, indent=1)


if __name__ == "__main__":
    main()
