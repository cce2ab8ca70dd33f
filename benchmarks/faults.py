"""Timings the tests no longer assert (they check behaviour only), and the cost of the fault checks.

* ``/health`` latency while a long completion streams (the test only checks it is answered);
* how long past its timeout the sandbox takes to kill a CPU-bound candidate (the test only checks
  that it is killed);
* what the training-time integrity checks cost: the token-id bound check per batch, against the
  batch draw it guards, and the checksum pass (background, once per run) and checksum check on
  model loading, as throughput.

    python benchmarks/faults.py [--repeats 5]

Medians over ``--repeats`` runs; no reference library does these things, so there is no peer.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchllm.corpus.shards import ShardDataset, ShardWriter, split_summary, write_manifest  # noqa: E402


def median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:,.1f} ms (min {min(xs) * 1e3:,.1f}, max {max(xs) * 1e3:,.1f})"


def health_during_stream(repeats: int) -> list[float]:
    import httpx
    import uvicorn

    from scratchllm.model.model import ModelConfig, Transformer
    from scratchllm.serve.config import ServeConfig
    from scratchllm.serve.server import create_app
    from scratchllm.tokenizer import train_bpe

    tok = train_bpe(["hello world"], 256 + 7)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, context_length=256, d_model=64, n_layers=2,
                                    n_heads=4, d_ff=128, init_std=0.3)).eval()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(model_name="m"), model, tok), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    times = []
    try:
        body = {"model": "m", "prompt": "a", "max_tokens": 200, "temperature": 0, "stream": True}
        for _ in range(repeats):
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
                next(r.iter_lines())
                t = time.perf_counter()
                assert httpx.get(url + "/health", timeout=60).status_code == 200
                times.append(time.perf_counter() - t)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return times


def sandbox_kill(repeats: int, timeout: float = 1.5) -> list[float]:
    from scratchllm.eval.sandbox import run_python

    late = []
    for _ in range(repeats):
        t = time.perf_counter()
        assert run_python("while True:\n    pass\n", timeout=timeout).status == "timeout"
        late.append(time.perf_counter() - t - timeout)
    return late


def shard_checks(repeats: int, tokens: int = 20_000_000) -> None:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        rng = np.random.default_rng(0)
        with ShardWriter(out, "train", np.dtype(np.uint16), 5_000_000, ["t"]) as w:
            for _ in range(tokens // 1_000_000):
                w.add(rng.integers(0, 32000, 1_000_000), "t")
        write_manifest(out, {"dtype": "uint16", "vocab_size": 32000, "eos_id": 0, "domains": ["t"],
                             "splits": {"train": split_summary(w.shards)}})
        ds = ShardDataset(out, "train")
        rows = np.stack([ds.shards[0][i * 1000: i * 1000 + 1025] for i in range(32)])
        n = 2000
        check, draw = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                ds._check_ids(rows, np.zeros(32, dtype=np.int64), np.zeros(32, dtype=np.int64))
            check.append((time.perf_counter() - t) / n)
            t = time.perf_counter()
            for _ in range(n // 10):
                ds.sample_batch(32, 1024)
            draw.append((time.perf_counter() - t) / (n // 10))
        print(f"token-id bound check, batch 32 x 1024: {statistics.median(check) * 1e6:,.1f} us per batch; "
              f"the batch draw itself (incl. the check): {statistics.median(draw) * 1e6:,.1f} us "
              f"({statistics.median(check) / statistics.median(draw):.1%})")
        size = sum(p.stat().st_size for p in out.glob("*.bin"))
        passes = []
        for _ in range(repeats):
            ds = ShardDataset(out, "train")
            t = time.perf_counter()
            ds.start_verification()
            ds.check_verified(wait=True)
            passes.append(time.perf_counter() - t)
        print(f"shard checksum pass (background, once per run): {size / 2**20:,.0f} MiB in "
              f"{statistics.median(passes):.2f} s = {size / 2**20 / statistics.median(passes):,.0f} MiB/s")
        data = b"\0" * (64 << 20)
        hashes = []
        for _ in range(repeats):
            t = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            hashes.append(time.perf_counter() - t)
        print(f"checksum check on model load: sha256 of 64 MiB in memory {statistics.median(hashes):.3f} s "
              f"= {64 / statistics.median(hashes):,.0f} MiB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"/health during a stream: {median_ms(health_during_stream(args.repeats))}")
    print(f"sandbox kill, past a 1.5 s timeout: {median_ms(sandbox_kill(args.repeats))}")
    shard_checks(args.repeats)


if __name__ == "__main__":
    main()
