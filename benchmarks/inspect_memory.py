"""`inspect memory`'s estimate against the measured peak of real CPU training steps.

Each config runs one warm-up step and one measured step (forward, backward, clip, AdamW) in a fresh
process (see scratchllm.inspect.memory.measure_peak); prints predicted vs measured peak and the error.

    PYTHONPATH=src python benchmarks/inspect_memory.py
"""

from __future__ import annotations

import os
import platform

import torch

from scratchllm.inspect.memory import estimate, human, measure_peak, param_counts
from scratchllm.model.model import ModelConfig

CASES = [  # (model config, batch, seq_len, precision, activation checkpointing)
    (dict(vocab_size=4096, context_length=256, d_model=128, n_layers=4, n_heads=4), 8, 256, "fp32", "none"),
    (dict(vocab_size=4096, context_length=256, d_model=128, n_layers=4, n_heads=4, attn_impl="math"), 8, 256,
     "fp32", "none"),
    (dict(vocab_size=4096, context_length=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2), 8, 256,
     "fp32", "full"),
    (dict(vocab_size=4096, context_length=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2), 8, 256,
     "bf16", "none"),
    (dict(vocab_size=8192, context_length=128, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2), 2, 128,
     "fp32", "none"),
    (dict(vocab_size=4096, context_length=512, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2), 4, 512,
     "fp32", "none"),
]


def main() -> None:
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, load {os.getloadavg()}")
    print("| params | batch x seq | precision | attention | checkpointing | predicted | measured | error |")
    print("|---|---|---|---|---|---|---|---|")
    errors = []
    for kw, B, T, precision, ac in CASES:
        c = ModelConfig(**kw)
        predicted = estimate(c, B, T, precision, ac).peak
        measured = measure_peak(c, B, T, precision, ac)["peak"]
        err = (predicted - measured) / measured
        errors.append(abs(err))
        print(f"| {param_counts(c)['total'] / 1e6:.2f}M | {B} x {T} | {precision} | {c.attn_impl} | {ac} | "
              f"{human(predicted)} | {human(measured)} | {100 * err:+.1f}% |", flush=True)
    print(f"largest |error|: {100 * max(errors):.1f}%; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
