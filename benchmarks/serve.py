"""Serving under load: N concurrent streaming clients against 'scratchllm serve' on loopback.

Starts the real server in a subprocess (a model directory via --model, or a random --preset model
written to a temporary directory with a byte-level tokenizer), then, for each --concurrency level,
runs that many concurrent clients, each sending --requests streaming completions (temperature 0.8,
seeded, ignore_eos, --max-tokens each; a light httpx client that reads the server-sent events with
json.loads, so the client process costs little of the shared CPU). Reports aggregate generated
tokens/s, requests/s, time to first token p50/p99 and /health latency while busy. Bounded: every
request has a timeout and each level stops after --max-seconds.

--baseline-src DIR also starts another checkout's server (e.g. the sequential engine of the previous
commit: ``git archive <commit> src | tar -x -C DIR``); both stay up and the levels alternate between
them, --repeats times, so load from other processes hits both alike; medians and ratios (this engine /
baseline) are printed.

--peer-vllm PYTHON also starts vLLM's OpenAI server (its CPU build, installed in a virtual environment of
its own outside this checkout: /work/shared/peers.md) on the same model exported with 'scratchllm export
hf', fp32, and runs the same clients against it in the same alternation; its caches go to --peer-cache.

    python benchmarks/serve.py [--presets 1m,10m] [--concurrency 1,8,32,64] [--requests 2] [--baseline-src DIR]
                               [--peer-vllm /work/peer-vllm/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SERVER_PIDS: dict[str, int] = {}  # url -> server process (its CPU time is measured per level)


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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process pid and every live descendant (vLLM runs three processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (parent, _) in stats.items() if parent == p]
    return total


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


async def client_loop(http: httpx.AsyncClient, url: str, i: int, args: argparse.Namespace, stats: dict,
                      deadline: float) -> None:
    for r in range(args.requests):
        if time.monotonic() > deadline:
            return
        t0 = time.perf_counter()
        first, chunks, finish = None, 0, None
        body = {"model": "bench", "prompt": f"client {i} request {r}: once upon a time", "stream": True,
                "max_tokens": args.max_tokens, "temperature": 0.8, "seed": i * 100 + r, "ignore_eos": True}
        if args.unseeded:
            del body["seed"]
        try:
            async with http.stream("POST", url + "/v1/completions", json=body, timeout=args.max_seconds) as resp:
                resp.raise_for_status()
                buf = b""
                # SSE lines end only at \n (or \r): not aiter_lines(), which also splits at U+2028 and
                # the like, characters a random model's text contains raw inside the JSON
                async for data in resp.aiter_raw():
                    *lines, buf = (buf + data).split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data: {"):
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            raise RuntimeError(event["error"]["message"])
                        for c in event["choices"]:
                            if c.get("text"):
                                first = first or time.perf_counter()
                                chunks += 1
                            finish = c.get("finish_reason") or finish
            end = time.perf_counter()
            stats["ttft"].append((first or end) - t0)
            stats["latency"].append(end - t0)
            # a "length" finish generated exactly max_tokens; otherwise count the chunks (a lower bound:
            # tokens whose text is held back, e.g. part of a UTF-8 character, arrive merged)
            stats["tokens"].append(args.max_tokens if finish == "length" else chunks)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            stats["errors"].append(f"{type(e).__name__}: {e}")


async def run_level(args: argparse.Namespace, url: str, clients: int, unseeded: bool = False) -> dict:
    args = argparse.Namespace(**{**vars(args), "unseeded": unseeded})
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8))
    stats: dict = {"ttft": [], "latency": [], "tokens": [], "errors": [], "health": []}
    deadline = time.monotonic() + args.max_seconds
    done = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline and not done.is_set():
                t = time.perf_counter()
                await c.get(url + "/health", timeout=10)
                stats["health"].append(time.perf_counter() - t)
                await asyncio.sleep(0.25)

    pid = SERVER_PIDS.get(url)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    prober = asyncio.create_task(probe())
    await asyncio.gather(*(client_loop(http, url, i, args, stats, deadline) for i in range(clients)))
    stats["wall"] = time.perf_counter() - t0
    stats["cpu"] = cpu_seconds(pid) - cpu0 if pid else float("nan")
    done.set()
    await prober
    await http.aclose()
    return stats


def summary(runs: list[dict]) -> dict:
    """Medians over repeated runs of one level."""
    def med(f: Any) -> float:
        return statistics.median(f(st) for st in runs)

    errors = [e for st in runs for e in st["errors"]]
    return {"ok": sum(len(st["latency"]) for st in runs), "errors": len(errors),
            "tok_s": med(lambda st: sum(st["tokens"]) / st["wall"]),
            "req_s": med(lambda st: len(st["latency"]) / st["wall"]),
            "ttft50": med(lambda st: percentile(st["ttft"], 0.5)),
            "ttft99": med(lambda st: percentile(st["ttft"], 0.99)),
            "cores": med(lambda st: st["cpu"] / st["wall"]),  # the server's CPU seconds per second
            "cpu_ms_tok": med(lambda st: 1000 * st["cpu"] / max(1, sum(st["tokens"]))),
            "health_max_ms": 1000 * max((h for st in runs for h in st["health"]), default=float("nan")),
            "first_error": errors[0] if errors else ""}


@contextlib.contextmanager
def server(args: argparse.Namespace, model: str, src: Path, max_clients: int) -> Any:
    """The server of checkout src on model, until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(src / "src")}
    for key in ("SCRATCHLLM_API_KEY", "SCRATCHLLM_API_KEY_FILE"):  # a deployment's key is not for this server
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchllm", "serve", f"model={model}", f"port={port}", "model_name=bench",
         f"max_pending={max(64, max_clients)}", f"timeout_s={args.max_seconds}", f"threads={args.threads}"],
        cwd=src, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url + "/ready", 120, 0.2, f"the server of {src} did not start")
        SERVER_PIDS[url] = proc.pid
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float, poll_s: float, failure: str) -> None:
    """Poll ``url`` until it answers 200; stop with ``failure`` if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(failure)
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)


@contextlib.contextmanager
def vllm_server(args: argparse.Namespace, model: str, tmp: Path) -> Any:
    """vLLM's OpenAI server (args.peer_vllm's Python) on model exported to Hugging Face format; yields its URL."""
    hf = tmp / (Path(model).name + "-hf")
    subprocess.run([sys.executable, "-m", "scratchllm", "export", "hf", model, "--out", str(hf)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stdout=subprocess.DEVNULL)
    cache = Path(args.peer_cache)
    for d in ("vllm", "inductor", "tmp", "home"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TMPDIR": str(cache / "tmp"),
           "HF_HOME": str(cache / "home"), "XDG_CACHE_HOME": str(cache / "home")}
    env.pop("PYTHONPATH", None)
    log = open(cache / f"vllm-{Path(model).name}.log", "w")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen(
        [args.peer_vllm, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--max-model-len", "256", "--served-model-name", "bench"],
        cwd=cache, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:  # vLLM compiles at start-up: minutes on a busy machine
        wait_until_up(proc, url + "/v1/models", args.peer_start_s, 1.0, f"vLLM did not start; its log: {log.name}")
        SERVER_PIDS[url] = proc.pid
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory with its tokenizer (default: random --presets models)")
    ap.add_argument("--presets", default="1m,10m", help="model presets (configs/model/NAME.toml), comma-separated")
    ap.add_argument("--concurrency", default="1,8,32,64", help="concurrent streaming clients per level")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each level per server (medians)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=240, help="per level")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--baseline-src", help="another checkout (its src/) to compare against in the same run")
    ap.add_argument("--peer-vllm", metavar="PYTHON", help="the Python of a virtual environment with vllm-cpu")
    ap.add_argument("--peer-cache", default=str(Path(tempfile.gettempdir()) / "scratchllm-bench-vllm"),
                    help="vLLM's caches and logs (outside the checkout)")
    ap.add_argument("--peer-start-s", type=float, default=900, help="how long vLLM may take to start")
    args = ap.parse_args()
    import torch

    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"torch {torch.__version__}, {platform.machine()}, python {platform.python_version()}, "
          f"server torch threads {args.threads}, load average {os.getloadavg()[0]:.1f} at start")
    servers = {"engine": ROOT} | ({"baseline": Path(args.baseline_src).resolve()} if args.baseline_src else {})
    with tempfile.TemporaryDirectory() as tmp:
        models = {"model": args.model} if args.model else {
            p: str(make_model_dir(f"configs/model/{p}.toml", Path(tmp) / p)) for p in args.presets.split(",")}
        for name, model in models.items():
            with contextlib.ExitStack() as stack:
                urls = {k: stack.enter_context(server(args, model, src, max(levels))) for k, src in servers.items()}
                if args.peer_vllm:
                    urls["vllm"] = stack.enter_context(vllm_server(args, model, Path(tmp)))
                runs: dict[str, dict[int, list]] = {k: {c: [] for c in levels} for k in urls}
                # vLLM 0.32's CPU worker dies on seeded requests whose prefill is split across steps
                # ("CPU Generator does not use offset"): its requests go unseeded (the same work: ignore_eos)
                unseeded = {k: k == "vllm" for k in urls}
                for k, url in urls.items():  # warm-up, not measured: first-request imports, allocations
                    asyncio.run(run_level(argparse.Namespace(**{**vars(args), "requests": 1}), url, 2, unseeded[k]))
                for _ in range(args.repeats):
                    for c in levels:
                        for k, url in urls.items():  # alternate: other processes' load hits both alike
                            runs[k][c].append(asyncio.run(run_level(args, url, c, unseeded[k])))
            results = {k: {c: summary(v) for c, v in by.items()} for k, by in runs.items()}
            print(f"\n{name}: {args.requests} streaming completions per client, max_tokens={args.max_tokens}, "
                  f"medians of {args.repeats} runs, load average {os.getloadavg()[0]:.1f} after")
            print("| server | clients | ok/errors | tokens/s | requests/s | TTFT p50 | TTFT p99 | /health max | "
                  "server cores busy | server CPU ms/token |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for k, by_level in results.items():
                for c, r in by_level.items():
                    print(f"| {k} | {c} | {r['ok']}/{r['errors']} | {r['tok_s']:.0f} | {r['req_s']:.2f} | "
                          f"{r['ttft50']:.3f} s | {r['ttft99']:.3f} s | {r['health_max_ms']:.0f} ms | "
                          f"{r['cores']:.2f} | {r['cpu_ms_tok']:.2f} |")
            for other in ("baseline", "vllm"):
                if other in results:
                    for c in levels:
                        e, b = results["engine"][c], results[other][c]
                        print(f"  {c} clients: engine/{other} tokens/s {e['tok_s'] / b['tok_s']:.2f}x, "
                              f"requests/s {e['req_s'] / b['req_s']:.2f}x, "
                              f"TTFT p99 {e['ttft99'] / b['ttft99']:.2f}x of {other}'s, "
                              f"server CPU per token {e['cpu_ms_tok'] / b['cpu_ms_tok']:.2f}x of {other}'s")
            for k, by_level in results.items():
                for c, r in by_level.items():
                    if r["first_error"]:
                        print(f"  {k} {c} clients, first error: {r['first_error']}")


if __name__ == "__main__":
    main()
