"""Muon vs AdamW, and random windows vs best-fit packing (with and without document masking).

Each variant trains the cpu-tiny preset (configs/train/cpu-tiny.toml: the 1m model, batch 16, seq 128,
lr 3e-3, warmup + cosine) for ``--steps`` steps on the embedded corpus, once per seed, and reports:

* validation loss at equal tokens (the same random val windows for every variant, every
  ``--eval-every`` steps), and at the end also the per-document val loss (val documents packed
  with document masking: each document alone, from its start);
* the tokens needed to reach AdamW's final val loss (per seed, linear between evaluations), as a
  ratio to AdamW's tokens (target for Muon: <= 0.8);
* the time per step against AdamW on windows (median tokens/s of the Trainer's log rows; target
  for Muon: <= 10% more);
* packing's padding share, against nanochat's reported cropping share.

The data are byte-level shards of the embedded corpus (paragraphs as documents, vocab 257) rather than
the BPE shards of ``scratchllm data prepare``, so that the benchmark needs no tokenizer training.

    python benchmarks/optim.py [--steps 100] [--eval-every 10] [--seeds 3] [--variants adamw,muon,packed,packed-mask]

No peer library runs these variants on this model: the comparison is between our own variants
(Muon itself is checked against torch.optim.Muon in tests/train/test_muon.py).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from scratchllm.config import load_config  # noqa: E402
from scratchllm.corpus.embedded import embedded_text  # noqa: E402
from scratchllm.corpus.shards import ShardDataset  # noqa: E402
from scratchllm.train.config import TrainConfig  # noqa: E402
from scratchllm.train.data import fixed_batches  # noqa: E402
from scratchllm.train.packing import DocumentPacker, fixed_packed_batches  # noqa: E402
from scratchllm.train.parallel import Dist  # noqa: E402
from scratchllm.train.pretrain import build_trainer  # noqa: E402
from scratchllm.train.tracking import read_metrics  # noqa: E402

VARIANTS = {
    "adamw": (),
    "muon": ("optim.name=muon",),
    "muon-fp32": ("optim.name=muon", 'optim.muon_ns_dtype="fp32"'),
    "packed": ("data.batching=packed",),
    "packed-mask": ("data.batching=packed", "data.doc_mask=true"),
    "muon-packed-mask": ("optim.name=muon", "data.batching=packed", "data.doc_mask=true"),
}
NANOCHAT_CROP = "100% utilisation (no padding), ~35% of tokens cropped at T=2048 (nanochat/dataloader.py docstring)"


def write_data(out: Path, max_bytes: int) -> Path:
    from tests.train.conftest import write_byte_shards

    return write_byte_shards(out, embedded_text(max_bytes_per_domain=max_bytes), shard_tokens=1 << 22)


def run(variant: str, seed: int, args, data: Path, work: Path, val_windows, val_docs) -> dict:
    out = work / f"{variant}-{seed}"
    over = [f'out_dir="{out}"', f'data.path="{data}"', "model.vocab_size=257", f"seed={seed}",
            f"train.max_steps={args.steps}", f"schedule.warmup_steps={max(1, args.steps // 20)}",
            f"eval.interval={args.eval_every}", "eval.batches=0", "eval.sample_tokens=0", "eval.sample_interval=0",
            "checkpoint.interval=0", "log.interval=10", "log.tensorboard=false", "log.progress=false",
            f"train.num_threads={args.threads}", *VARIANTS[variant]]
    cfg = load_config(TrainConfig, ROOT / "configs/train/cpu-tiny.toml", over)
    trainer = build_trainer(cfg, Dist())
    trainer.val_batches = val_windows  # one val set for all variants (the Trainer's own for packed is packed)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    val = [(r["step"], r["loss"]) for r in read_metrics(out, "val")]
    rates = [r["tokens_per_s"] for r in read_metrics(out, "train")][1:]
    trainer.val_batches = val_docs
    doc_loss = trainer.evaluate()
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    return {"val": val, "final": val[-1][1], "doc_loss": doc_loss, "tok_s": statistics.median(rates),
            "tokens_per_step": tokens_per_step, "wall": wall}


def step_times(args, data: Path, work: Path, variants: list[str], rounds: int) -> dict[str, float]:
    """Median seconds per training step (batch drawn + forward/backward + optimizer), the variants'
    steps alternating in this one process so that the machine's load hits them alike."""
    trainers = {}
    for v in variants:
        over = [f'out_dir="{work / ("time-" + v)}"', f'data.path="{data}"', "model.vocab_size=257",
                "eval.batches=0", "eval.sample_tokens=0", "log.tensorboard=false", "log.progress=false",
                f"train.num_threads={args.threads}", *VARIANTS[v]]
        trainers[v] = build_trainer(load_config(TrainConfig, ROOT / "configs/train/cpu-tiny.toml", over), Dist())
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(rounds + 1):
        for v, t in trainers.items():
            t0 = time.perf_counter()
            t.train_step([t.train_source.next_batch()])
            if i:  # the first round warms up
                times[v].append(time.perf_counter() - t0)
    for t in trainers.values():
        t.close()
    return {v: statistics.median(x) for v, x in times.items()}


