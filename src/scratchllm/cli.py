"""The one command-line entry point: ``scratchllm <stage> ...``.

Each stage lives in its own sub-package and contributes a ``register(subparsers)`` function in its
``cli`` module; this file only lists the stages and turns user-fixable errors into clean messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from scratchllm import __version__
from scratchllm.errors import ScratchError, disk_full, is_disk_full

# (command, module providing register(subparsers)). Order is pipeline order, as shown in --help.
STAGES: list[str] = [
    "scratchllm.tokenizer.cli",
    "scratchllm.model.cli",
    "scratchllm.model.hf_cli",
    "scratchllm.data.cli",
    "scratchllm.train.cli",
    "scratchllm.finetune.cli",
    "scratchllm.align.cli",
    "scratchllm.eval.cli",
    "scratchllm.inspect.cli",
    "scratchllm.serve.cli",
    "scratchllm.pipeline.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Train your own transformer language model from scratch, stage by stage.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks (also: SCRATCHLLM_DEBUG=1)"
    )
    subparsers = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for module in STAGES:
        importlib.import_module(module).register(subparsers)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None = None,
                         example: str = "seed=1") -> None:
    """The shared ``--config FILE`` and ``key=value`` override arguments of config-driven commands.

    ``example`` is an override that is valid for this command (shown in --help; tests/test_cli.py loads it)."""
    parser.add_argument(
        "--config",
        default=default_config,
        help="TOML preset: a file, or a shipped preset by name (e.g. cpu-demo, train/cpu-tiny)"
        + (f"; default: {default_config}" if default_config else ""),
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help=f"override a config value, e.g. {example}"
    )
    parser.set_defaults(config_example=example)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SCRATCHLLM_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except ScratchError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"fix: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("\ninterrupted; completed outputs are intact (partial files are never left behind)", file=sys.stderr)
        return getattr(e, "exit_code", 130)  # 143 for a second SIGTERM
    except BrokenPipeError:  # e.g. `scratchllm tokenizer encode ... | head`
        sys.stderr.close()
        return 0
    except Exception as e:  # noqa: BLE001 - last-resort handler for the CLI only
        if debug:
            raise
        if is_disk_full(e):  # any write path not already wrapped: the same message as everywhere else
            err = disk_full(getattr(e, "filename", None) or "a file")
            print(f"error: {err.message}\nfix: {err.hint}", file=sys.stderr)
            return 2
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("fix: rerun with --debug for the full traceback, and report it if it looks like a bug", file=sys.stderr)
        return 1
