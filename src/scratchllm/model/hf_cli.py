"""``scratchllm export hf`` and ``scratchllm import hf``: convert to and from Hugging Face Llama directories."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse

from scratchllm.cli import add_alias, add_config_arguments, config_overrides, toml_literal
from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.model.config import ExportHFConfig, ImportHFConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to another format (hf: Hugging Face Llama)",
                              description="Export a model directory to another format.")
    sub = p.add_subparsers(dest="format", metavar="<format>", required=True)
    e = sub.add_parser("hf", help="write a directory transformers.AutoModelForCausalLM can load offline",
                       description="Write config.json + model.safetensors + the tokenizer (found with the model, "
                                   "or tokenizer=DIR) in Hugging Face Llama format. Settings: ExportHFConfig in "
                                   "scratchllm.model.config, e.g. model=runs/sft out_dir=runs/sft-hf; the model "
                                   "may also come first, as before: export hf runs/sft --out runs/sft-hf.")
    add_config_arguments(e, None, "out_dir=runs/export-hf")
    add_alias(e, "--out", key="out_dir", help="output directory")
    add_alias(e, "--tokenizer", key="tokenizer",
              help="tokenizer to include (default: the one found with the model, as generate does)")
    e.set_defaults(func=cmd_export_hf)

    p = subparsers.add_parser("import", help="import a model from another format (hf: Hugging Face Llama)",
                              description="Import a model directory from another format.")
    sub = p.add_subparsers(dest="format", metavar="<format>", required=True)
    i = sub.add_parser("hf", help="convert a Hugging Face Llama directory into our model directory",
                       description="Read config.json + model.safetensors (or shards) of a LlamaForCausalLM and "
                                   "save it as our config.json + model.safetensors. Settings: ImportHFConfig in "
                                   "scratchllm.model.config, e.g. hf_dir=hf/llama out_dir=runs/llama; the Hugging "
                                   "Face directory may also come first, as before: import hf hf/llama --out runs/llama.")
    add_config_arguments(i, None, "out_dir=runs/imported")
    add_alias(i, "--out", key="out_dir", help="output directory")
    i.set_defaults(func=cmd_import_hf)


def cmd_export_hf(args: argparse.Namespace) -> int:
    from scratchllm.model.hf import run

    _positional_key(args, "model")
    result = run(load_config(ExportHFConfig, args.config, config_overrides(args)))
    tok = result.metrics["tokenizer"]
    print(f"exported {result.outputs['source']} to {result.outputs['model']} (Hugging Face LlamaForCausalLM"
          f"{f', with the tokenizer from {tok}' if tok else ', no tokenizer found: pass tokenizer=DIR'})")
    return 0


def _positional_key(args: argparse.Namespace, key: str) -> None:
    """`export hf DIR ...`, `import hf DIR ...`: an argument that is no key=value names the input directory
    (``key``), as before these commands took a config."""
    paths = [item for item in args.overrides if "=" not in item]
    if len(paths) > 1:
        raise ScratchError(f"more than one model given: {', '.join(paths)}", "name one model directory")
    args.overrides = [f"{key}={toml_literal(p)}" for p in paths] + [i for i in args.overrides if "=" in i]


def cmd_import_hf(args: argparse.Namespace) -> int:
    from scratchllm.model.hf import import_hf

    _positional_key(args, "hf_dir")
    cfg = load_config(ImportHFConfig, args.config, config_overrides(args))
    if not cfg.hf_dir or not cfg.out_dir:
        raise ScratchError("import hf needs the Hugging Face directory and an output directory",
                           "pass hf_dir=DIR out_dir=DIR (or: import hf DIR --out DIR)")
    model = import_hf(cfg.hf_dir)
    model.save_pretrained(cfg.out_dir)
    print(f"imported {cfg.hf_dir} ({model.num_params() / 1e6:.2f}M parameters) to {cfg.out_dir}")
    return 0