def tokens_to_reach(val: list[tuple[int, float]], target: float, tokens_per_step: int) -> float | None:
    prev = (0, float("inf"))
    for step, loss in val:
        if loss <= target:
            if prev[1] == float("inf"):
                return step * tokens_per_step
            frac = (prev[1] - target) / (prev[1] - loss)  # linear between the two evaluations
            return (prev[0] + frac * (step - prev[0])) * tokens_per_step
        prev = (step, loss)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads threads)")
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="embedded corpus bytes per domain")
    p.add_argument("--variants", default="adamw,muon,packed,packed-mask")
    p.add_argument("--time-rounds", type=int, default=20, help="alternating steps per variant for the step time")
    p.add_argument("--only-time", action="store_true", help="just the step times")
    args = p.parse_args()
    variants = args.variants.split(",")
    import os

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, python {platform.python_version()}; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_data(work / "data", args.max_bytes)
        packer = DocumentPacker(ShardDataset(data, "train"), 128, seed=0)
        s = packer.stats()
        print(f"packing (seq 128, buffer 1000): {len(packer.docs):,} documents -> {s['rows']:,} rows, "
              f"padding {s['padding_share']:.2%}, BOS {s['bos_share']:.2%}, {s['split_documents']:,} documents "
              f"split across rows; nanochat: {NANOCHAT_CROP}")
        st = step_times(args, data, work, variants, args.time_rounds)
        print("median time per step (alternating, one process): " + ", ".join(
            f"{v} {st[v] * 1e3:.0f} ms ({st[v] / st['adamw']:.2f}x)" for v in variants), flush=True)
        if args.only_time:
            return
        val_windows = fixed_batches(data, "val", args.val_batches, 16, 128, 99)
        val_docs = fixed_packed_batches(data, "val", args.val_batches, 16, 128, 99, doc_mask=True)
        results: dict[str, list[dict]] = {v: [None] * args.seeds for v in variants}
        jobs = [(v, seed) for seed in range(args.seeds) for v in variants]  # variants interleaved: load hits all
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
            futures = {pool.submit(run, v, 1000 + seed, args, data, work, val_windows, val_docs): (v, seed)
                       for v, seed in jobs}
            for f in as_completed(futures):
                v, seed = futures[f]
                r = results[v][seed] = f.result()
                print(f"  seed {seed} {v:18s} final val {r['final']:.4f}  per-doc val {r['doc_loss']:.4f}  "
                      f"{r['tok_s']:,.0f} tok/s  ({r['wall']:.0f} s)  val curve {r['val']}", flush=True)
        base = results["adamw"]
        tokens = args.steps * base[0]["tokens_per_step"]
        print(f"\n{args.steps} steps = {tokens:,} tokens per run; medians over {args.seeds} seeds; "
              f"load average after: {os.getloadavg()}")
        print("| variant | val loss (windows) | per-document val loss | tokens to AdamW's final val, x AdamW "
              "| time per step vs AdamW |")
        print("|---|---|---|---|---|")
        for v in variants:
            rs = results[v]
            ratios = []
            for r, b in zip(rs, base, strict=True):
                reached = tokens_to_reach(r["val"], b["final"], r["tokens_per_step"])
                own = tokens_to_reach(b["val"], b["final"], b["tokens_per_step"])
                ratios.append(reached / own if reached is not None else float("inf"))
            med = statistics.median(ratios)
            step_time = statistics.median(b["tok_s"] / r["tok_s"] for r, b in zip(rs, base, strict=True))
            finals = ", ".join(f"{r['final']:.3f}" for r in rs)
            per_seed = ", ".join("-" if x == float("inf") else f"{x:.2f}" for x in ratios)
            reach = "not reached" if med == float("inf") else f"{med:.2f}"
            print(f"| {v} | {statistics.median(r['final'] for r in rs):.4f} (seeds {finals}) | "
                  f"{statistics.median(r['doc_loss'] for r in rs):.4f} | {reach} (seeds {per_seed}) | "
                  f"{step_time:.2f}x |")


if __name__ == "__main__":
    main()
