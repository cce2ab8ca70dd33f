"""`data prepare` at scale: a generated corpus of --mb megabytes, ours with 1 and 2 workers vs datatrove.

    python benchmarks/data_scale.py [--mb 400] [--workers 1,2] [--work /tmp/data_scale] [--json out.json] [--no-peer]
                                    [--peer-mb 20 --peer-workers 1]

Corpus: English-like prose sampled from a word bigram model of the plain words of the embedded prose
corpus (vectorised over many chains at once, so 400 MB takes a minute or two), as JSONL files of
about --file-mb (25) MB each (datatrove runs one task per file: give it at least as many files as
workers), with 5% planted near-duplicates (2% of words replaced) and one document in 500 with an
evaluation item (GSM8K / HellaSwag / ARC / MMLU / ppl text) pasted in. Cached in --work between runs.

Ours: ``python -m scratchllm data prepare`` (the whole pipeline: ingest, clean, Gopher/C4/FineWeb
filters, PII, decontamination, exact + MinHash dedup, tokenize, split, shard) with a BPE tokenizer
(vocab 4096) trained on the embedded corpus, once per worker count.

Peer: datatrove's LocalPipelineExecutor doing the same steps on the same files: JsonlReader ->
GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter (terminal-punctuation rule off, as
ours) -> MinHash dedup (signatures, buckets, clusters, filter; 20 bands x 6 rows, word 5-grams, as
ours) -> DocumentTokenizer with our tokenizer exported to tokenizer.json. datatrove has no
decontamination step in its base install, so it does one step less.

datatrove is an order of magnitude slower, so ``--peer-mb N`` gives it a corpus of its own of N MB
(same generator, files of at most N/2 MB), on which ours runs too, so the ratio is always measured
on the same input in the same run, never extrapolated. Order: ours on the big corpus with the first
worker count, then the peer comparisons (``--peer-workers``), then ours with the other worker counts.

Each run is a subprocess; wall time, MB/s of input, peak resident memory of the whole process tree
(summed VmRSS, polled every 0.2 s), the 1-minute load average during the run and tokens written are
printed; with --json the results are written after every run, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILE_MB = 25


# ------------------------------------------------------------------------------------------------ corpus


def make_corpus(folder: Path, mb: int, seed: int = 0, file_mb: int = FILE_MB) -> list[Path]:
    from scratchllm.corpus.embedded import embedded_documents

    stamp = folder / f"done-v3-{mb}-{seed}-{file_mb}"
    if stamp.exists():
        return sorted(folder.glob("part-*.jsonl"))
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.glob("*"):
        p.unlink()
    rng = np.random.default_rng(seed)
    # plain words (with trailing punctuation): the docs' code fragments would make every document fail
    # someone's symbol or alphabetic-word filter
    plain = re.compile(r"[A-Za-z][a-z'-]*[.,;:?!]?")
    words = [w for w in " ".join(d.text for d in embedded_documents(["prose"])).split() if plain.fullmatch(w)]
    vocab, ids = np.unique(np.array(words), return_inverse=True)
    # successors of each word, as one array sorted by predecessor
    order = np.argsort(ids[:-1], kind="stable")
    succ = ids[1:][order]
    starts = np.searchsorted(ids[:-1][order], np.arange(len(vocab)))
    counts = np.diff(np.append(starts, len(succ)))
    dead = counts == 0
    evals = []
    for task in ("gsm8k", "hellaswag", "arc", "mmlu", "ppl"):
        for line in (ROOT / "src/scratchllm/tasks/builtin" / task / "data.jsonl").read_text().splitlines():
            r = json.loads(line)
            text = r.get("question") or r.get("ctx") or r.get("text")
            if isinstance(text, str) and len(text.split()) >= 8:
                evals.append(text)
    prng = random.Random(seed)
    target = mb * 1_000_000
    written, part, n_docs = 0, 0, 0
    out = None
    while written < target:
        chains = 2000
        lengths = rng.integers(200, 1400, chains)
        steps = int(lengths.max())
        state = rng.integers(0, len(vocab), chains)
        seq = np.empty((chains, steps), np.int64)
        for t in range(steps):
            seq[:, t] = state
            c = counts[state]
            nxt = succ[np.minimum(starts[state] + (rng.random(chains) * np.maximum(c, 1)).astype(np.int64), len(succ) - 1)]
            state = np.where(dead[state], rng.integers(0, len(vocab), chains), nxt)
        for k in range(chains):
            w = vocab[seq[k, : lengths[k]]].tolist()
            paras = [" ".join(w[i : i + 90]) for i in range(0, len(w), 90)]
            text = ".\n\n".join(p.rstrip(".") for p in paras) + ".\n"
            docs = [text]
            if prng.random() < 0.05:  # near-duplicate
                dup = text.split(" ")
                for _ in range(max(1, len(dup) // 50)):
                    dup[prng.randrange(len(dup))] = prng.choice(["alpha", "beta", "gamma"])
                docs.append(" ".join(dup))
            if n_docs % 500 == 250 and evals:  # contaminated (about 200 per 400 MB)
                cut = text.index(" ", len(text) // 2)
                docs.append(text[:cut] + " " + prng.choice(evals) + " " + text[cut:])
            for d in docs:
                if out is None or out.tell() > file_mb * 1_000_000:
                    if out:
                        out.close()
                    out = open(folder / f"part-{part:04d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
                    part += 1
                line = json.dumps({"text": d}) + "\n"
                out.write(line)
                written += len(line.encode())
                n_docs += 1
            if written >= target:
                break
    if out:
        out.close()
    stamp.write_text(str(n_docs))
    return sorted(folder.glob("part-*.jsonl"))


def make_tokenizer(folder: Path) -> Path:
    from scratchllm.corpus.embedded import embedded_text
    from scratchllm.tokenizer import train_bpe

    if not (folder / "tokenizer.json").exists():
        tok = train_bpe([embedded_text(max_bytes_per_domain=1_500_000)], vocab_size=4096)
        tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------ runs


def tree_rss(pid: int) -> int:
    """Summed VmRSS of pid and its descendants."""
    total = 0
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


LOADS: list[float] = []  # 1-minute load average, sampled every 10 s during the last timed() run


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    peak = [0]
    done = threading.Event()
    LOADS.clear()

    def poll() -> None:
        k = 0
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            if k % 50 == 0:
                LOADS.append(os.getloadavg()[0])
            k += 1
            done.wait(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(out[-3000:])
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode})")
    return wall, peak[0], out


def load_summary() -> dict:
    return {"min": min(LOADS), "median": float(np.median(LOADS)), "max": max(LOADS)} if LOADS else {}


def run_ours(files: list[Path], tok: Path, work: Path, workers: int, tag: str = "") -> dict:
    out_dir = work / f"ours{tag}-{workers}"
    cfg = work / f"ours{tag}-{workers}.toml"
    paths = json.dumps([str(p) for p in files])
    cfg.write_text(f"""
