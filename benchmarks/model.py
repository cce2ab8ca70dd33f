"""Training throughput of our model vs the same-shape Hugging Face LlamaForCausalLM (CPU, fp32).

Both models get identical weights (exported with scratchllm.model.hf) and run forward + backward
(cross-entropy loss) on the same batches. Measurements alternate ours / HF step by step so that
load from other processes on the machine affects both sides alike; we report medians. Then the
same with ``torch.compile`` on both sides.

    python benchmarks/model.py [--config configs/model/10m.toml] [--batch 8] [--seq 256] [--steps 10]
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

from scratchllm.config import load_config  # noqa: E402
from scratchllm.model.hf import export_hf  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402


def ours_step(model: Transformer, idx: torch.Tensor) -> None:
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()


def hf_step(model: torch.nn.Module, idx: torch.Tensor) -> None:
    # labels are shifted inside HF's loss; give it the same T-1 positions as ours
    model(input_ids=idx[:, :-1], labels=idx[:, :-1]).loss.backward()


def measure(sides: dict, idx: torch.Tensor, steps: int, warmup: int, label: str) -> dict[str, float]:
    """Alternate the sides step by step; return median tokens/s per side."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    tokens = idx.size(0) * (idx.size(1) - 1)
    total = warmup + steps
    for i in range(total):
        for name, (model, step) in sides.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step(model, idx)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
        print(f"\r  {label}: step {i + 1}/{total}" + (" (warm-up)" if i < warmup else ""), end="", flush=True)
    print()
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/model/10m.toml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = load_config(ModelConfig, args.config)
    ours = Transformer(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").train()
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    with torch.no_grad():  # same weights, same function: check before timing anything
        diff = (ours(idx[:, :-1]) - hf(idx[:, :-1]).logits).abs().max().item()
    print(f"scratchllm model benchmark: {Path(args.config).name}, {ours.num_params() / 1e6:.2f}M params, "
          f"batch {args.batch} x seq {args.seq}, fp32, forward+backward")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; max |logit diff| {diff:.1e}")

    rows = []
    eager = measure({"ours": (ours, ours_step), "hf": (hf, hf_step)}, idx, args.steps, args.warmup, "eager")
    rows.append(("eager", eager))
    if not args.no_compile:
        compiled = {"ours": (torch.compile(ours), ours_step), "hf": (torch.compile(hf), hf_step)}
        rows.append(("torch.compile", measure(compiled, idx, args.steps, args.warmup, "compiled")))

    print(f"{'mode':<14} {'ours tok/s':>11} {'HF tok/s':>10} {'ours/HF':>8}")
    for mode, r in rows:
        print(f"{mode:<14} {r['ours']:>11,.0f} {r['hf']:>10,.0f} {r['ours'] / r['hf']:>7.2f}x")


if __name__ == "__main__":
    main()
