"""Serving under load: N concurrent streaming clients against 'scratchllm serve' on loopback.

Starts the real server in a subprocess (a model directory via --model, or a random --preset model
written to a temporary directory with a byte-level tokenizer), then runs --clients concurrent
clients, each sending --requests streaming chat or completion requests with the official openai
client's async API. Reports requests/s, time to first token (p50/p99), tokens/s and errors, and
checks /health latency while the server is busy. Bounded: every request has a timeout and the run
stops after --max-seconds.

    python benchmarks/serve.py [--clients 32] [--requests 2] [--max-tokens 32] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_model_dir(preset: str, out: Path) -> Path:
    import torch

    from scratchllm.config import load_config
    from scratchllm.model.model import ModelConfig, Transformer
    from scratchllm.tokenizer import train_bpe

    tok = train_bpe(["serving benchmark"], 256 + 7)  # bytes + the default special tokens
    cfg = load_config(ModelConfig, ROOT / preset, [f"vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    Transformer(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


async def client_loop(api, i: int, args: argparse.Namespace, ttfts: list, durations: list, tokens: list,
                      errors: list, deadline: float) -> None:
    for r in range(args.requests):
        if time.monotonic() > deadline:
            return
        t0 = time.perf_counter()
        first = None
        n = 0
        try:
            stream = await api.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": f"client {i} request {r}: say something"}],
                max_tokens=args.max_tokens, temperature=0.8, seed=i * 100 + r, stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    n += 1
            ttfts.append((first or time.perf_counter()) - t0)
            durations.append(time.perf_counter() - t0)
            tokens.append(n)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            errors.append(f"{type(e).__name__}: {e}")


async def run(args: argparse.Namespace, url: str) -> None:
    import openai

    api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=args.max_seconds)
    ttfts: list[float] = []
    durations: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    health: list[float] = []
    deadline = time.monotonic() + args.max_seconds

    async def probe() -> None:
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline and not done.is_set():
                t = time.perf_counter()
                await c.get(url + "/health", timeout=10)
                health.append(time.perf_counter() - t)
                await asyncio.sleep(0.25)

    done = asyncio.Event()
    t0 = time.perf_counter()
    prober = asyncio.create_task(probe())
    await asyncio.gather(*(client_loop(api, i, args, ttfts, durations, tokens, errors, deadline)
                           for i in range(args.clients)))
    wall = time.perf_counter() - t0
    done.set()
    await prober
    ok = len(durations)
    print(f"{args.clients} concurrent streaming chat clients x {args.requests} requests, max_tokens={args.max_tokens}:")
    print(f"  completed {ok}, errors {len(errors)}, wall {wall:.1f}s, {ok / wall:.2f} requests/s, "
          f"{sum(tokens) / wall:.1f} streamed chunks/s")
    print(f"  time to first token: p50 {percentile(ttfts, 0.5):.2f}s  p99 {percentile(ttfts, 0.99):.2f}s; "
          f"request latency p50 {percentile(durations, 0.5):.2f}s  p99 {percentile(durations, 0.99):.2f}s")
    if health:
        print(f"  /health while busy: p50 {1000 * statistics.median(health):.1f} ms, max {1000 * max(health):.1f} ms "
              f"({len(health)} probes)")
    for e in errors[:5]:
        print("  error:", e)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory with its tokenizer (default: random --preset model)")
    ap.add_argument("--preset", default="configs/model/1m.toml")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=240)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {platform.machine()}, python {platform.python_version()}, "
          f"server torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_model_dir(args.preset, Path(tmp) / "model"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        for key in ("SCRATCHLLM_API_KEY", "SCRATCHLLM_API_KEY_FILE"):  # a deployment's key is not for this server
            env.pop(key, None)
        server = subprocess.Popen(
            [sys.executable, "-m", "scratchllm", "serve", f"model={model}", f"port={port}", "model_name=bench",
             f"max_pending={max(64, args.clients)}", f"timeout_s={args.max_seconds}", f"threads={args.threads}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            asyncio.run(run(args, url))
        finally:
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
