"""``scratchllm inspect tokens | embeddings | attention | memory``: look inside a tokenizer and a model."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import dataclasses
from pathlib import Path

from scratchllm.cli import add_alias, add_config_arguments, config_overrides, toml_literal
from scratchllm.config import load_config, parse_override, read_toml
from scratchllm.inspect.config import AttentionConfig, EmbeddingsConfig, MemoryConfig, TokensConfig

EXAMPLES = """examples:
  scratchllm inspect tokens tokenizer=runs/tok text="Hello, world!" corpus='["data/shakespeare.txt"]'
  scratchllm inspect tokens --tokenizer runs/tok --text "Hello, world!" --corpus data/shakespeare.txt
  scratchllm inspect embeddings --model runs/pretrain --tokens " the" " king" --analogy " king" " man" " woman"
  scratchllm inspect attention model=runs/pretrain sentence="The cat sat. The cat sat." out_dir=inspect/att
  scratchllm inspect memory model=model/125m batch_size=8 device_memory=24GiB
  scratchllm inspect memory --config my-memory.toml n_layers=24   (old form: --config configs/model/125m.toml)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="see inside: tokens, embeddings, attention, memory",
                              description="Write a PNG + a self-contained HTML page and print a summary. Each "
                                          "command takes --config FILE and key=value overrides (the settings of "
                                          "scratchllm.inspect.config); its flags are aliases of those keys.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", metavar="<what>", required=True)

    t = sub.add_parser("tokens", help="a text with its token boundaries; bytes/token; vocabulary usage",
                       description="Settings: TokensConfig in scratchllm.inspect.config, e.g. tokenizer=runs/tok "
                                   "text='Hello'.")
    add_config_arguments(t, None, "max_corpus_bytes=1000000")
    add_alias(t, "--tokenizer", key="tokenizer", help="tokenizer directory/file (or a model directory holding one)")
    _text_aliases(t, "--text", "text", "text to tokenize")
    add_alias(t, "--corpus", key="corpus", nargs="+", help="UTF-8 files: vocabulary usage and frequent tokens")
    add_alias(t, "--compare", key="compare", help="a second tokenizer shown side by side")
    add_alias(t, "--max-corpus-bytes", key="max_corpus_bytes", type=int)
    add_alias(t, "--out", key="out_dir", help="output directory (default inspect/tokens)")
    t.set_defaults(func=cmd_tokens)

    e = sub.add_parser("embeddings", help="the embedding table in 2-D, neighbours, analogies, before/after",
                       description="Settings: EmbeddingsConfig in scratchllm.inspect.config, e.g. model=runs/x "
                                   "tokens='[\" the\"]'.")
    add_config_arguments(e, None, "k=4")
    _model_aliases(e)
    add_alias(e, "--tokens", key="tokens", nargs="+", help="tokens (exact text, e.g. ' the', or #ID) for neighbours")
    add_alias(e, "--analogy", key="analogies", nargs=3, action="append", metavar=("A", "B", "C"),
              help="A - B + C = ? (repeatable)")
    add_alias(e, "--before", key="before", help="an earlier checkpoint of the same model (e.g. step 0)")
    add_alias(e, "--method", key="method", choices=("pca", "tsne", "umap"), help="projection (default pca)")
    add_alias(e, "-k", key="k", type=int, help="neighbours per token (default 8)")
    add_alias(e, "--out", key="out_dir", help="output directory (default inspect/embeddings)")
    e.set_defaults(func=cmd_embeddings)

    a = sub.add_parser("attention", help="attention weights of every layer and head for a sentence",
                       description="Settings: AttentionConfig in scratchllm.inspect.config, e.g. model=runs/x "
                                   "sentence='The cat sat.'.")
    add_config_arguments(a, None, "bos=true")
    _model_aliases(a)
    _text_aliases(a, "--sentence", "sentence", "the sentence to trace")
    add_alias(a, "--bos", key="bos", action="store_true", help="start with <|bos|>, as training documents do")
    add_alias(a, "--out", key="out_dir", help="output directory (default inspect/attention)")
    a.set_defaults(func=cmd_attention)

    m = sub.add_parser("memory", help="bytes of a training step; the largest model that fits a device",
                       description="Settings: MemoryConfig in scratchllm.inspect.config, e.g. model=model/125m "
                                   "batch_size=8 device_memory=24GiB. ModelConfig keys (n_layers=12, or "
                                   "model_keys.n_layers=12) change the model. As before, --config may also name "
                                   "the model itself: a model directory, a model preset or a stage config with a "
                                   "[model] table.")
    add_config_arguments(m, None, "batch_size=4")
    add_alias(m, "--batch-size", key="batch_size", type=int, help="micro-batch size (default 8)")
    add_alias(m, "--seq-len", key="seq_len", type=int, help="tokens per sequence (default: the context length)")
    add_alias(m, "--device-memory", key="device_memory", help="device memory, e.g. 24GiB: the largest model that fits")
    add_alias(m, "--precision", key="precision", choices=("fp32", "bf16"), help="default fp32")
    add_alias(m, "--activation-checkpointing", key="activation_checkpointing", choices=("none", "full"),
              help="default none")
    add_alias(m, "--grad-accum", key="grad_accum", type=int)
    add_alias(m, "--fsdp-ranks", key="fsdp_ranks", type=int)
    add_alias(m, "--method", key="method", choices=("full", "lora", "qlora"), help="default full")
    add_alias(m, "--lora-rank", key="lora_rank", type=int)
    add_alias(m, "--measure", key="measure", action="store_true",
              help="also measure one real CPU training step (small models)")
    add_alias(m, "--out", key="out_dir", help="output directory (default inspect/memory)")
    m.set_defaults(func=cmd_memory)


