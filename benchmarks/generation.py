"""Generation inside the other stages, before/after: eval's GSM8K + HumanEval wall time and one GRPO
rollout step, this checkout vs a baseline checkout (e.g. the commit before the inference engine:
``git archive <commit> src | tar -x -C DIR``), alternating runs, medians.

A random model of the preset with a byte-level tokenizer (weights do not change the speed; the
outputs are nonsense, so every request runs to max_tokens unless a random stop token comes up).
Warm: each worker process first runs a small eval and a GRPO step untimed (imports, first-call
allocations), then times --inner runs of each; the medians are over every timed run of a side.

    python benchmarks/generation.py --baseline-src DIR [--preset 10m] [--max-tokens 64] [--repeats 3] [--inner 2] [--grpo-inner 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """Runs inside one checkout (PYTHONPATH): prints {"eval_s": [...], "grpo_s": [...]} (warm runs) as JSON."""
    import torch

    from scratchllm.config import load_config
    from scratchllm.eval.lm import ScratchLM
    from scratchllm.eval.runner import EvalSettings, evaluate
    from scratchllm.model.model import ModelConfig, Transformer

    try:
        from scratchllm.tasks.specs import builtin_tasks, load_spec
    except ImportError:  # the worker also runs in the baseline checkout, from before the tasks package (#16)
        from scratchllm.eval.tasks import builtin_tasks, load_spec
    from scratchllm.tokenizer import train_bpe

    torch.set_num_threads(args.threads)
    tok = train_bpe(["generation benchmark"], 256 + 7)
    cfg = load_config(ModelConfig, ROOT / f"configs/model/{args.preset}.toml", [f"vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    specs = [load_spec(builtin_tasks()[t]) for t in ("gsm8k", "humaneval")]
    settings = EvalSettings(max_tokens=args.max_tokens, limit=args.limit)
    from scratchllm.align.grpo import respond

    prompts = [tok.encode(f"question {i}: what is {i} + {i}?") for i in range(args.grpo_prompts)]
    group = [p for p in prompts for _ in range(args.grpo_group)]
    evaluate(ScratchLM(model, tok), specs, EvalSettings(max_tokens=args.max_tokens, limit=1))  # warm-up
    respond(model, tok, group, args.max_tokens, temperature=1.0, seed=1)
    out: dict[str, list[float]] = {"eval_s": [], "grpo_s": [], "eval_cpu": [], "grpo_cpu": []}
    for i in range(max(args.inner, args.grpo_inner)):
        if i < args.inner:
            t0, c0 = time.perf_counter(), time.process_time()
            evaluate(ScratchLM(model, tok), specs, settings)
            out["eval_s"].append(time.perf_counter() - t0)
            out["eval_cpu"].append(time.process_time() - c0)
        if i < args.grpo_inner:
            t0, c0 = time.perf_counter(), time.process_time()
            respond(model, tok, group, args.max_tokens, temperature=1.0, seed=0)
            out["grpo_s"].append(time.perf_counter() - t0)
            out["grpo_cpu"].append(time.process_time() - c0)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-src", required=True, help="another checkout (its src/) to compare against")
    ap.add_argument("--preset", default="10m")
    ap.add_argument("--max-tokens", type=int, default=64, help="eval generation cap and GRPO reply length")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of each task (default: all)")
    ap.add_argument("--grpo-prompts", type=int, default=4)
    ap.add_argument("--grpo-group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inner", type=int, default=2, help="timed eval runs per worker process, after a warm-up")
    ap.add_argument("--grpo-inner", type=int, default=10, help="timed GRPO steps per worker process (short)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    print(f"torch {torch.__version__}, {args.preset} preset, max_tokens {args.max_tokens}, threads {args.threads}, "
          f"GRPO step = {args.grpo_prompts} prompts x {args.grpo_group} samples; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    sides = {"engine": ROOT, "baseline": Path(args.baseline_src).resolve()}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    argv = [a for a in sys.argv[1:]] + ["--worker"]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, src in sides.items():  # alternate: load from other processes hits both alike
                env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": str(args.threads)}
                out = subprocess.run([sys.executable, __file__, *argv], env=env, cwd=tmp, capture_output=True,
                                     text=True, check=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    metrics = ("eval_s", "grpo_s", "eval_cpu", "grpo_cpu")
    med = {k: {m: statistics.median(x for r in v for x in r[m]) for m in metrics} for k, v in runs.items()}
    print(f"medians of warm runs per side: eval {args.repeats} processes x {args.inner}, GRPO {args.repeats} x "
          f"{args.grpo_inner}; CPU = process CPU time (less sensitive to other processes' load than wall)")
    print("| | GSM8K + HumanEval wall | CPU | one GRPO rollout step wall | CPU |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['eval_s']:.1f} s | {m['eval_cpu']:.1f} s | {m['grpo_s']:.3f} s | {m['grpo_cpu']:.3f} s |")
    b, e = med["baseline"], med["engine"]
    print(f"speed-up (baseline / engine): eval wall {b['eval_s'] / e['eval_s']:.2f}x, CPU {b['eval_cpu'] / e['eval_cpu']:.2f}x; "
          f"GRPO step wall {b['grpo_s'] / e['grpo_s']:.2f}x, CPU {b['grpo_cpu'] / e['grpo_cpu']:.2f}x "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
