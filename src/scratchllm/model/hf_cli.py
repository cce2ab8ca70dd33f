"""``scratchllm export hf`` and ``scratchllm import hf``: convert to and from Hugging Face Llama directories."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse

from scratchllm.tokenizer import Tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to another format (hf: Hugging Face Llama)",
                              description="Export a model directory to another format.")
    sub = p.add_subparsers(dest="format", metavar="<format>", required=True)
    e = sub.add_parser("hf", help="write a directory transformers.AutoModelForCausalLM can load offline",
                       description="Write config.json + model.safetensors + the tokenizer (found with the model, "
                                   "or --tokenizer) "
                                   "in Hugging Face Llama format.")
    e.add_argument("model", help="model directory, fine-tuning run or training run directory (its latest checkpoint)")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--tokenizer", help="tokenizer to include (default: the one found with the model, as generate does)")
    e.set_defaults(func=cmd_export_hf)

    p = subparsers.add_parser("import", help="import a model from another format (hf: Hugging Face Llama)",
                              description="Import a model directory from another format.")
    sub = p.add_subparsers(dest="format", metavar="<format>", required=True)
    i = sub.add_parser("hf", help="convert a Hugging Face Llama directory into our model directory",
                       description="Read config.json + model.safetensors (or shards) of a LlamaForCausalLM and "
                                   "save it as our config.json + model.safetensors.")
    i.add_argument("hf_dir", help="Hugging Face model directory")
    i.add_argument("--out", required=True, help="output directory")
    i.set_defaults(func=cmd_import_hf)


def cmd_export_hf(args: argparse.Namespace) -> int:
    from scratchllm.model.hf import export_hf
    from scratchllm.model.model import Transformer
    from scratchllm.model.paths import find_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    model = Transformer.from_pretrained(model_dir)
    # The tokenizer found where generate, chat and serve find it (a fine-tuned model/ holds its own):
    # without it AutoTokenizer cannot load the export.
    tok_dir = args.tokenizer or find_tokenizer(args.model, model_dir)
    tokenizer = None
    if tok_dir:
        tokenizer = Tokenizer.load(tok_dir)
    export_hf(model, args.out, tokenizer)
    print(f"exported {model_dir} to {args.out} (Hugging Face LlamaForCausalLM"
          f"{f', with the tokenizer from {tok_dir}' if tokenizer else ', no tokenizer found: pass --tokenizer'})")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from scratchllm.model.hf import import_hf

    model = import_hf(args.hf_dir)
    model.save_pretrained(args.out)
    print(f"imported {args.hf_dir} ({model.num_params() / 1e6:.2f}M parameters) to {args.out}")
    return 0
