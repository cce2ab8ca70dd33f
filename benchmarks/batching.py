"""Offline continuous batching: our inference engine vs transformers' continuous batching
(``model.generate_batch``) on the same exported Hugging Face weights.

A random model of the preset (weights do not change the speed) is exported with ``export_hf``; both
sides generate --new tokens greedily (ignoring EOS) for the same --prompts random prompts of 8-40 tokens.
Runs alternate; medians of --repeats; generated tokens/s and the ratio. The greedy outputs are compared
too (the same weights: they should agree except at float near-ties).

    python benchmarks/batching.py [--preset 1m] [--prompts 32] [--new 32] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchllm.config import load_config  # noqa: E402
from scratchllm.infer.engine import Engine  # noqa: E402
from scratchllm.infer.sampling import SamplingParams  # noqa: E402
from scratchllm.model.hf import export_hf  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    cfg = load_config(ModelConfig, ROOT / f"configs/model/{args.preset}.toml", [])
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(1, cfg.vocab_size) for _ in range(rng.randint(8, 40))] for _ in range(args.prompts)]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.preset} preset, "
          f"{args.prompts} prompts x {args.new} new tokens, greedy, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, tmp)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa",
                                                               dtype=torch.float32).eval()
    gen_cfg = transformers.GenerationConfig(max_new_tokens=args.new, do_sample=False, eos_token_id=-1,
                                            pad_token_id=0)

    def run_ours() -> list[list[int]]:
        engine = Engine(ours, max_slots=args.prompts)
        params = SamplingParams(max_new_tokens=args.new, temperature=0)
        return [c.tokens for c in engine.generate(prompts, params)]

    def run_hf() -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate_batch(inputs=prompts, generation_config=gen_cfg, warmup=False)
        by_prompt = {tuple(r.prompt_ids): list(r.generated_tokens) for r in out.values()}
        return [by_prompt[tuple(p)] for p in prompts]

    times: dict[str, list[float]] = {"scratchllm Engine": [], "transformers generate_batch": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("scratchllm Engine", run_ours), ("transformers generate_batch", run_hf)):
            t = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t)
    tokens = args.prompts * args.new
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k}: {v:.2f} s median ({tokens / v:.0f} tokens/s; runs {', '.join(f'{x:.2f}' for x in times[k])})")
    a, b = outputs.values()
    same = sum(x == y for x, y in zip(a, b))
    print(f"  ours / transformers tokens/s: {med['transformers generate_batch'] / med['scratchllm Engine']:.2f}x; "
          f"identical greedy outputs: {same}/{len(prompts)}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
