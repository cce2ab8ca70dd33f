"""The one command-line entry point: ``scratchllm <stage> ...``.

Each stage lives in its own sub-package and contributes a ``register(subparsers)`` function in its
``cli`` module; this file only lists the stages and turns user-fixable errors into clean messages.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

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


_ALIAS = "alias:"  # argparse dest prefix of a flag that stands for a config key


def add_alias(parser: argparse.ArgumentParser | Any, *flags: str, key: str, help: str = "", **kwargs: Any) -> None:
    """A flag kept as another way to write the override ``key=value`` (e.g. ``--out X`` for ``out_dir=X``).

    The flag's value becomes an override after the ``key=value`` ones, so a flag wins over the same key.
    ``action="store_true"`` flags set the key to true; ``action="append"`` flags collect a list."""
    if kwargs.get("action") == "store_true":
        kwargs.update(action="store_const", const=True)
    elif "choices" not in kwargs:
        kwargs.setdefault("metavar", key.upper())
    parser.add_argument(*flags, dest=_ALIAS + key, default=None, help=f"{help} (same as {key}=...)".lstrip(),
                        **kwargs)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The command's ``key=value`` overrides followed by those its alias flags stand for."""
    items = list(getattr(args, "overrides", None) or [])
    for dest, value in vars(args).items():
        if dest.startswith(_ALIAS) and value is not None:
            items.append(f"{dest[len(_ALIAS):]}={toml_literal(value)}")
    return items


def toml_literal(value: Any) -> str:
    """``value`` written as the TOML literal an override parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


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
