"""``scratchllm data prepare | verify | show``."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import sys

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config

DEFAULT_CONFIG = "configs/data/default.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare training data: ingest, clean, filter, dedup, mix, shard")
    sub = parser.add_subparsers(dest="data_command", metavar="<command>", required=True)

    p = sub.add_parser("prepare", help="run the data pipeline and write token shards + manifest")
    add_config_arguments(p, DEFAULT_CONFIG, "out_dir=runs/data2")
    p.add_argument("--force", action="store_true", help="rebuild everything, even if up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("verify", help="re-check every shard's size and checksum against the manifest")
    p.add_argument("path", help="prepared data directory (out_dir)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("show", help="print the summary of prepared data")
    p.add_argument("path", help="prepared data directory (out_dir)")
    p.set_defaults(func=_show)


def _prepare(args: argparse.Namespace) -> int:
    from scratchllm.data.config import DataConfig
    from scratchllm.data.prepare import format_summary, run
    from scratchllm.corpus.shards import load_manifest

    cfg = load_config(DataConfig, args.config, args.overrides)
    result = run(cfg, force=args.force, progress=False if args.no_progress else None,
                 log=lambda m: print(m, file=sys.stderr))
    print(format_summary(load_manifest(result.outputs["manifest"])[1]))
    print(f"\nwrote {result.outputs['manifest']}")
    return result.exit_code


def _verify(args: argparse.Namespace) -> int:
    from scratchllm.corpus.shards import load_manifest, verify

    problems = verify(args.path)
    _, manifest = load_manifest(args.path)
    n = sum(len(s["shards"]) for s in manifest["splits"].values())
    for p in problems:
        print(p)
    print(f"{n} shards: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def _show(args: argparse.Namespace) -> int:
    from scratchllm.data.prepare import format_summary
    from scratchllm.corpus.shards import load_manifest

    _, manifest = load_manifest(args.path)
    print(format_summary(manifest))
    return 0
