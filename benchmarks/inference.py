"""Inference: our KV-cache generator vs Hugging Face ``generate``; speculative decoding; INT8/INT4.

1. Greedy decode tokens/s, batch 1, ours (eager, and with the torch.compile'd decode step of
   scratchllm.infer.compile) vs transformers' LlamaForCausalLM.generate on the same exported weights
   (scratchllm.model.hf), alternating runs so machine load hits all sides alike (medians). Compile
   time is reported apart and excluded from tokens/s (set TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 for
   a cold compile: inductor otherwise reuses its on-disk cache from earlier runs).
2. Speculative decoding (greedy, exact): speed-up over plain greedy and acceptance, for a draft model
   (--draft DIR) or, by default, a truncated copy of the target (its first --draft-layers layers).
3. Weight-only INT8 / INT4: weight memory, decode tokens/s, max |logit error| vs fp32 and perplexity
   on the validation split (--data DIR, a 'scratchllm data prepare' output) when given.

    python benchmarks/inference.py [--preset configs/model/10m.toml] [--model DIR --data DIR] [--tokens 128]
    python benchmarks/inference.py --hf-only --preset configs/model/1m.toml     # section 1 only

Without --model the speed figures use a randomly initialised --preset model (speed does not depend
on the weights); speculative and perplexity figures need a trained --model.
"""

from __future__ import annotations

