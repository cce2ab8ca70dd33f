"""``scratchllm train``: pre-train a model from a TOML preset (also under torchrun for DDP/FSDP2)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

DEFAULT_CONFIG = "configs/train/cpu-tiny.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    from scratchllm.cli import add_config_arguments

    p = subparsers.add_parser(
        "train",
        help="pre-train a model on prepared shards (checkpoints, resume, DDP/FSDP2 via torchrun)",
        description="Pre-train a model on shards written by `scratchllm data prepare`. Distributed: "
        "torchrun --nproc_per_node=N -m scratchllm train --config ... (train.parallel=ddp|fsdp).",
    )
    add_config_arguments(p, DEFAULT_CONFIG)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in out_dir (start fresh if there is none)")
    p.add_argument("--resume-from", type=Path, metavar="DIR",
                   help="continue from this checkpoint directory (e.g. out_dir/checkpoints/step_000200)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from scratchllm.config import load_config
    from scratchllm.train.config import TrainConfig
    from scratchllm.train.pretrain import run

    cfg = load_config(TrainConfig, args.config, args.overrides)
    command = shlex.join(["scratchllm", "train", "--config", str(args.config), *args.overrides, "--resume"])
    return run(cfg, resume=args.resume, resume_from=args.resume_from, resume_command=command).exit_code