out_dir = "{out_dir}"
tokenizer = "{tok}"
num_workers = {workers}
keep_staging = false
[[sources]]
kind = "files"
paths = {paths}
domain = "prose"
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    wall, peak, log = timed([sys.executable, "-m", "scratchllm", "data", "prepare", "--config", str(cfg),
                             "--force", "--no-progress"], env)
    m = json.loads((out_dir / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in m["splits"].values())
    s = m["summary"]
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "tokens": tokens,
            "docs_in": sum(v["documents"] for v in s["input"].values()),
            "docs_out": sum(sp["documents"] for sp in m["splits"].values()),
            "near_removed": s["dedup"]["near_removed"], "exact_removed": s["dedup"]["exact_removed"],
            "contaminated": s["decontam"]["contaminated"], "seconds": s["seconds"], "load": load_summary()}


DATATROVE_SCRIPT = r'''
import importlib.metadata, json, sys, shutil  # datatrove 0.5 uses importlib.metadata without importing it
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.filters import GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.tokens import DocumentTokenizer

data, tok, work, workers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
shutil.rmtree(work, ignore_errors=True)
tasks = len(list(Path(data).glob("*.jsonl")))
mh = MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=6)
def ex(pipeline, n, name, deps=None):
    return LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(workers, n), logging_dir=str(work / "logs" / name),
                                 depends=deps)
s1 = ex([JsonlReader(data, glob_pattern="*.jsonl"), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
         JsonlWriter(str(work / "filtered"), compression=None), MinhashDedupSignature(str(work / "sigs"), config=mh)],
        tasks, "sigs")
s2 = ex([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)], mh.num_buckets, "buckets", s1)
s3 = ex([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], 1, "cluster", s2)
s4 = ex([JsonlReader(str(work / "filtered")), MinhashDedupFilter(str(work / "remove")),
         DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=tok, eos_token="<|eos|>", shuffle_documents=False)],
        tasks, "tokenize", s3)
s4.run()
print(json.dumps({"token_bytes": sum(p.stat().st_size for p in (work / "tokens").rglob("*.ds"))}))
'''