import argparse
import copy
import math
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
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.infer.generate import SamplingParams, generate  # noqa: E402
from scratchllm.infer.load import load_model  # noqa: E402
from scratchllm.infer.quantize import quantize  # noqa: E402
from scratchllm.model.checkpoint import state_dict_bytes  # noqa: E402
from scratchllm.infer.speculative import speculative_steps  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(sides: dict, repeats: int) -> dict[str, float]:
    """Median seconds per side, running the sides in turn (after one warm-up each)."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for k, fn in sides.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_vs_hf(model: Transformer, prompt: list[int], n: int, repeats: int) -> None:
    import transformers

    from scratchllm.model.hf import export_hf

    with tempfile.TemporaryDirectory() as d:
        export_hf(model, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    params = SamplingParams(max_new_tokens=n, temperature=0)

    def ours() -> list[int]:
        return generate(model, [prompt], params)[0]

    def compiled() -> list[int]:
        return generate(model, [prompt], params, compile=True)[0]

    def theirs() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                              eos_token_id=None)
        return out[0, len(prompt):].tolist()

    compile_s = timed(compiled)  # the first call compiles (once per model shape and batch size)
    want = theirs()
    same, same_compiled = ours() == want, compiled() == want
    t = alternate({"ours": ours, "compiled": compiled, "hf": theirs}, repeats)
    print(f"greedy decode, batch 1, {len(prompt)}-token prompt, {n} new tokens (median of {repeats}):")
    print(f"  ours eager    {n / t['ours']:8.1f} tok/s   ratio {t['hf'] / t['ours']:.2f}x HF   "
          f"identical tokens: {same}")
    print(f"  ours compiled {n / t['compiled']:8.1f} tok/s   ratio {t['hf'] / t['compiled']:.2f}x HF   "
          f"identical tokens: {same_compiled}   (first call incl. compile {compile_s:.1f} s)")
    print(f"  HF generate   {n / t['hf']:8.1f} tok/s")


def bench_speculative(target: Transformer, draft: Transformer, prompt: list[int], n: int, ks: list[int],
                      repeats: int, label: str) -> None:
    params = SamplingParams(max_new_tokens=n, temperature=0)
    base = generate(target, [prompt], params)[0]

    def spec(k: int) -> tuple[list[int], int]:
        out, rounds = [], 0
        for new in speculative_steps(target, draft, prompt, params, k):
            out += new
            rounds += 1
        return out, rounds

    sides = {"plain": lambda: generate(target, [prompt], params)}
    sides["draft alone"] = lambda: generate(draft, [prompt], params)
    for k in ks:
        sides[f"k={k}"] = lambda k=k: spec(k)
    t = alternate(sides, repeats)
    print(f"speculative greedy, draft = {label} ({draft.num_params() / 1e6:.2f}M vs target "
          f"{target.num_params() / 1e6:.2f}M params), {n} new tokens:")
    print(f"  plain target {n / t['plain']:.1f} tok/s; draft alone {n / t['draft alone']:.1f} tok/s")
    for k in ks:
        out, rounds = spec(k)
        assert out == base, "speculative greedy differs from plain greedy"
        per_round = (len(out) - 1) / max(rounds - 1, 1)  # the first token comes from the prefill
        print(f"  k={k}: {n / t[f'k={k}']:.1f} tok/s, speed-up {t['plain'] / t[f'k={k}']:.2f}x, "
              f"{per_round:.2f} tokens per target pass (acceptance {(per_round - 1) / k:.0%}), output identical")


@torch.inference_mode()
def val_perplexity(model: Transformer, data: str, seq_len: int, batches: int) -> float:
    from scratchllm.corpus.shards import ShardDataset

    ds = ShardDataset(data, "val")
    losses = []
    for i, (x, y) in enumerate(ds.iter_batches(8, seq_len)):
        if i >= batches:
            break
        losses.append(float(model(x, y)[1]))
    return math.exp(sum(losses) / len(losses))


def bench_quant(model: Transformer, prompt: list[int], n: int, repeats: int, group_size: int,
                data: str | None, seq_len: int, val_batches: int) -> None:
    variants = {"fp32": model}
    variants["int8"] = quantize(copy.deepcopy(model), "int8")
    variants[f"int4-g{group_size}"] = quantize(copy.deepcopy(model), "int4", group_size)
    x = torch.randint(0, model.cfg.vocab_size, (4, min(128, model.cfg.context_length)),
                      generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    params = SamplingParams(max_new_tokens=n, temperature=0)
    t = alternate({k: (lambda m=m: generate(m, [prompt], params)) for k, m in variants.items()}, repeats)
    ppl0 = val_perplexity(model, data, seq_len, val_batches) if data else None
    print(f"weight-only quantization ({'trained model, val split' if data else 'random weights'}):")
    for k, m in variants.items():
        with torch.inference_mode():
            err = (m(x) - ref).abs().max().item()
        line = (f"  {k:10s} weights {state_dict_bytes(m) / 2**20:7.2f} MiB   decode {n / t[k]:7.1f} tok/s "
                f"({t['fp32'] / t[k]:.2f}x fp32)   max|logit err| {err:.4f} (logits up to {ref.abs().max():.1f})")
        if data:
            ppl = ppl0 if k == "fp32" else val_perplexity(m, data, seq_len, val_batches)
            line += f"   val ppl {ppl:.3f} ({100 * (ppl / ppl0 - 1):+.2f}%)"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="configs/model/10m.toml", help="random-weights model for speed figures")
    ap.add_argument("--model", help="a trained model directory (speculative and perplexity figures)")
    ap.add_argument("--draft", help="a draft model directory (default: truncated copy of --model)")
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--data", help="prepared data directory with a val split (perplexity)")
    ap.add_argument("--tokenizer", help="the --model's tokenizer: the prompt is then --prompt, encoded")
    ap.add_argument("--prompt", default="def main():\n    ")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ks", default="2,4,6")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--hf-only", action="store_true", help="only the decode comparison with HF generate")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}")
    torch.manual_seed(0)
    prompt = list(range(1, 17))

    if args.preset:  # --preset "" skips the random-weights figures
        random_model = Transformer(load_config(ModelConfig, ROOT / args.preset)).eval()
        print(f"\n== {args.preset}: {random_model.num_params() / 1e6:.1f}M params, random weights ==")
        bench_vs_hf(random_model, prompt, args.tokens, args.repeats)
        if not args.hf_only:
            bench_quant(random_model, prompt, args.tokens, args.repeats, args.group_size, None, 0, 0)

    if args.model:
        model = load_model(args.model).eval()
        if args.tokenizer:  # a natural prompt: drafts agree with the target far more often than on ids 1..16
            from scratchllm.tokenizer import Tokenizer

            prompt = Tokenizer.load(args.tokenizer).encode(args.prompt)
            print(f"prompt {args.prompt!r} ({len(prompt)} tokens)")
        print(f"\n== {args.model}: {model.num_params() / 1e6:.2f}M params, trained ==")
        bench_vs_hf(model, prompt, args.tokens, args.repeats)
        if args.hf_only:
            return
        if args.draft:
            draft, label = load_model(args.draft).eval(), args.draft
        else:
            draft = copy.deepcopy(model)
            draft.layers = draft.layers[: args.draft_layers]
            label = f"first {args.draft_layers} layer(s) of the target"
        ks = [int(k) for k in args.ks.split(",")]
        bench_speculative(model, draft, prompt, args.tokens, ks, args.repeats, label)
        bench_speculative(model, model, prompt, args.tokens, [4], args.repeats, "the target itself (upper bound)")
        seq = min(128, model.cfg.context_length)
        bench_quant(model, prompt, args.tokens, args.repeats, args.group_size, args.data, seq, args.val_batches)


if __name__ == "__main__":
    main()
