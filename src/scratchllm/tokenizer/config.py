"""The ``scratchllm tokenizer train`` config (configs/tokenizer/*.toml).

    out_dir = "runs/tokenizer"
    [corpus]     the embedded corpus, your own files, or data-stage sources; a byte cap per domain
    [tokenizer]  vocab_size, split pattern, special tokens, min_frequency
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.config import from_dict
from scratchllm.corpus.config import SourceConfig
from scratchllm.errors import ScratchError


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

    def source_configs(self) -> list[SourceConfig]:
        """The corpus as data-stage sources (one mechanism for files, folders and the embedded corpus)."""
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
    out_dir: Path = Path("runs/tokenizer")  # the tokenizer directory (ours + Hugging Face tokenizer.json)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: BPEConfig = field(default_factory=BPEConfig)
