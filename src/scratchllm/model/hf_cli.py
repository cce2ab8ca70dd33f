"""``scratchllm export hf`` and ``scratchllm import hf``: convert to and from Hugging Face Llama directories."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to another format (hf: Hugging Face Llama)",
                              description="Export a model directory to another format.")
    sub = p.add_subparsers(dest="format", metavar="<format>", required=True)
    e = sub.add_parser("hf", help="write a directory transformers.AutoModelForCausalLM can load offline",
                       description="Write config.json + model.safetensors (+ tokenizer files with --tokenizer) "
                                   "in Hugging Face Llama format.")
    e.add_argument("model", help="our model directory (config.json + model.safetensors)")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--tokenizer", help="tokenizer file or directory to include (tokenizer.json for AutoTokenizer)")
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

    model = Transformer.from_pretrained(args.model)
    tokenizer = None
    if args.tokenizer:
        from scratchllm.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(args.tokenizer)
    export_hf(model, args.out, tokenizer)
    print(f"exported {args.model} to {args.out} (Hugging Face LlamaForCausalLM"
          f"{', with tokenizer' if tokenizer else ', no tokenizer: pass --tokenizer to include one'})")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from scratchllm.model.hf import import_hf

    model = import_hf(args.hf_dir)
    model.save_pretrained(args.out)
    print(f"imported {args.hf_dir} ({model.num_params() / 1e6:.2f}M parameters) to {args.out}")
    return 0
