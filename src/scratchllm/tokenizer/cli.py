"""``scratchllm tokenizer train|encode|decode|info``."""

from __future__ import annotations

import argparse
import sys

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.io import read_text
from scratchllm.tokenizer.bpe import Tokenizer
from scratchllm.tokenizer.config import TokenizerTrainConfig
from scratchllm.tokenizer.patterns import pattern_name
from scratchllm.tokenizer.run import run

DEFAULT_CONFIG = "configs/tokenizer/default.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train and use the byte-level BPE tokenizer",
                              description="Train, inspect and use the byte-level BPE tokenizer.")
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    t = sub.add_parser("train", help="train a tokenizer (embedded corpus by default)",
                       description="Train a BPE tokenizer and save it (ours + Hugging Face tokenizer.json).")
    add_config_arguments(t, DEFAULT_CONFIG, "tokenizer.vocab_size=8192")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are shown only when standard error is a terminal)")
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


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    # Progress bars only on a terminal: in a log file they are hundreds of lines of noise.
    result = run(cfg, progress=sys.stderr.isatty() and not args.no_progress)
    m = result.metrics
    print(f"trained a tokenizer of {m['vocab_size']} tokens in {m['seconds']:.1f}s; {m['bytes_per_token']:.2f} "
          f"bytes/token; saved to {result.outputs['tokenizer']}")
    return result.exit_code


def cmd_encode(args: argparse.Namespace) -> int:
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
    tok = Tokenizer.load(args.tokenizer)
    print(f"vocab size:     {tok.vocab_size}")
    print(f"merges:         {len(tok.merges)}")
    print(f"pattern:        {pattern_name(tok.pattern) or tok.pattern}")
    print(f"special tokens: {', '.join(f'{s}={i}' for s, i in tok.special_tokens.items()) or 'none'}")
    longest = sorted(range(256, 256 + len(tok.merges)), key=lambda i: -len(tok.id_to_bytes(i)))[:8]
    print("longest tokens: " + ", ".join(repr(tok.id_to_bytes(i).decode("utf-8", "replace")) for i in longest))
    return 0