def _model_aliases(p: argparse.ArgumentParser) -> None:
    add_alias(p, "--model", key="model", help="model directory, checkpoint, or training run directory")
    add_alias(p, "--tokenizer", key="tokenizer", help="tokenizer directory or file (default: the one with the model)")


def _text_aliases(p: argparse.ArgumentParser, flag: str, key: str, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    add_alias(g, flag, key=key, help=f"{what} (default: a built-in example)")
    add_alias(g, f"{flag}-file", key=f"{key}_file", help="read it from a UTF-8 file")


def cmd_tokens(args: argparse.Namespace) -> int:
    from scratchllm.inspect.tokens import run

    print(run(load_config(TokensConfig, args.config, config_overrides(args))).metrics["summary"])
    return 0


def cmd_embeddings(args: argparse.Namespace) -> int:
    from scratchllm.inspect.embeddings import run

    print(run(load_config(EmbeddingsConfig, args.config, config_overrides(args))).metrics["summary"])
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from scratchllm.inspect.attention import run

    print(run(load_config(AttentionConfig, args.config, config_overrides(args))).metrics["summary"])
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from scratchllm.inspect.memory import run

    print(run(memory_config(args.config, config_overrides(args))).metrics["summary"])
    return 0


MEMORY_KEYS = {f.name for f in dataclasses.fields(MemoryConfig)}


def memory_config(config: str | None, overrides: list[str]) -> MemoryConfig:
    """MemoryConfig from --config and key=value, accepting the command's older forms too: --config naming the
    model (a directory, a model preset, a stage config with a [model] table) and bare ModelConfig keys
    (``n_layers=12``, ``model.n_layers=12``) as overrides of ``model_keys``."""
    items = []
    for item in overrides:
        key = parse_override(item)[0]
        if key.startswith("model."):
            item = "model_keys." + item.removeprefix("model.")
        elif key.split(".")[0] not in MEMORY_KEYS:
            item = "model_keys." + item
        items.append(item)
    if config is not None and (Path(config).is_dir() or not set(read_toml(config)) <= MEMORY_KEYS):
        return load_config(MemoryConfig, None, [f"model={toml_literal(config)}", *items])
    return load_config(MemoryConfig, config, items)
