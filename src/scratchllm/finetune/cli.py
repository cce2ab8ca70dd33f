"""``scratchllm finetune``: instruction-tune a model (full, LoRA or QLoRA) from a TOML preset."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import json
import sys

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config

DEFAULT_CONFIG = "configs/finetune/cpu-lora.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="instruction-tune a model: full fine-tuning, LoRA or QLoRA (NF4), with the training loop",
        description="Supervised fine-tuning on chats (the embedded instruction set or a JSONL file), loss on "
        "assistant tokens only. Writes out_dir/model (merged), out_dir/adapter and out_dir/peft_adapter, "
        "and out_dir/report.json (held-out loss/accuracy before and after).",
    )
    add_config_arguments(p, DEFAULT_CONFIG, "optim.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from scratchllm.finetune.config import FinetuneConfig
    from scratchllm.finetune.run import run

    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    result = run(cfg, resume=args.resume)
    if result.stopped:
        print(f"stopped by {result.stopped} after step {result.step}; continue with --resume", file=sys.stderr)
        return result.exit_code
    report = result.metrics
    summary = {k: report[k] for k in ("method", "trainable_params", "total_params", "before", "after") if k in report}
    print(json.dumps(summary, indent=2))
    print(f"done: merged model in {cfg.out_dir}/model"
          + ("" if cfg.method == "full" else f", adapters in {cfg.out_dir}/adapter and {cfg.out_dir}/peft_adapter"),
          file=sys.stderr)
    return 0
