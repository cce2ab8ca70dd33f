"""Training throughput vs torch CPU threads (train.num_threads), on the cpu-tiny model shape.

    PYTHONPATH=src python benchmarks/train_threads.py [--steps 20] [--rounds 5] [--threads 1,2,0]

Each round times ``--steps`` optimizer steps (forward, backward, AdamW) at every thread count in turn,
interleaved so that a change in the machine's load hits every setting alike; prints the median and the
spread (min-max) of tokens/s per setting and the ratios to 1 thread. 0 is torch's default (one per core).
Random token batches: the data does not change the arithmetic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2,0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()

    from scratchllm.config import load_config
    from scratchllm.model.model import ModelConfig, Transformer

    default_threads = torch.get_num_threads()
    cfg = load_config(ModelConfig, "model/1m")  # the cpu-tiny preset's model
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    settings = [int(t) for t in args.threads.split(",")]
    rates: dict[int, list[float]] = {t: [] for t in settings}

    def steps(n: int) -> None:
        for _ in range(n):
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    steps(3)  # warm-up
    for _ in range(args.rounds):
        for t in settings:
            torch.set_num_threads(t or default_threads)
            start = time.perf_counter()
            steps(args.steps)
            rates[t].append(args.steps * args.batch * args.seq / (time.perf_counter() - start))
    print(f"cores {os.cpu_count()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} "
          f"(1 min), model 1m ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M), "
          f"batch {args.batch}x{args.seq}, {args.rounds} rounds of {args.steps} steps")
    base = statistics.median(rates[settings[0]])
    for t in settings:
        r = rates[t]
        label = f"{t} (torch default: {default_threads})" if t == 0 else str(t)
        print(f"num_threads={label:24s} median {statistics.median(r):8.0f} tok/s  "
              f"min {min(r):8.0f}  max {max(r):8.0f}  ratio to {settings[0]}: {statistics.median(r) / base:.2f}")


if __name__ == "__main__":
    main()
