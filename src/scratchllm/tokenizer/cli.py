"""``scratchllm tokenizer train|encode|decode|info``."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.config import load_config, to_toml
from scratchllm.errors import ScratchError

DEFAULT_CONFIG = "configs/tokenizer/default.toml"


@dataclass
class CorpusConfig:
    """What to train on: the embedded corpus, or the user's own UTF-8 files (paths or globs)."""

    files: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=lambda: ["prose", "code"])
    max_bytes_per_domain: int = 2_000_000
    errors: Literal["strict", "replace"] = "strict"


@dataclass
class BPEConfig:
    vocab_size: int = 4096
    pattern: str = "gpt4"
    special_tokens: list[str] = field(default_factory=list)  # empty: the default set
    min_frequency: int = 2

    def validate(self) -> None:
        if self.min_frequency < 1:
            raise ScratchError("config key 'tokenizer.min_frequency' must be >= 1")


@dataclass
class TokenizerTrainConfig:
    output: str = "runs/tokenizer"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: BPEConfig = field(default_factory=BPEConfig)


def register(subparsers: argparse._SubParsersAction) -> None:
    from scratchllm.cli import add_config_arguments

    p = subparsers.add_parser("tokenizer", help="train and use the byte-level BPE tokenizer",
                              description="Train, inspect and use the byte-level BPE tokenizer.")
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    t = sub.add_parser("train", help="train a tokenizer (embedded corpus by default)",
                       description="Train a BPE tokenizer and save it (ours + Hugging Face tokenizer.json).")
    add_config_arguments(t, DEFAULT_CONFIG, "tokenizer.vocab_size=8192")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="print the token ids of a text")
    e.add_argument("tokenizer", help="tokenizer directory or file")
    e.add_argument("text", nargs="?", help="text to encode (default: read --file or standard input)")
    e.add_argument("--file", help="UTF-8 file to encode")
    e.add_argument("--allow-special", action="store_true", help="recognise special tokens like <|eos|> in the text")
    e.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8 in --file: fail (strict) or substitute U+FFFD (replace)")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="print the text of token ids")
    d.add_argument("tokenizer", help="tokenizer directory or file")
    d.add_argument("ids", nargs="*", help="token ids (default: read from standard input)")
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="show vocab size, pattern, special tokens and sample tokens")
    i.add_argument("tokenizer", help="tokenizer directory or file")
    i.set_defaults(func=cmd_info)


def _training_texts(cfg: CorpusConfig) -> list[str]:
    from scratchllm.data.corpus import embedded_documents
    from scratchllm.io import read_text

    if not cfg.files:
        return [d.text for d in embedded_documents(cfg.domains, cfg.max_bytes_per_domain)]
    paths: list[Path] = []
    for pattern in cfg.files:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ScratchError(f"no files match {pattern!r}", "check the path or glob in corpus.files")
        for m in map(Path, matches):
            paths.extend(sorted(x for x in m.rglob("*") if x.is_file()) if m.is_dir() else [m])
    return [read_text(p, errors=cfg.errors, lossy_option="corpus.errors=replace") for p in paths]


def cmd_train(args: argparse.Namespace) -> int:
    from scratchllm.io import atomic_write_text
    from scratchllm.tokenizer.bpe import DEFAULT_SPECIAL_TOKENS, train_bpe

    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    texts = _training_texts(cfg.corpus)
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"training BPE: vocab {cfg.tokenizer.vocab_size}, pattern {cfg.tokenizer.pattern}, "
          f"{len(texts)} documents, {size / 1e6:.2f} MB", file=sys.stderr)
    start = time.perf_counter()
    tok = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.pattern,
                    cfg.tokenizer.special_tokens or list(DEFAULT_SPECIAL_TOKENS),
                    cfg.tokenizer.min_frequency, progress=True)
    elapsed = time.perf_counter() - start
    out = tok.save_pretrained(cfg.output)
    atomic_write_text(out / "train_config.toml", to_toml(cfg))
    if tok.vocab_size < cfg.tokenizer.vocab_size:
        print(f"note: corpus too small for the vocab asked; stopped at {tok.vocab_size} "
              f"(no pair occurs {cfg.tokenizer.min_frequency}+ times)", file=sys.stderr)
    n_tokens = sum(len(tok.encode_ordinary(t)) for t in texts[:200])
    n_bytes = sum(len(t.encode("utf-8")) for t in texts[:200])
    print(f"trained {tok} in {elapsed:.1f}s; {n_bytes / max(n_tokens, 1):.2f} bytes/token; saved to {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from scratchllm.io import read_text
    from scratchllm.tokenizer.bpe import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    if args.text is not None:
        text = args.text
    elif args.file:
        text = read_text(args.file, errors=args.errors)
    else:
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8", errors=args.errors)
        except UnicodeDecodeError as e:
            raise ScratchError(f"standard input is not valid UTF-8 (bad byte at offset {e.start})",
                               "pass --errors replace, or convert the input to UTF-8") from None
    ids = tok.encode(text, allowed_special="all" if args.allow_special else "none")
    print(" ".join(map(str, ids)))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from scratchllm.tokenizer.bpe import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    raw = args.ids or sys.stdin.read().split()
    try:
        ids = [int(x) for x in raw]
    except ValueError:
        bad = next(x for x in raw if not x.lstrip("-").isdigit())
        raise ScratchError(f"not a token id: {bad!r}", "pass whitespace-separated integers") from None
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from scratchllm.tokenizer.bpe import Tokenizer
    from scratchllm.tokenizer.patterns import pattern_name

    tok = Tokenizer.load(args.tokenizer)
    print(f"vocab size:     {tok.vocab_size}")
    print(f"merges:         {len(tok.merges)}")
    print(f"pattern:        {pattern_name(tok.pattern) or tok.pattern}")
    print(f"special tokens: {', '.join(f'{s}={i}' for s, i in tok.special_tokens.items()) or 'none'}")
    longest = sorted(range(256, 256 + len(tok.merges)), key=lambda i: -len(tok.id_to_bytes(i)))[:8]
    print("longest tokens: " + ", ".join(repr(tok.id_to_bytes(i).decode("utf-8", "replace")) for i in longest))
    return 0
