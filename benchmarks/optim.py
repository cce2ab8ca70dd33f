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

The data are the embedded corpus tokenized with the BPE tokenizer: ``--data DIR`` reuses shards made by
``scratchllm data prepare``; without it the benchmark trains the default tokenizer (vocab 4096, the 1m
model's) and prepares the default data config into its work directory first (a few minutes), through
the CLI. ``--time-model`` repeats the step-time measurement on another model preset (e.g. the 10m one:
Newton-Schulz costs ~d^3 per matrix, forward/backward ~tokens * d^2, so the overhead depends on both).

    python benchmarks/optim.py [--data runs/data] [--steps 100] [--eval-every 10] [--seeds 3] \
        [--variants adamw,muon,packed,packed-mask] [--jobs 2] [--time-model configs/model/10m.toml]

No peer library runs these variants on this model: the comparison is between our own variants
(Muon itself is checked against torch.optim.Muon in tests/train/test_muon.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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
from scratchllm.corpus.shards import ShardDataset  # noqa: E402
from scratchllm.train.config import TrainConfig  # noqa: E402
from scratchllm.train.data import fixed_batches  # noqa: E402
from scratchllm.train.packing import DocumentPacker, fixed_packed_batches  # noqa: E402
from scratchllm.train.parallel import Dist  # noqa: E402
from scratchllm.train.loop import configure_torch  # noqa: E402
from scratchllm.train.pretrain import build_trainer  # noqa: E402
from scratchllm.train.tracking import read_metrics  # noqa: E402

# Every variant names its optimizer and batching: the preset's own choice may change (it is Muon since #20).
ADAMW, WINDOWS = "optim.name=adamw", "data.batching=windows"
VARIANTS = {
    "adamw": (ADAMW, WINDOWS),
    "muon": ("optim.name=muon", WINDOWS),
    "muon-fp32": ("optim.name=muon", 'optim.muon_ns_dtype="fp32"', WINDOWS),
    "packed": (ADAMW, "data.batching=packed"),
    "packed-mask": (ADAMW, "data.batching=packed", "data.doc_mask=true"),
    "muon-packed": ("optim.name=muon", "data.batching=packed"),
    "muon-packed-mask": ("optim.name=muon", "data.batching=packed", "data.doc_mask=true"),
}
NANOCHAT_CROP = "100% utilisation (no padding), ~35% of tokens cropped at T=2048 (nanochat/dataloader.py docstring)"


def prepare_data(work: Path) -> Path:
    """BPE shards of the embedded corpus: the default tokenizer and data configs, through the CLI."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cli = [sys.executable, "-m", "scratchllm"]
    tok, data = work / "tokenizer", work / "data"
    subprocess.run([*cli, "tokenizer", "train", "--config", str(ROOT / "configs/tokenizer/default.toml"),
                    f'output="{tok}"'], check=True, env=env)
    subprocess.run([*cli, "data", "prepare", "--config", str(ROOT / "configs/data/default.toml"),
                    f'tokenizer="{tok}"', f'out_dir="{data}"'], check=True, env=env)
    return data


def vocab_size(data: Path) -> int:
    return int(json.loads((data / "manifest.json").read_text())["vocab_size"])


def run(variant: str, seed: int, args, data: Path, work: Path, val_windows, val_docs) -> dict:
    out = work / f"{variant}-{seed}"
    over = [f'out_dir="{out}"', f'data.path="{data}"', f"model.vocab_size={vocab_size(data)}", f"seed={seed}",
            f"train.max_steps={args.steps}", f"schedule.warmup_steps={max(1, args.steps // 20)}",
            f"eval.interval={args.eval_every}", "eval.batches=0", "eval.sample_tokens=0", "eval.sample_interval=0",
            "checkpoint.interval=0", f"log.interval={max(1, min(10, args.steps // 4))}", "log.tensorboard=false", "log.progress=false",
            f"train.num_threads={args.threads}", *VARIANTS[variant]]
    cfg = load_config(TrainConfig, ROOT / "configs/train/cpu-tiny.toml", over)
    configure_torch(cfg)  # train.num_threads: 2 threads on a loaded 2-core machine ran several times slower than 1
    trainer = build_trainer(cfg, Dist())
    trainer.val_batches = val_windows  # one val set for all variants (the Trainer's own for packed is packed)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    val = [(r["step"], r["loss"]) for r in read_metrics(out, "val")]
    rates = [r["tokens_per_s"] for r in read_metrics(out, "train")]
    rates = rates[1:] or rates  # the first row includes the warm-up
    trainer.val_batches = val_docs
    doc_loss = trainer.evaluate()
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    return {"val": val, "final": val[-1][1], "doc_loss": doc_loss, "tok_s": statistics.median(rates),
            "tokens_per_step": tokens_per_step, "wall": wall}


def step_times(args, data: Path, work: Path, variants: list[str], rounds: int, model: str | None = None,
               batch: int | None = None) -> dict[str, float]:
    """Median seconds per training step (batch drawn + forward/backward + optimizer), the variants'
    steps alternating in this one process so that the machine's load hits them alike."""
    trainers = {}
    for v in variants:
        over = [f'out_dir="{work / ("time-" + v)}"', f'data.path="{data}"', "eval.batches=0", "eval.sample_tokens=0",
                "log.tensorboard=false", "log.progress=false", f"train.num_threads={args.threads}", *VARIANTS[v]]
        if model:
            over.append(f'model.preset="{Path(model).resolve()}"')
        over.append(f"model.vocab_size={vocab_size(data)}")
        if batch:
            over.append(f"train.batch_size={batch}")
        cfg = load_config(TrainConfig, ROOT / "configs/train/cpu-tiny.toml", over)
        configure_torch(cfg)
        trainers[v] = build_trainer(cfg, Dist())
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(rounds + 1):
        for v, t in trainers.items():
            t0 = time.perf_counter()
            t.train_step([t.train_source.next_batch()])
            if i:  # the first round warms up
                times[v].append(time.perf_counter() - t0)
    params = next(iter(trainers.values())).model.num_params()
    for t in trainers.values():
        t.close()
    return {"params": params, **{v: statistics.median(x) for v, x in times.items()}}


def print_step_times(label: str, st: dict[str, float], variants: list[str]) -> None:
    print(f"median time per step, {label} ({st['params']:,} parameters; alternating, one process): " + ", ".join(
        f"{v} {st[v] * 1e3:.0f} ms ({st[v] / st['adamw']:.3f}x)" for v in variants), flush=True)


def breakdown(model_preset: str, batch: int, seq: int, vocab: int, rounds: int) -> dict[str, float]:
    """Where a Muon step's time goes: median ms of forward/backward, the AdamW step, the Muon step
    (its AdamW part included), and Newton-Schulz alone on all of Muon's matrices - one matmul chain
    per matrix vs one batched chain per shape, bf16 vs fp32. Random tokens; the phases alternate."""
    import tomllib

    from scratchllm.model.model import ModelConfig, Transformer
    from scratchllm.train.config import OptimConfig
    from scratchllm.train.optim import build_optimizer, newton_schulz, newton_schulz_many

    mc = {**tomllib.loads(Path(model_preset).read_text()), "vocab_size": vocab}
    model = Transformer(ModelConfig(**mc))
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(2))
    kw = {"lr": 3e-3, "weight_decay": 0.1, "no_decay": ["norm", "bias", "embedding"]}
    opts = {"adamw step": build_optimizer(model, OptimConfig(**kw), "cpu"),
            "muon step": build_optimizer(model, OptimConfig(name="muon", **kw), "cpu")}
    mats = list(opts["muon step"].param_groups[0]["params"])
    phases = {
        "NS bf16, one matrix at a time": lambda: [newton_schulz(p.grad) for p in mats],
        "NS bf16, batched per shape": lambda: newton_schulz_many([p.grad for p in mats]),
        "NS fp32, one matrix at a time": lambda: [newton_schulz(p.grad, dtype=torch.float32) for p in mats],
        "NS fp32, batched per shape": lambda: newton_schulz_many([p.grad for p in mats], dtype=torch.float32),
    }
    times: dict[str, list[float]] = {"forward+backward": [], **{k: [] for k in opts}, **{k: [] for k in phases}}
    for i in range(rounds + 1):
        model.zero_grad()
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        dt = {"forward+backward": time.perf_counter() - t0}
        for k, f in [*((k, o.step) for k, o in opts.items()), *phases.items()]:
            t0 = time.perf_counter()
            f()
            dt[k] = time.perf_counter() - t0
        if i:  # the first round warms up
            for k, v in dt.items():
                times[k].append(v)
    shapes = sorted({tuple(p.shape) for p in mats})
    print(f"breakdown, {model_preset} (vocab {vocab}, {model.num_params():,} parameters, {len(mats)} Muon "
          f"matrices of shapes {shapes}), batch {batch} x seq {seq}, median of {rounds}:")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = med["forward+backward"] + med["adamw step"]
    for k, v in med.items():
        print(f"  {k:32s} {v:9.1f} ms  ({v / base:6.1%} of an AdamW step)")
    print(f"  -> Muon step / AdamW step (forward+backward + optimizer): "
          f"{(med['forward+backward'] + med['muon step']) / base:.3f}x", flush=True)
    return med


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


def spread(xs: list[float], fmt: str = "{:.3f}") -> str:
    """median [min-max] over the seeds; "-" for a seed that never reached the target."""
    finite = [x for x in xs if x != float("inf")]
    med = statistics.median(xs)
    text = "not reached" if med == float("inf") else fmt.format(med)
    if len(xs) > 1 and finite:
        hi = "-" if len(finite) < len(xs) else fmt.format(max(finite))
        text += f" [{fmt.format(min(finite))}-{hi}]"
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="BPE shards from `scratchllm data prepare` (default: make them)")
    p.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write every run's results here")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads threads)")
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--variants", default="adamw,muon,packed,packed-mask")
    p.add_argument("--time-rounds", type=int, default=20, help="alternating steps per variant for the step time")
    p.add_argument("--time-model", help="also time the variants on this model preset (cpu-tiny's batch and seq)")
    p.add_argument("--time-batch", type=int, help="batch size for the --time-model measurement")
    p.add_argument("--only-time", action="store_true", help="just the step times")
    p.add_argument("--baseline", type=Path, help="take the adamw runs from this --json of an earlier run "
                                                 "(same --steps/--eval-every/--seeds/--val-batches and data)")
    p.add_argument("--breakdown", action="append", default=[], metavar="MODEL[:BATCH]",
                   help="time the parts of a Muon step on this model preset (seq 128; repeatable), then exit")
    args = p.parse_args()
    variants = args.variants.split(",")
    if variants[0] != "adamw":
        p.error("the first variant must be adamw (the baseline)")

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, python {platform.python_version()}; load average before: {os.getloadavg()}")
    if args.breakdown:
        torch.set_num_threads(args.threads)
        for spec in args.breakdown:
            model, _, batch = spec.partition(":")
            breakdown(model, int(batch or 16), 128, 4096, args.time_rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = args.data.resolve() if args.data else prepare_data(work)
        packer = DocumentPacker(ShardDataset(data, "train"), 128, seed=0)
        s = packer.stats()
        print(f"data: {data} (vocab {vocab_size(data)}); packing (seq 128, buffer 1000): {len(packer.docs):,} "
              f"documents -> {s['rows']:,} rows, padding {s['padding_share']:.2%}, BOS {s['bos_share']:.2%}, "
              f"{s['split_documents']:,} documents split across rows; nanochat: {NANOCHAT_CROP}", flush=True)
        st = step_times(args, data, work, variants, args.time_rounds) if args.time_rounds else {}
        if st:
            print_step_times("cpu-tiny", st, variants)
        if args.time_model:
            muon = [v for v in variants if v in ("adamw", "muon", "muon-fp32")]
            big = step_times(args, data, work, muon, args.time_rounds, args.time_model, args.time_batch)
            print_step_times(f"{args.time_model}, batch {args.time_batch or 16} x seq 128", big, muon)
        if args.only_time:
            return
        val_windows = fixed_batches(data, "val", args.val_batches, 16, 128, 99)
        val_docs = fixed_packed_batches(data, "val", args.val_batches, 16, 128, 99, doc_mask=True)
        results: dict[str, list[dict]] = {v: [None] * args.seeds for v in variants}
        jobs = [(v, seed) for seed in range(args.seeds) for v in variants  # variants interleaved: load hits all
                if not (args.baseline and v == "adamw")]
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
            futures = {pool.submit(run, v, 1000 + seed, args, data, work, val_windows, val_docs): (v, seed)
                       for v, seed in jobs}
            for f in as_completed(futures):
                v, seed = futures[f]
                r = results[v][seed] = f.result()
                print(f"  seed {seed} {v:18s} final val {r['final']:.4f}  per-doc val {r['doc_loss']:.4f}  "
                      f"{r['tok_s']:,.0f} tok/s  ({r['wall']:.0f} s)  val curve {r['val']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "packing": s,
                                             "step_times": st, "results": results}, indent=1))
        if args.baseline:  # read only now: the baseline's run may finish while these run
            results["adamw"] = json.loads(args.baseline.read_text())["results"]["adamw"]
        base = results["adamw"]
        tokens = args.steps * base[0]["tokens_per_step"]
        print(f"\n{args.steps} steps = {tokens:,} tokens per run; medians [min-max] over {args.seeds} seeds; "
              f"load average after: {os.getloadavg()}")
        print("| variant | val loss (windows) | per-document val loss | tokens to AdamW's final val, x AdamW "
              "| time per step vs AdamW (in the runs) |")
        print("|---|---|---|---|---|")
        for v in variants:
            rs = results[v]
            ratios = []
            for r, b in zip(rs, base, strict=True):  # per seed: against the same seed's AdamW run
                reached = tokens_to_reach(r["val"], b["final"], r["tokens_per_step"])
                own = tokens_to_reach(b["val"], b["final"], b["tokens_per_step"])
                ratios.append(reached / own if reached is not None else float("inf"))
            slow = [b["tok_s"] / r["tok_s"] for r, b in zip(rs, base, strict=True)]
            print(f"| {v} | {spread([r['final'] for r in rs], '{:.4f}')} | {spread([r['doc_loss'] for r in rs], '{:.4f}')} "
                  f"| {spread(ratios, '{:.2f}')} | {spread(slow, '{:.2f}x')} |")


if __name__ == "__main__":
    main()
