"""``scratchllm inspect tokens | embeddings | attention | memory``: look inside a tokenizer and a model."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse

from scratchllm.io import read_text

EXAMPLES = """examples:
  scratchllm inspect tokens --tokenizer runs/tok --text "Hello, world!" --corpus data/shakespeare.txt
  scratchllm inspect embeddings --model runs/pretrain --tokens " the" " king" --analogy " king" " man" " woman"
  scratchllm inspect attention --model runs/pretrain --sentence "The cat sat. The cat sat."
  scratchllm inspect memory --config configs/model/125m.toml --batch-size 8 --device-memory 24GiB
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="see inside: tokens, embeddings, attention, memory",
                              description="Write a PNG + a self-contained HTML page and print a summary.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", metavar="<what>", required=True)

    t = sub.add_parser("tokens", help="a text with its token boundaries; bytes/token; vocabulary usage")
    t.add_argument("--tokenizer", required=True, help="tokenizer directory/file (or a model directory holding one)")
    _text_arguments(t, "--text", "text to tokenize")
    t.add_argument("--corpus", nargs="+", default=[], help="UTF-8 files: vocabulary usage and frequent tokens")
    t.add_argument("--compare", default="", help="a second tokenizer shown side by side")
    t.add_argument("--max-corpus-bytes", type=int, default=20_000_000)
    t.add_argument("--out", default="inspect/tokens")
    t.set_defaults(func=cmd_tokens)

    e = sub.add_parser("embeddings", help="the embedding table in 2-D, neighbours, analogies, before/after")
    _model_arguments(e)
    e.add_argument("--tokens", nargs="+", default=[], help="tokens (exact text, e.g. ' the', or #ID) for neighbours")
    e.add_argument("--analogy", nargs=3, action="append", default=[], metavar=("A", "B", "C"),
                   help="A - B + C = ? (repeatable)")
    e.add_argument("--before", default="", help="an earlier checkpoint of the same model (e.g. step 0)")
    e.add_argument("--method", choices=("pca", "tsne", "umap"), default="pca")
    e.add_argument("-k", type=int, default=8, help="neighbours per token (default 8)")
    e.add_argument("--out", default="inspect/embeddings")
    e.set_defaults(func=cmd_embeddings)

    a = sub.add_parser("attention", help="attention weights of every layer and head for a sentence")
    _model_arguments(a)
    _text_arguments(a, "--sentence", "the sentence to trace")
    a.add_argument("--bos", action="store_true", help="start with <|bos|>, as training documents do")
    a.add_argument("--out", default="inspect/attention")
    a.set_defaults(func=cmd_attention)

    m = sub.add_parser("memory", help="bytes of a training step; the largest model that fits a device")
    m.add_argument("--config", default="", help="model directory, or a TOML preset (configs/model/*.toml)")
    m.add_argument("overrides", nargs="*", metavar="key=value", help="model config overrides, e.g. n_layers=12")
    m.add_argument("--batch-size", type=int, default=8, help="micro-batch size (default 8)")
    m.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (default: the context length)")
    m.add_argument("--device-memory", default="", help="device memory, e.g. 24GiB: shows the largest model that fits")
    m.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    m.add_argument("--activation-checkpointing", choices=("none", "full"), default="none")
    m.add_argument("--grad-accum", type=int, default=1)
    m.add_argument("--fsdp-ranks", type=int, default=1)
    m.add_argument("--method", choices=("full", "lora", "qlora"), default="full")
    m.add_argument("--lora-rank", type=int, default=8)
    m.add_argument("--measure", action="store_true", help="also measure one real CPU training step (small models)")
    m.add_argument("--out", default="inspect/memory")
    m.set_defaults(func=cmd_memory)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, checkpoint, or training run directory")
    p.add_argument("--tokenizer", help="tokenizer directory or file (default: the one with the model)")


def _text_arguments(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(flag, dest="text", help=f"{what} (default: a built-in example)")
    g.add_argument(f"{flag}-file", dest="text_file", help="read it from a UTF-8 file")


def _text(args: argparse.Namespace, default: str) -> str:
    if args.text_file:
        return read_text(args.text_file)
    return default if args.text is None else args.text


def cmd_tokens(args: argparse.Namespace) -> int:
    from scratchllm.inspect.tokens import DEFAULT_TEXT, TokensConfig, run

    print(run(TokensConfig(tokenizer=args.tokenizer, out=args.out, text=_text(args, DEFAULT_TEXT),
                           corpus=args.corpus, compare=args.compare, max_corpus_bytes=args.max_corpus_bytes)))
    return 0


def cmd_embeddings(args: argparse.Namespace) -> int:
    from scratchllm.inspect.embeddings import EmbeddingsConfig, run

    print(run(EmbeddingsConfig(model=args.model, tokenizer=args.tokenizer, out=args.out, tokens=args.tokens,
                               analogies=[tuple(a) for a in args.analogy], before=args.before, method=args.method,
                               k=args.k)))
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from scratchllm.inspect.attention import DEFAULT_SENTENCE, AttentionConfig, run

    print(run(AttentionConfig(model=args.model, tokenizer=args.tokenizer, out=args.out,
                              sentence=_text(args, DEFAULT_SENTENCE), bos=args.bos)))
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from scratchllm.inspect.memory import MemoryConfig, run

    print(run(MemoryConfig(model=args.config, overrides=args.overrides, batch_size=args.batch_size,
                           seq_len=args.seq_len, device_memory=args.device_memory, precision=args.precision,
                           activation_checkpointing=args.activation_checkpointing, grad_accum=args.grad_accum,
                           fsdp_ranks=args.fsdp_ranks, method=args.method, lora_rank=args.lora_rank, out=args.out,
                           measure=args.measure)))
    return 0
