"""``scratchllm eval --tasks ppl,mc,gsm8k,humaneval,safety --model DIR``: run benchmarks, write results."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any

from scratchllm import __version__
from scratchllm.errors import ScratchError
from scratchllm.io import read_text
from scratchllm.tokenizer import Tokenizer

BASELINE_BYTES_PER_DOMAIN = 1_000_000
BASELINE_TRAIN_TOKENS = 2_000_000  # of a prepared data folder's train split (as the pipeline's eval stage)
ENDPOINT_TYPES = ("generate", "safety", "judge")  # task types a chat endpoint can run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model: perplexity, multiple choice, GSM8K, HumanEval, safety, LLM judge",
        description="Evaluate a scratchllm or Hugging Face model directory on built-in or custom tasks; "
                    "writes results.json, results.md and results.html.",
    )
    p.add_argument("--tasks", help="comma-separated task names, groups (mc, all) or task .toml paths")
    p.add_argument("--model", help="model directory (scratchllm or Hugging Face format), or the URL of an "
                   "OpenAI-compatible server (e.g. scratchllm serve) for generate, safety and judge tasks")
    p.add_argument("--served-model", default="default", help="with a URL --model: the model name to request")
    p.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and exit")
    p.add_argument("--tokenizer", help="tokenizer for a scratchllm model (default: found beside the model)")
    p.add_argument("--backend", choices=["auto", "scratchllm", "hf"], default="auto",
                   help="auto: ours for our directories, transformers for Hugging Face ones")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="output directory (default: runs/eval/<model name>)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples of each task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, help="perplexity window stride in tokens (default: the context length)")
    p.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                   help="use a local data file for a built-in task, e.g. gsm8k=~/data/gsm8k/test.jsonl")
    p.add_argument("--baselines", default="unigram,bigram,kneser_ney",
                   help="n-gram baselines next to perplexity ('none' to skip)")
    p.add_argument("--baseline-text", action="append", default=[], metavar="FILE",
                   help="text the baselines are fit on: a file, or a `data prepare` output folder (its train "
                        "split: your corpus). Repeatable. Default: the embedded corpus")
    p.add_argument("--max-tokens", type=int, help="generated tokens per answer at most (default: each task's)")
    p.add_argument("--samples", type=int, help="code tasks: completions per problem (pass@k needs k <= samples)")
    p.add_argument("--temperature", type=float, help="code tasks: sampling temperature")
    p.add_argument("--k", help="code tasks: comma-separated k for pass@k, e.g. 1,10")
    p.add_argument("--chat", action="store_true",
                   help="chat-tuned model: send generate, safety and judge prompts as a user turn in its chat template")
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint for judge tasks, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="default", help="model name sent to the judge endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's API key (optional)")
    p.add_argument("--retries", type=int, default=5,
                   help="judge / endpoint requests: retries with exponential backoff before giving up")
    p.add_argument("--request-timeout", type=float, default=120.0, help="judge / endpoint requests: seconds")
    p.add_argument("--judge-safety", action="store_true", help="classify safety responses with the judge")
    p.add_argument("--compare-model", help="judge task: also compare pairwise against this model directory")
    p.add_argument("--log-samples", action="store_true", help="also write per-example samples_<task>.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    p.set_defaults(func=cmd_eval)


def _parse_data(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ScratchError(f"bad --data {item!r}: expected TASK=PATH", "e.g. --data gsm8k=/data/gsm8k/test.jsonl")
        out[name.strip()] = path.strip()
    return out


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ScratchError(f"{option} must be comma-separated integers, got {text!r}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from scratchllm.tasks.specs import GROUPS, builtin_tasks, load_spec

    if args.list_tasks:
        for name, path in builtin_tasks().items():
            spec = load_spec(path)
            print(f"{name:<12} {spec.type:<16} {spec.description}")
        print("groups: " + "; ".join(f"{g} = {','.join(v)}" for g, v in GROUPS.items()))
        return 0
    if not args.tasks or not args.model:
        raise ScratchError("--tasks and --model are required", "e.g. scratchllm eval --tasks ppl,mc --model runs/model")
    for name, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--stride", args.stride),
                        ("--samples", args.samples), ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            raise ScratchError(f"{name} must be at least 1, got {value}")

    from scratchllm.eval.lm import load_model
    from scratchllm.eval.report import metric_rows, write_results
    from scratchllm.eval.runner import EvalSettings, evaluate
    from scratchllm.tasks.specs import resolve_tasks

    specs = resolve_tasks(args.tasks.split(","), _parse_data(args.data))  # fail on bad tasks before loading
    endpoint = args.model.startswith(("http://", "https://"))
    if endpoint:
        scored = [s.name for s in specs if s.type not in ENDPOINT_TYPES]
        if scored:
            raise ScratchError(f"{', '.join(scored)} cannot run on an endpoint model: it needs log-likelihoods "
                               "or raw completions, and a chat API gives neither",
                               "run them on the model directory; endpoints run generate, safety and judge tasks")
    judge = None
    if args.judge_safety or any(s.type == "judge" for s in specs):
        if not args.judge_url:
            raise ScratchError("judge tasks and --judge-safety need --judge-url",
                               "any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
        from scratchllm.client import ChatClient

        judge = ChatClient(args.judge_url, args.judge_model, os.environ.get(args.api_key_env),
                           timeout=args.request_timeout, max_retries=args.retries)
    if endpoint:
        from scratchllm.client import ChatClient
        from scratchllm.eval.lm import EndpointLM

        lm = EndpointLM(ChatClient(args.model, args.served_model, os.environ.get(args.api_key_env),
                                   timeout=args.request_timeout, max_retries=args.retries,
                                   role="model endpoint", url_setting="--model"))
    else:
        lm = load_model(args.model, args.tokenizer, args.backend, args.device)
    compare = load_model(args.compare_model, None, args.backend, args.device) if args.compare_model else None
    if args.chat and not endpoint:  # fail now, not after the scoring tasks have run
        for model in (lm, compare):
            if model is not None:
                model.chat_prompt("")
    baselines = [] if args.baselines.strip() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    settings = EvalSettings(
        limit=args.limit, batch_size=args.batch_size, stride=args.stride, baselines=baselines,
        baseline_documents=_baseline_loader(args.baseline_text, lm),
        max_tokens=args.max_tokens, samples=args.samples, temperature=args.temperature,
        k=_int_list(args.k, "--k") if args.k else None,
        judge=judge, chat=args.chat, judge_safety=args.judge_safety, compare=compare,
        log_samples=args.log_samples, seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    import torch

    torch.manual_seed(args.seed)
    results = evaluate(lm, specs, settings, on_task=lambda name: print(f"running {name} ...", file=sys.stderr))
    results = {
        "model": {"name": lm.name, "path": args.model if endpoint else str(Path(args.model).resolve()), **lm.info},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"limit": args.limit, "batch_size": args.batch_size, "stride": args.stride or lm.max_length,
                     "seed": args.seed, "baselines": baselines},
        **results,
    }

    results["scratchllm_version"] = __version__
    out = Path(args.out) if args.out else Path("runs") / "eval" / lm.name
    written = write_results(results, out)
    for row in metric_rows(results):
        print("  ".join(row))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _baseline_loader(files: list[str], lm: Any = None):
    def load() -> list[str]:
        if files:
            texts: list[str] = []
            for f in files:
                if (Path(f) / "manifest.json").is_file():  # prepared data: its train split, your corpus
                    texts += _train_split_texts(Path(f), lm)
                else:
                    texts.append(read_text(f))
            return texts
        from scratchllm.corpus.embedded import embedded_text

        return embedded_text(max_bytes_per_domain=BASELINE_BYTES_PER_DOMAIN).split("\n\n")

    return load


def _train_split_texts(data_dir: Path, lm: Any, budget: int = BASELINE_TRAIN_TOKENS) -> list[str]:
    """The documents of a prepared data directory's train split (up to ``budget`` tokens), as text."""
    from scratchllm.corpus.shards import iter_documents, load_manifest

    # Decoded with the tokenizer the shards were made with (the model's may differ); the baselines then
    # re-encode the text with the model's tokenizer.
    decode = lm.decode
    tok_path = Path(str(load_manifest(data_dir)[1].get("tokenizer", "")))
    if str(tok_path) and tok_path.exists():
        decode = Tokenizer.load(tok_path).decode
    texts, n = [], 0
    for _, ids in iter_documents(data_dir, "train"):
        texts.append(decode([int(i) for i in ids]))
        n += len(ids)
        if n >= budget:
            break
    return texts
