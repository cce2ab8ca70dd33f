"""``scratchllm eval [--config FILE] key=value ...``: run benchmarks on a model, write results.

Settings: ``EvalConfig`` (eval/config.py); the flags of before are aliases for its keys, e.g.
``scratchllm eval --tasks ppl,mc --model DIR`` is ``scratchllm eval tasks=[\"ppl\",\"mc\"] model=DIR``.
"""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import json

from scratchllm.cli import add_alias, add_config_arguments, config_overrides
from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.eval.config import EvalConfig

_ALIAS = "alias:"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model: perplexity, multiple choice, GSM8K, HumanEval, safety, LLM judge",
        description="Evaluate a scratchllm or Hugging Face model directory (or a served model) on built-in or "
                    "custom tasks; writes results.json, results.md and results.html. Settings: EvalConfig in "
                    "scratchllm.eval.config (a shipped preset: --config eval/quick); every flag below is "
                    "another way to write the key it names.",
    )
    add_config_arguments(p, None, "limit=50")
    p.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and exit")
    add_alias(p, "--tasks", key="tasks", help="comma-separated task names, groups (mc, all) or task .toml paths")
    add_alias(p, "--model", key="model", help="model directory (scratchllm or Hugging Face format), or the URL of "
              "an OpenAI-compatible server (e.g. scratchllm serve) for generate, safety and judge tasks")
    add_alias(p, "--served-model", key="served_model", help="with a URL --model: the model name to request")
    add_alias(p, "--tokenizer", key="tokenizer", help="tokenizer for a scratchllm model (default: found with it)")
    add_alias(p, "--backend", key="backend", choices=["auto", "scratchllm", "hf"],
              help="auto: ours for our directories, transformers for Hugging Face ones")
    add_alias(p, "--device", key="device")
    add_alias(p, "--out", key="out_dir", help="output directory (default: runs/eval/<model name>)")
    add_alias(p, "--limit", key="limit", type=int, help="evaluate only the first N examples of each task")
    add_alias(p, "--batch-size", key="batch_size", type=int)
    add_alias(p, "--stride", key="stride", type=int,
              help="perplexity window stride in tokens (default: the context length)")
    add_alias(p, "--data", key="data", action="append", metavar="TASK=PATH",
              help="use a local data file for a built-in task, e.g. gsm8k=~/data/gsm8k/test.jsonl")
    add_alias(p, "--baselines", key="baselines",
              help="comma-separated n-gram baselines next to perplexity ('none' to skip)")
    add_alias(p, "--baseline-text", key="baseline_text", action="append", metavar="FILE",
              help="text the baselines are fit on: a file, or a `data prepare` output folder (its train "
                   "split: your corpus). Repeatable. Default: the embedded corpus")
    add_alias(p, "--max-tokens", key="max_tokens", type=int,
              help="generated tokens per answer at most (default: each task's)")
    add_alias(p, "--samples", key="samples", type=int,
              help="code tasks: completions per problem (pass@k needs k <= samples)")
    add_alias(p, "--temperature", key="temperature", type=float, help="code tasks: sampling temperature")
    add_alias(p, "--k", key="k", help="code tasks: comma-separated k for pass@k, e.g. 1,10")
    add_alias(p, "--chat", key="chat", action="store_true",
              help="chat-tuned model: send generate, safety and judge prompts as a user turn in its chat template")
    add_alias(p, "--judge-url", key="judge_url",
              help="OpenAI-compatible endpoint for judge tasks, e.g. http://127.0.0.1:8000/v1")
    add_alias(p, "--judge-model", key="judge_model", help="model name sent to the judge endpoint")
    add_alias(p, "--api-key-env", key="api_key_env",
              help="environment variable holding the judge's API key (optional)")
    add_alias(p, "--retries", key="retries", type=int,
              help="judge / endpoint requests: retries with exponential backoff before giving up")
    add_alias(p, "--request-timeout", key="request_timeout", type=float, help="judge / endpoint requests: seconds")
    add_alias(p, "--judge-safety", key="judge_safety", action="store_true",
              help="classify safety responses with the judge")
    add_alias(p, "--compare-model", key="compare_model",
              help="judge task: also compare pairwise against this model directory")
    add_alias(p, "--log-samples", key="log_samples", action="store_true",
              help="also write per-example samples_<task>.jsonl")
    add_alias(p, "--seed", key="seed", type=int)
    p.add_argument("--no-progress", dest=_ALIAS + "progress", action="store_const", const=False,
                   help="no progress bars (same as progress=false; default: shown on a terminal)")
    p.set_defaults(func=cmd_eval)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _list_flags(args: argparse.Namespace) -> None:
    """The flags whose text is a list or a table (--tasks a,b; --k 1,10; --data T=P) as the keys' values."""
    flags = vars(args)
    if flags.get(_ALIAS + "tasks") is not None:
        flags[_ALIAS + "tasks"] = _csv(flags[_ALIAS + "tasks"])
    if flags.get(_ALIAS + "baselines") is not None:
        text = flags[_ALIAS + "baselines"]
        flags[_ALIAS + "baselines"] = [] if text.strip() == "none" else _csv(text)
    if flags.get(_ALIAS + "k") is not None:
        try:
            flags[_ALIAS + "k"] = [int(x) for x in _csv(flags[_ALIAS + "k"])]
        except ValueError:
            raise ScratchError(f"--k must be comma-separated integers, got {flags[_ALIAS + 'k']!r}") from None
    if flags.get(_ALIAS + "data") is not None:
        data = {}
        for item in flags[_ALIAS + "data"]:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ScratchError(f"bad --data {item!r}: expected TASK=PATH",
                                   "e.g. --data gsm8k=/data/gsm8k/test.jsonl")
            data[name.strip()] = path.strip()
        flags[_ALIAS + "data"] = data


def cmd_eval(args: argparse.Namespace) -> int:
    from scratchllm.eval.report import metric_rows
    from scratchllm.eval.run import run
    from scratchllm.tasks.specs import GROUPS, builtin_tasks, load_spec

    if args.list_tasks:
        for name, path in builtin_tasks().items():
            spec = load_spec(path)
            print(f"{name:<12} {spec.type:<16} {spec.description}")
        print("groups: " + "; ".join(f"{g} = {','.join(v)}" for g, v in GROUPS.items()))
        return 0
    _list_flags(args)
    result = run(load_config(EvalConfig, args.config, config_overrides(args)))
    for row in metric_rows(json.loads(result.outputs["results"].read_text(encoding="utf-8"))):
        print("  ".join(row))
    written = [str(p) for k, p in result.outputs.items() if k not in ("dir", "results")]
    print(f"wrote {', '.join(written)}")
    return 0