def run_datatrove(data: Path, tok: Path, work: Path, workers: int) -> dict:
    wall, peak, out = timed([sys.executable, "-c", DATATROVE_SCRIPT, str(data), str(tok / "tokenizer.json"),
                             str(work / f"datatrove-{workers}"), str(workers)])
    token_bytes = json.loads(out.strip().splitlines()[-1])["token_bytes"]
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "tokens": token_bytes // 2,  # uint16 tokens
            "load": load_summary()}


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=400)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--work", default="/tmp/data_scale")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--file-mb", type=int, default=FILE_MB, help="MB per corpus file (datatrove runs one task per file)")
    ap.add_argument("--peer-mb", type=int, default=0, help="datatrove's own smaller corpus (0: the same as ours)")
    ap.add_argument("--peer-workers", help="worker counts for the peer comparison (default: --workers)")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    t = time.perf_counter()
    files = make_corpus(work / f"corpus-{args.mb}-{args.file_mb}", args.mb, file_mb=args.file_mb)
    size = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} files, {size / 1e6:.1f} MB ({time.perf_counter() - t:.0f} s to make or find)")
    tok = make_tokenizer(work / "tokenizer")
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    results: dict = {"mb": size / 1e6, "files": len(files), "load_before": load, "ours": {}, "datatrove": {},
                     "peer_corpus": {}}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    def show(name: str, w: int, r: dict, mb: float) -> None:
        ld = r.get("load", {})
        extra = (f"  (docs {r['docs_in']:,} -> {r['docs_out']:,}; dedup exact {r['exact_removed']}, near "
                 f"{r['near_removed']}; contaminated {r['contaminated']})" if "docs_in" in r else "")
        print(f"{name:28s} {w} worker(s): {r['wall_s']:7.1f} s  {mb / r['wall_s']:6.3f} MB/s  peak "
              f"{r['peak_rss_mb']:7.0f} MB  {r['tokens']:,} tokens  load {ld.get('min', 0):.1f}-{ld.get('max', 0):.1f}"
              f"{extra}", flush=True)

    def big(w: int) -> None:
        r = run_ours(files, tok, work, w)
        results["ours"][w] = r
        show(f"ours, {size / 1e6:.0f} MB", w, r, size / 1e6)
        save()

    worker_counts = [int(x) for x in args.workers.split(",")]
    big(worker_counts[0])
    if not args.no_peer:
        if args.peer_mb:
            peer_files = make_corpus(work / f"corpus-{args.peer_mb}-peer", args.peer_mb,
                                     file_mb=max(1, min(args.file_mb, args.peer_mb // 2)))
        else:
            peer_files = files
        peer_size = sum(p.stat().st_size for p in peer_files) / 1e6
        results["peer_corpus"] = {"mb": peer_size, "files": len(peer_files)}
        for w in [int(x) for x in (args.peer_workers or args.workers).split(",")]:
            if args.peer_mb:
                r = run_ours(peer_files, tok, work, w, tag="-peer-corpus")
                results["ours"][f"peer-corpus-{w}"] = r
                show(f"ours, {peer_size:.0f} MB", w, r, peer_size)
            elif w not in results["ours"]:
                big(w)
            r = results["ours"][f"peer-corpus-{w}" if args.peer_mb else w]
            d = run_datatrove(peer_files[0].parent, tok, work, w)
            results["datatrove"][w] = d
            show(f"datatrove, {peer_size:.0f} MB", w, d, peer_size)
            print(f"  ours / datatrove throughput on the same {peer_size:.0f} MB, {w} worker(s): "
                  f"{d['wall_s'] / r['wall_s']:.2f}x", flush=True)
            save()
    for w in worker_counts[1:]:
        if w not in results["ours"]:
            big(w)
    results["load_after"] = os.getloadavg()
    print(f"load average after: {results['load_after'][0]:.1f}")
    save()


if __name__ == "__main__":
    main()
