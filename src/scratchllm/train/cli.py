"""``scratchllm train``: pre-train a model from a TOML preset (also under torchrun for DDP/FSDP2)."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import os
import shlex
from pathlib import Path

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config

DEFAULT_CONFIG = "configs/train/cpu-tiny.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="pre-train a model on prepared shards (checkpoints, resume, DDP/FSDP2/TP/PP via torchrun)",
        description="Pre-train a model on shards written by `scratchllm data prepare`. Distributed: "
        "torchrun --nproc_per_node=N -m scratchllm train --config ... (train.parallel=ddp|fsdp; "
        "tensor/pipeline parallel: train.tp=2 train.pp=2, data parallel takes the rest).",
    )
    add_config_arguments(p, DEFAULT_CONFIG, "optim.lr=3e-4")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in out_dir (start fresh if there is none)")
    p.add_argument("--resume-from", type=Path, metavar="DIR",
                   help="continue from this checkpoint directory (e.g. out_dir/checkpoints/step_000200)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from scratchllm.train.config import TrainConfig
    from scratchllm.train.pretrain import run

    cfg = load_config(TrainConfig, args.config, args.overrides)
    command = resume_command(["train", "--config", str(args.config), *args.overrides])
    return run(cfg, resume=args.resume, resume_from=args.resume_from, resume_command=command).exit_code


def resume_command(args: list[str]) -> str:
    """The command that continues this run: ``scratchllm <args> --resume``, or under torchrun the
    launcher's own command line (read from the parent process) with ``--resume``, since every process
    must be restarted together."""
    plain = shlex.join(["scratchllm", *args, "--resume"])
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return plain
    launcher = _torchrun_argv(os.getppid())
    if launcher is None:  # not readable (no /proc): rebuild it from what torchrun tells its workers
        nproc = os.environ.get("LOCAL_WORLD_SIZE", "?")
        nnodes = os.environ.get("GROUP_WORLD_SIZE", "1")
        launcher = ["torchrun", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "-m", "scratchllm", *args]
    # --resume-from names one step; a continued run takes the latest checkpoint instead.
    cleaned, skip = [], False
    for a in launcher:
        if skip:
            skip = False
        elif a == "--resume-from":
            skip = True
        elif not a.startswith("--resume-from=") and a != "--resume":
            cleaned.append(a)
    return shlex.join([*cleaned, "--resume"])


def _torchrun_argv(pid: int) -> list[str] | None:
    """``torchrun ...`` as the parent process was started, or None if it is not torchrun."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    for i, a in enumerate(argv):  # python .../bin/torchrun ARGS, or python -m torch.distributed.run ARGS
        if Path(a).name == "torchrun":
            return ["torchrun", *argv[i + 1:]]
        if a == "torch.distributed.run" and i and argv[i - 1] == "-m":
            return ["torchrun", *argv[i + 1:]]
    return None
