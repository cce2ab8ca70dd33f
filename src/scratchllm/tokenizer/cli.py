"""``scratchllm tokenizer train|encode|decode|info``."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchllm.cli import add_config_arguments
from scratchllm.config import from_dict, load_config, to_toml
from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text, read_text
from scratchllm.tokenizer.bpe import Tokenizer, train_bpe
from scratchllm.tokenizer.chat import DEFAULT_SPECIAL_TOKENS
from scratchllm.tokenizer.patterns import pattern_name

DEFAULT_CONFIG = "configs/tokenizer/default.toml"


@dataclass
class CorpusConfig:
    """What to train on: the embedded corpus, your own files, or data-stage sources.

    Files are read by the data stage's ingest, exactly as ``data prepare`` reads them: every format it
    knows (gzip, JSONL's text field, Markdown, HTML, ...), its cleaning, and unreadable or undecodable
    files skipped and counted rather than trained on as bytes.
    """

    files: list[str] = field(default_factory=list)  # files, folders or globs (a data 'files' source)
    format: str = "auto"  # as a data source's format: auto (by extension), text, jsonl, markdown, html
    text_field: str = "text"  # JSONL: the field holding the text
    domains: list[str] = field(default_factory=lambda: ["prose", "code"])  # embedded corpus, when no files
    # Data-stage [[sources]] tables (embedded, files, synthetic); the pipeline puts data.sources here.
    sources: list[dict[str, Any]] = field(default_factory=list)
    max_bytes_per_domain: int = 2_000_000  # at most this much text of each domain (0: no cap)

    def validate(self) -> None:
        if self.files and self.sources:
            raise ScratchError("corpus.files and corpus.sources are both set", "use one of them")
        if self.max_bytes_per_domain < 0:
            raise ScratchError("corpus.max_bytes_per_domain must be >= 0 (0: no cap)")
        for src in self.source_configs():
            if src.kind == "model":
                raise ScratchError("corpus.sources: a 'model' source cannot train a tokenizer",
                                   "leave it out of the tokenizer's sources")

    def source_configs(self) -> list:  # -> list[SourceConfig]
        """The corpus as data-stage sources (one mechanism for files, folders and the embedded corpus)."""
        from scratchllm.corpus.config import SourceConfig

        if self.sources:
            return [from_dict(SourceConfig, s, f"corpus.sources[{i}]") for i, s in enumerate(self.sources)]
        if self.files:
            return [from_dict(SourceConfig, {"kind": "files", "paths": self.files, "format": self.format,
                                             "text_field": self.text_field, "domain": "files"}, "corpus")]
        return [from_dict(SourceConfig, {"kind": "embedded", "domains": self.domains}, "corpus")]


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


def training_texts(cfg: CorpusConfig, progress: bool = False) -> tuple[list[str], str]:
    """The cleaned documents to train on, and a one-line ingest summary (what was read and skipped)."""
    from scratchllm.corpus.clean import Cleaner
    from scratchllm.corpus.config import CleanConfig
    from scratchllm.corpus.embedded import embedded_documents
    from scratchllm.corpus.ingest import IngestStats, read_files, resolve_paths
    from scratchllm.corpus.synthetic import synthetic_documents

    stats, cleaner = IngestStats(), Cleaner(CleanConfig())
    cap = cfg.max_bytes_per_domain or None
    used: dict[str, int] = {}
    texts: list[str] = []
    bar = tqdm(desc="read corpus", unit="doc", disable=not progress)
    for src in cfg.source_configs():
        if src.kind == "embedded":
            limits = [x for x in (cap, src.max_bytes_per_domain) if x]
            docs = embedded_documents(src.domains, min(limits) if limits else None)  # capped per domain
        elif src.kind == "files":
            docs = read_files(resolve_paths(src.paths), src.domain, stats, src.format, src.text_field,
                              src.max_document_bytes)
        else:  # synthetic
            docs = synthetic_documents(src.generators, src.count, src.seed, src.domain)
        for doc in docs:
            if cap is not None and used.get(doc.domain, 0) >= cap:
                if src.kind == "embedded":
                    continue  # its next domain may still have room
                break  # a files or synthetic source is one domain: the rest would be dropped too
            text = cleaner(doc.text, doc.domain)
            if text:
                used[doc.domain] = used.get(doc.domain, 0) + len(text.encode("utf-8"))
                texts.append(text)
                bar.update()
    bar.close()
    summary = f"{stats.files} files read" if stats.files else "embedded/synthetic text"
    if stats.skipped:
        summary += f", {stats.skipped} skipped ({'; '.join(stats.problems[:3])})"
    if stats.files and not texts:
        raise ScratchError("the training corpus is empty: no text survived ingest and cleaning",
                           "every input was skipped: " + "; ".join(stats.problems[:3]) if stats.skipped
                           else "check corpus.files")
    return texts, summary


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    # Progress bars only on a terminal: in a log file they are hundreds of lines of noise.
    progress = sys.stderr.isatty() and not args.no_progress
    texts, summary = training_texts(cfg.corpus, progress)
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"training BPE: vocab {cfg.tokenizer.vocab_size}, pattern {cfg.tokenizer.pattern}, "
          f"{len(texts)} documents, {size / 1e6:.2f} MB ({summary})", file=sys.stderr)
    start = time.perf_counter()
    tok = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.pattern,
                    cfg.tokenizer.special_tokens or list(DEFAULT_SPECIAL_TOKENS),
                    cfg.tokenizer.min_frequency, progress=progress)
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
