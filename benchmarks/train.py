"""Training throughput: our Trainer loop vs a nanoGPT-style reference loop, same model and batches.

Both train the same ``Transformer`` (our model; the model itself is benchmarked against Hugging Face
in benchmarks/model.py) on random windows of the same token shards, with AdamW (two parameter
groups), a warmup+cosine schedule, gradient clipping and gradient accumulation:

* ours:      ``scratchllm.train`` - ``Trainer.fit()`` end to end (data source, schedule, step, NaN guard,
             loss/norm reduction, JSONL metrics); tokens/s is the Trainer's own figure for a window of
             ``--steps`` steps after ``--steps`` warm-up steps (eval and checkpoint time excluded);
* reference: nanoGPT's train.py loop (get_batch from a memmap, autocast context, loss / accum,
             clip_grad_norm_, optimizer.step, zero_grad(set_to_none=True), loss.item() at log steps),
             timed the same way.

Runs alternate ours / reference ``--repeats`` times (other work on the machine hits both alike);
we report medians. Then peak memory for one training step without and with activation
checkpointing (CUDA: torch.cuda.max_memory_allocated; CPU: live tensors tracked by PyTorch's
MemTracker), and on CUDA the MFU against the GPU's bf16 peak.

    python benchmarks/train.py [--model configs/model/1m.toml] [--batch 16] [--seq 128] [--steps 10]
    python benchmarks/train.py --device cuda --model configs/model/125m.toml --seq 1024 --batch 16 \\
        --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchllm.config import load_config, read_toml  # noqa: E402
from scratchllm.corpus.shards import ShardWriter, split_summary, token_dtype, write_manifest  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.train.config import TrainConfig  # noqa: E402
from scratchllm.train.loop import PEAK_BF16_FLOPS  # noqa: E402
from scratchllm.train.parallel import Dist, apply_ac  # noqa: E402
from scratchllm.train.pretrain import build_trainer  # noqa: E402
from scratchllm.train.tracking import read_metrics  # noqa: E402

LR, WARMUP, CLIP, WD, BETAS = 1e-3, 5, 1.0, 0.1, (0.9, 0.95)


def write_random_shards(out: Path, vocab: int, tokens: int) -> Path:
    """One train and one val shard of uniformly random tokens (throughput does not depend on content)."""
    rng = np.random.default_rng(0)
    dtype = token_dtype(vocab)
    splits = {}
    for split, n in (("train", tokens), ("val", tokens // 10)):
        with ShardWriter(out, split, dtype, n + 1, ["random"]) as w:
            w.add(rng.integers(0, vocab, n), "random")
        splits[split] = split_summary(w.shards)
    write_manifest(out, {"dtype": dtype.name, "vocab_size": vocab, "eos_id": 0, "bos_id": None, "tokenizer": "",
                         "domains": ["random"], "splits": splits})
    return out


# --- ours ---------------------------------------------------------------------------------------------


def ours(args, model_table: dict, data: Path, out: Path) -> float:
    overrides = [
        f'out_dir="{out}"', f'data.path="{data}"', f"data.seq_len={args.seq}", f"train.batch_size={args.batch}",
        f"train.grad_accum={args.grad_accum}", f"train.max_steps={2 * args.steps}", f"train.device=\"{args.device}\"",
        f'train.precision="{args.precision}"', f"train.compile={str(args.compile).lower()}",
        f'train.activation_checkpointing="{args.ac}"', f"optim.lr={LR}", f"optim.grad_clip={CLIP}",
        f"optim.weight_decay={WD}", f"schedule.warmup_steps={WARMUP}", "eval.batches=0", "eval.sample_tokens=0",
        "checkpoint.interval=0", f"log.interval={args.steps}", "log.tensorboard=false", "log.progress=false",
    ] + [f"model.{k}={_toml(v)}" for k, v in model_table.items()]
    cfg = load_config(TrainConfig, None, overrides)
    torch.manual_seed(0)
    trainer = build_trainer(cfg, Dist())
    trainer.fit()
    return read_metrics(out, "train")[-1]["tokens_per_s"]  # the second window: steps after the warm-up


def _toml(v) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)


# --- reference: nanoGPT's train.py loop ---------------------------------------------------------------


def reference(args, model_cfg: ModelConfig, data: Path) -> float:
    device, device_type = args.device, "cuda" if args.device.startswith("cuda") else "cpu"
    train_data = np.memmap(data / "train_00000.bin", dtype=token_dtype(model_cfg.vocab_size), mode="r")

    def get_batch():
        ix = torch.randint(len(train_data) - args.seq, (args.batch,))
        x = torch.stack([torch.from_numpy(train_data[i : i + args.seq].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(train_data[i + 1 : i + 1 + args.seq].astype(np.int64)) for i in ix])
        if device_type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    torch.manual_seed(0)
    model = Transformer(model_cfg).to(device)
    apply_ac(model, args.ac)
    # configure_optimizers: decay 2D+ tensors, not 1D (norm gains); fused AdamW when on CUDA
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WD},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=device_type == "cuda" or None)
    if args.compile:
        model = torch.compile(model)
    ptdtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ctx = contextlib.nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    max_iters = 2 * args.steps

    def get_lr(it):
        if it < WARMUP:
            return LR * (it + 1) / (WARMUP + 1)
        ratio = (it - WARMUP) / (max_iters - WARMUP)
        return 0.1 * LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - 0.1 * LR)

    X, Y = get_batch()
    t0 = None
    for it in range(max_iters):
        if it == args.steps:  # warm-up done: start the clock
            if device_type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        lr = get_lr(it)
        for g in optimizer.param_groups:
            g["lr"] = lr
        for _ in range(args.grad_accum):
            with ctx:
                _, loss = model(X, Y)
                loss = loss / args.grad_accum
            X, Y = get_batch()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (it + 1) % args.steps == 0:
            _lossf = loss.item() * args.grad_accum  # nanoGPT syncs only at log steps
    if device_type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.grad_accum * args.batch * args.seq / (time.perf_counter() - t0)


# --- memory with and without activation checkpointing -----------------------------------------------------


def peak_memory(args, model_cfg: ModelConfig, ac: str) -> int:
    """Peak bytes during one forward + backward (+ AdamW step) of one micro-batch."""
    torch.manual_seed(0)
    model = Transformer(model_cfg).to(args.device)
    apply_ac(model, ac)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=args.device.startswith("cuda") or None)
    x = torch.randint(0, model_cfg.vocab_size, (args.batch, args.seq + 1), device=args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    ctx = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step():
        with ctx:
            _, loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if args.device.startswith("cuda"):
        step()  # allocate optimizer state first, as in steady-state training
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated()
    from torch.distributed._tools.mem_tracker import MemTracker

    step()
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="configs/model/1m.toml", help="model preset (the shape both loops train)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after as many warm-up steps)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating ours/reference runs")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--ac", default="none", help="activation checkpointing in the throughput runs")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = {**read_toml(ROOT / args.model if not Path(args.model).exists() else args.model)}
    table["context_length"] = max(table.get("context_length", args.seq), args.seq)
    model_cfg = ModelConfig(**table)
    model_cfg.validate()
    n_params = Transformer(model_cfg).num_params()

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print(f"# model {args.model}: {n_params / 1e6:.2f}M params; batch {args.batch} x seq {args.seq} x accum "
          f"{args.grad_accum}; {args.precision}{', compile' if args.compile else ''}; AC {args.ac}; device {args.device}")
    results: dict[str, list[float]] = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_shards(Path(tmp) / "data", model_cfg.vocab_size, 2_000_000)
        for r in range(args.repeats):
            first_ours = r % 2 == 0  # alternate who goes first, too
            for side in (("ours", "reference") if first_ours else ("reference", "ours")):
                if side == "ours":
                    tok_s = ours(args, table, data, Path(tmp) / f"run{r}")
                else:
                    tok_s = reference(args, model_cfg, data)
                results[side].append(tok_s)
                print(f"  repeat {r + 1}/{args.repeats} {side:9s} {tok_s:10,.0f} tokens/s", flush=True)
    o, ref = statistics.median(results["ours"]), statistics.median(results["reference"])
    print(f"\nmedian tokens/s: ours {o:,.0f}  nanoGPT-style {ref:,.0f}  ratio {o / ref:.3f}x")
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 0.0)
        flops = Transformer(model_cfg).flops_per_token(args.seq)
        if peak:
            print(f"MFU vs {name} bf16 peak {peak / 1e12:.0f} TFLOP/s: ours {flops * o / peak:.1%}, "
                  f"reference {flops * ref / peak:.1%}")
    if not args.skip_memory:
        what = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "MemTracker peak, live tensors"
        base = peak_memory(args, model_cfg, "none")
        print(f"\npeak memory of one training step ({what}):")
        print(f"  activation checkpointing none   {base / 2**20:9.1f} MiB")
        for mode in ("every-2", "full"):
            m = peak_memory(args, model_cfg, mode)
            print(f"  activation checkpointing {mode:7s} {m / 2**20:9.1f} MiB  ({m / base:.2f}x)")


if __name__ == "__main__":
    main()
