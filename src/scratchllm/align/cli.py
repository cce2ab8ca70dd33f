"""``scratchllm align dpo|reward|ppo|grpo|rloo|compare|constitutional --config ...``: alignment after SFT."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config

COMMANDS = {
    "dpo": ("Direct Preference Optimisation against a frozen reference (sigmoid/cDPO, robust, IPO)",
            "configs/align/dpo.toml"),
    "reward": ("train a reward model (the decoder + a scalar head, Bradley-Terry loss)", "configs/align/reward.toml"),
    "ppo": ("RLHF with PPO: value function, per-token KL penalty, GAE, clipped policy and value losses",
            "configs/align/ppo.toml"),
    "grpo": ("GRPO: group-relative advantages, no value model, per-token KL penalty", "configs/align/grpo.toml"),
    "rloo": ("RLOO: REINFORCE with a leave-one-out baseline, no value model", "configs/align/rloo.toml"),
    "compare": ("DPO, PPO, GRPO and RLOO from one SFT model, same rewards, equal generated tokens; plots",
                "configs/align/compare.toml"),
    "constitutional": ("critique -> revise with a written constitution; writes preference pairs for DPO",
                       "configs/align/constitutional.toml"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("align",
                              help="align a fine-tuned model: reward model, DPO, PPO, GRPO, RLOO, constitutional data",
                              description="Alignment after SFT. Each command reads a TOML preset plus key=value "
                              "overrides and writes out_dir/model and out_dir/report.json (held-out metrics "
                              "before and after).")
    sub = p.add_subparsers(dest="align_command", metavar="<command>", required=True)
    for name, (help_text, default) in COMMANDS.items():
        c = sub.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(c, default, "constitutional.rounds=2" if name == "constitutional" else "optim.lr=1e-5")
        if name not in ("constitutional", "compare"):  # compare always resumes its runs
            c.add_argument("--resume", action="store_true",
                           help="continue from the latest checkpoint in out_dir (start fresh if there is none)")
        c.set_defaults(func=cmd_align)


def cmd_align(args: argparse.Namespace) -> int:
    from scratchllm.align.config import COMMAND_CONFIGS

    if args.align_command == "compare":
        from scratchllm.align.compare import CompareConfig, run as compare

        return compare(load_config(CompareConfig, args.config, args.overrides)).exit_code
    cfg = load_config(COMMAND_CONFIGS[args.align_command], args.config, args.overrides)
    if args.align_command == "constitutional":
        from scratchllm.align.constitutional import run_constitutional

        return run_constitutional(cfg).exit_code
    from scratchllm.align import run

    runner = {"dpo": run.run_dpo, "reward": run.run_reward, "ppo": run.run_ppo, "grpo": run.run_grpo,
              "rloo": run.run_rloo}[args.align_command]
    return runner(cfg, resume=args.resume).exit_code
