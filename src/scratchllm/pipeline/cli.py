"""``scratchllm pipeline --config configs/pipeline/<preset>.toml [--from STAGE] [key=value ...]``."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import json
import sys

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config
from scratchllm.io import atomic_write_text, read_text
from scratchllm.pipeline import STAGE_NAMES

DEFAULT_CONFIG = "configs/pipeline/cpu-demo.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pipeline", help="run every stage, raw text to a served model and a report, in one run directory",
        description="Run the stages in order: " + " -> ".join(STAGE_NAMES) + ". A rerun skips completed "
                    "stages and resumes an interrupted one (training continues from its last checkpoint).",
    )
    add_config_arguments(p, DEFAULT_CONFIG, "pretrain.train.max_steps=100")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", choices=STAGE_NAMES,
                   help="run this stage and every later one again (their old outputs are deleted)")
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from scratchllm.pipeline.config import PipelineConfig, stage_tables  # every stage's config: torch
    from scratchllm.pipeline.runner import LOG_FILE, Context, StageInterrupted, resume_command, run_stages
    from scratchllm.pipeline.stages import all_stages

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    run_dir = cfg.run_dir
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    tables = stage_tables(cfg)
    # The exact config: the preset as given plus the command-line overrides, and every stage's resolved table.
    source = read_text(args.config) if args.config else ""
    atomic_write_text(run_dir / "pipeline.toml", f"# {resume_command(args.config, args.overrides)}\n"
                      + "".join(f"# override: {o}\n" for o in args.overrides) + source)
    atomic_write_text(run_dir / "resolved.json", json.dumps(tables, indent=1, default=str) + "\n")
    log_file = run_dir / LOG_FILE

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(message + "\n")

    ctx = Context(cfg, run_dir, resume_command(args.config, args.overrides), log=log, tables=tables)
    try:
        outcome = run_stages(all_stages(), ctx, args.from_stage, cfg.skip)
    except StageInterrupted:
        return 130
    done = ", ".join(f"{k} {v}" for k, v in outcome.items())
    print(f"pipeline complete ({done})\nreport: {run_dir / 'report' / 'report.html'}")
    return 0
