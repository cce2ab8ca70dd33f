"""Data-pipeline benchmarks: MinHash near-dedup vs datasketch, and tokenization into shards.

    python benchmarks/data.py [--rounds 5] [--code-bytes 4000000] [--tokenizer runs/tokenizer] [--json out.json]

1. Near-duplicate removal, docs/s: ours (``scratchllm.data.dedup.Deduplicator``, exact dedup off)
   against datasketch ``MinHash`` + ``MinHashLSH`` on the same documents and parameters: word
   5-gram shingles, 128 permutations, threshold 0.7, the same bands x rows, the same policy (query,
   verify candidates with the signature Jaccard, insert every document). datasketch is timed in
   its two documented ways: one ``MinHash`` per document (``update_batch``) and ``MinHash.bulk``;
   shingling (plain Python) counts in its time, as it must be done by its user. The corpus is the
   embedded corpus plus planted near-duplicates. Runs are interleaved (ours, theirs, ours, ...) and
   medians reported, since the machine is shared. Precision and recall of both against exact
   Jaccard ground truth are printed too.
2. Tokenization into shards: documents -> ``Tokenizer.encode_batch`` (one call, a fresh tokenizer
   so the encoding cache starts cold) -> ``ShardWriter`` (uint16), tokens/s and MB/s of UTF-8
   input, with 1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from scratchllm.data.config import DedupConfig
from scratchllm.corpus.embedded import embedded_documents
from scratchllm.data.dedup import Deduplicator, shingles
from scratchllm.corpus.shards import ShardWriter, token_dtype


def corpus(code_bytes: int, seed: int = 0, near_frac: float = 0.2) -> list[str]:
    """Embedded prose + code, plus near-duplicates (1-3% of words edited) of a random 20% of them."""
    rng = random.Random(seed)
    docs = [d.text for d in embedded_documents(["prose"])] + [d.text for d in embedded_documents(["code"], code_bytes)]
    for _ in range(int(near_frac * len(docs))):
        words = rng.choice(docs).split(" ")
        for _ in range(max(1, int(rng.uniform(0.01, 0.03) * len(words)))):
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        docs.insert(rng.randrange(len(docs) + 1), " ".join(words))
    return docs


def ground_truth(texts: list[str], threshold: float, ngram: int = 5) -> list[bool]:
    """Exact: does any earlier document have set Jaccard >= threshold on word n-gram shingles?"""
    sets = [set(shingles(t, ngram)) for t in texts]
    index: dict[bytes, list[int]] = defaultdict(list)
    out = []
    for i, s in enumerate(sets):
        shared: dict[int, int] = defaultdict(int)
        for sh in s:
            for j in index[sh]:
                shared[j] += 1
        out.append(any(c / (len(s) + len(sets[j]) - c) >= threshold for j, c in shared.items()))
        for sh in s:
            index[sh].append(i)
    return out


def ours(texts: list[str], cfg: DedupConfig) -> tuple[list[bool], tuple[int, int]]:
    dd = Deduplicator(cfg)
    flags = []
    for i in range(0, len(texts), cfg.batch_docs):
        flags += dd(texts[i : i + cfg.batch_docs])
    return flags, (dd.bands, dd.rows)


def theirs(texts: list[str], cfg: DedupConfig, bulk: bool) -> list[bool]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm,
                     weights=(cfg.false_positive_weight, cfg.false_negative_weight))
    sets = [shingles(t, cfg.ngram) for t in texts]
    if bulk:
        sketches = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed)
    else:
        sketches = []
        for s in sets:
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            m.update_batch(s)
            sketches.append(m)
    flags = []
    for i, (s, m) in enumerate(zip(sets, sketches, strict=True)):
        dup = False
        if s:
            dup = any(sketches[j].jaccard(m) >= cfg.threshold for j in lsh.query(m))
            lsh.insert(i, m, check_duplication=False)
        flags.append(dup)
    return flags


def precision_recall(flags: list[bool], truth: list[bool]) -> tuple[float, float]:
    tp = sum(f and t for f, t in zip(flags, truth, strict=True))
    return tp / max(1, sum(flags)), tp / max(1, sum(truth))


def bench_dedup(texts: list[str], rounds: int) -> dict:
    import datasketch

    cfg = DedupConfig(exact=False, near=True, threshold=0.7, num_perm=128, ngram=5)
    times: dict[str, list[float]] = {"ours": [], "datasketch": [], "datasketch_bulk": []}
    results = {}
    for _ in range(rounds):  # interleaved
        for name in times:
            t = time.perf_counter()
            if name == "ours":
                results[name], params = ours(texts, cfg)
            else:
                results[name] = theirs(texts, cfg, bulk=name.endswith("bulk"))
            times[name].append(time.perf_counter() - t)
    truth = ground_truth(texts, cfg.threshold)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: len(texts) / v for k, v in med.items()}
    out = {
        "documents": len(texts), "mbytes": sum(len(t.encode()) for t in texts) / 1e6,
        "true_duplicates": sum(truth), "bands_rows": params, "datasketch_version": datasketch.__version__,
        "seconds": times, "docs_per_s": rate,
        "ratio_vs_datasketch": rate["ours"] / rate["datasketch"],
        "ratio_vs_datasketch_bulk": rate["ours"] / rate["datasketch_bulk"],
        "agreement": sum(a == b for a, b in zip(results["ours"], results["datasketch"], strict=True)) / len(texts),
    }
    for name in times:
        out[f"precision_recall_{name}"] = precision_recall(results[name], truth)
    return out


def bench_tokenize(texts: list[str], tokenizer_path: str | None, rounds: int) -> dict:
    from scratchllm.tokenizer import Tokenizer, train_bpe

    if tokenizer_path and Path(tokenizer_path).exists():
        trained = Tokenizer.load(tokenizer_path)
    else:
        print("(no tokenizer given/found: training a 4096-token BPE on 2 MB of the embedded corpus)", file=sys.stderr)
        trained = train_bpe([d.text for d in embedded_documents(max_bytes_per_domain=1_000_000)], 4096)
    nbytes = sum(len(t.encode()) for t in texts)
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in times:
            tok = Tokenizer.from_dict(trained.to_dict())  # cold encoding cache every time
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                ntok = 0
                with ShardWriter(Path(d), "train", token_dtype(tok.vocab_size), 1 << 24, ["x"]) as w:
                    for ids in tok.encode_batch(texts, num_workers=workers):  # one call: one worker pool
                        ids.append(tok.eos_id)
                        w.add(np.asarray(ids), "x")
                        ntok += len(ids)
                times[workers].append(time.perf_counter() - t)
    return {
        "vocab_size": tok.vocab_size, "tokens": ntok, "mbytes": nbytes / 1e6, "seconds": times,
        "tokens_per_s": {w: ntok / statistics.median(v) for w, v in times.items()},
        "mb_per_s": {w: nbytes / 1e6 / statistics.median(v) for w, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--code-bytes", type=int, default=4_000_000)
    ap.add_argument("--tokenizer", default="runs/tokenizer")
    ap.add_argument("--skip-tokenize", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    texts = corpus(args.code_bytes)
    result = {
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "dedup": bench_dedup(texts, args.rounds),
    }
    d = result["dedup"]
    print(f"MinHash near-dedup: {d['documents']} docs, {d['mbytes']:.1f} MB, {d['true_duplicates']} true near-duplicates, "
          f"128 perms, J>=0.7, bands x rows = {d['bands_rows']}, median of {args.rounds} interleaved runs")
    for name, rate in d["docs_per_s"].items():
        p, r = d[f"precision_recall_{name}"]
        print(f"  {name:<16} {rate:9.0f} docs/s  ({statistics.median(d['seconds'][name]):.2f} s)  "
              f"precision {p:.3f} recall {r:.3f}")
    print(f"  ratio ours / datasketch: {d['ratio_vs_datasketch']:.1f}x  (vs MinHash.bulk: {d['ratio_vs_datasketch_bulk']:.1f}x);"
          f" same decision on {d['agreement']:.1%} of documents")
    if not args.skip_tokenize:
        result["tokenize"] = t = bench_tokenize(texts, args.tokenizer, max(1, args.rounds // 2))
        print(f"Tokenize into shards: {t['mbytes']:.1f} MB -> {t['tokens']} tokens (vocab {t['vocab_size']})")
        for w in t["tokens_per_s"]:
            print(f"  {w} worker(s): {t['tokens_per_s'][w]:10.0f} tokens/s  {t['mb_per_s'][w]:.2f} MB/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
