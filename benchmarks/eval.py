"""Multiple-choice scoring speed: ours vs lm-evaluation-harness (``hf`` model type), same model and data.

A randomly initialised model of the given preset (weights do not change the speed) with a BPE
tokenizer trained on the embedded corpus is exported to Hugging Face format. The same
(context, continuation) requests of the embedded MC tasks are then scored by

* ours on our Transformer (``ScratchLM``), batched;
* ours on transformers' LlamaForCausalLM (``TransformersLM``): same scoring code, HF model;
* lm-eval's HFLM at the same batch size and at its default batch size 1.

Sides alternate run by run so that load from other processes on the shared machine affects all
alike; we report medians. Then the same end to end: our ``evaluate`` vs ``lm_eval.simple_evaluate``
(task set-up, dataset loading and metrics included). The run also checks that both score alike.

    python benchmarks/eval.py [--config configs/model/1m.toml] [--repeats 3] [--batch-size 16]

The defaults keep a run to a few minutes on a laptop CPU (lm-eval at batch 1 is the slow side);
pass --config configs/model/10m.toml for a bigger model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchllm.config import load_config  # noqa: E402
from scratchllm.corpus.embedded import embedded_text  # noqa: E402
from scratchllm.eval.lm import ScratchLM, TransformersLM  # noqa: E402
from scratchllm.eval.reference import hf_lm, run_lm_eval, write_task_dir  # noqa: E402
from scratchllm.eval.runner import EvalSettings, evaluate, mc_requests  # noqa: E402
from scratchllm.tasks.specs import resolve_tasks, task_records  # noqa: E402
from scratchllm.model.hf import export_hf  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.tokenizer import train_bpe  # noqa: E402


def alternate(sides: dict[str, Callable[[], object]], repeats: int, label: str) -> dict[str, float]:
    """Run every side once per round (rotating the order), one warm-up round; median seconds per side."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeats + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            sides[name]()
            dt = time.perf_counter() - t0
            if r:
                times[name].append(dt)
            print(f"  {label}, round {r}{' (warm-up)' if r == 0 else ''}: {name} {dt:.2f} s", flush=True)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/model/1m.toml"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--tasks", default="mmlu,hellaswag,arc")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--e2e-repeats", type=int, default=2)
    args = ap.parse_args()

    import lm_eval
    import transformers
    from lm_eval.api.instance import Instance

    print("training tokenizer ...", flush=True)
    tok = train_bpe(embedded_text(max_bytes_per_domain=400_000).split("\n\n"), args.vocab)
    cfg = load_config(ModelConfig, args.config, [f"vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    tmp = Path(tempfile.mkdtemp(prefix="scratchllm-bench-eval-"))
    hf_dir = export_hf(model, tmp / "hf", tok)

    specs = resolve_tasks(args.tasks.split(","))
    requests: list[tuple[str, str]] = []
    n_docs = 0
    for spec in specs:
        docs, reqs = mc_requests(spec, task_records(spec))
        n_docs += len(docs)
        requests += reqs
    instances = [Instance("loglikelihood", {}, req, i) for i, req in enumerate(requests)]
    B = args.batch_size

    ours = ScratchLM(model, tok)
    ours_hf = TransformersLM(hf_dir)
    theirs = hf_lm(hf_dir, batch_size=B)

    def lm_eval_scores(batch: int) -> list[float]:
        theirs.batch_size_per_gpu = batch
        return [ll for ll, _ in theirs.loglikelihood(instances, disable_tqdm=True)]

    mine = [s.logprob for s in ours.loglikelihood(requests, batch_size=B)]
    ref = lm_eval_scores(B)
    max_diff = max(abs(a - b) for a, b in zip(mine, ref, strict=True))
    print(f"{len(requests)} requests from {n_docs} documents; max |ours - lm-eval| log-likelihood = {max_diff:.2e}")

    sides = {
        "ours, scratchllm model": lambda: ours.loglikelihood(requests, batch_size=B),
        "ours, transformers model": lambda: ours_hf.loglikelihood(requests, batch_size=B),
        f"lm-eval hf, batch {B}": lambda: lm_eval_scores(B),
        "lm-eval hf, batch 1 (its default)": lambda: lm_eval_scores(1),
    }
    scoring = alternate(sides, args.repeats, "scoring")

    task_dir = tmp / "lm_eval_tasks"
    names = write_task_dir(task_dir, {s.name: s.resolve(s.data) for s in specs})
    theirs.batch_size_per_gpu = B
    e2e_sides = {
        "ours: evaluate()": lambda: evaluate(ours, specs, EvalSettings(batch_size=B)),
        f"lm-eval: simple_evaluate(), batch {B}": lambda: run_lm_eval(theirs, task_dir, names),
    }
    e2e = alternate(e2e_sides, args.e2e_repeats, "end to end")

    print()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"lm-eval {lm_eval.__version__}")
    print(f"model {Path(args.config).name}: {model.num_params() / 1e6:.1f}M parameters, vocab {tok.vocab_size}, "
          f"context {cfg.context_length}; tasks {args.tasks}: {n_docs} documents, {len(requests)} requests; "
          f"{torch.get_num_threads()} torch threads")
    base = scoring[f"lm-eval hf, batch {B}"]
    print("\n| scoring only | examples/s | requests/s | ours / this |")
    print("|---|---|---|---|")
    for name, t in scoring.items():
        print(f"| {name} | {n_docs / t:.1f} | {len(requests) / t:.1f} | {t and scoring['ours, scratchllm model'] and t / scoring['ours, scratchllm model']:.2f}× |")
    print(f"\nours (scratchllm model) vs lm-eval at batch {B}: {base / scoring['ours, scratchllm model']:.2f}×")
    print("\n| end to end | examples/s | seconds |")
    print("|---|---|---|")
    for name, t in e2e.items():
        print(f"| {name} | {n_docs / t:.1f} | {t:.2f} |")
    ratio = e2e[f"lm-eval: simple_evaluate(), batch {B}"] / e2e["ours: evaluate()"]
    print(f"\nend-to-end ratio ours / lm-eval (examples/s): {ratio:.2f}×")


if __name__ == "__main__":
    main()
