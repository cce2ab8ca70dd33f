"""Configs of the raw-text layer: one input source (``SourceConfig``) and text cleaning (``CleanConfig``).

They sit in the corpus package because both the tokenizer's training corpus and ``data prepare`` read
their input through them; ``data/config.py`` builds the curation stage's config on top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from scratchllm.corpus.ingest import parse_where
from scratchllm.errors import ScratchError

SYNTHETIC_GENERATORS = ("arithmetic", "grammar", "code", "tasks")


def check_domain_name(name: str, where: str) -> None:
    """Domain names appear in file names: letters, digits, '-' and '_' only."""
    if name and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ScratchError(f"{where}: bad domain name {name!r}", "use letters, digits, '-' and '_' only")


@dataclass
class SourceConfig:
    """One input. ``kind`` picks which of the other keys matter:

    * ``embedded``  - the corpus shipped with Python: ``domains``, ``max_bytes_per_domain``.
    * ``files``     - ``paths`` (files, folders, globs, ``datasets.save_to_disk`` folders), ``format``,
      ``text_field`` (JSONL field or Parquet/Arrow column), ``where`` (conditions on other fields), ``domain``.
    * ``synthetic`` - template/grammar generators: ``generators``, ``count``, ``seed``, ``domain``.
    * ``hub``       - a dataset streamed with the ``datasets`` library (optional, ``pip install datasets``):
      ``dataset`` (hub name, or a builder such as "parquet" with ``data_files``), ``subset``, ``split``,
      ``data_files``, ``text_field``, ``where``, ``max_documents``, ``domain``. Never needed: local files
      of the same data read faster with ``kind = "files"``.
    * ``model``     - continuations sampled from a trained checkpoint: ``checkpoint``, ``prompts``,
      ``count``, ``max_new_tokens``, ``temperature``, ``top_k``, ``seed``, ``domain``.
    """

    kind: Literal["embedded", "files", "synthetic", "model", "hub"] = "embedded"
    domain: str = ""
    # embedded
    domains: list[str] = field(default_factory=lambda: ["prose", "code"])
    max_bytes_per_domain: int | None = None
    # files
    paths: list[str] = field(default_factory=list)
    format: Literal["auto", "text", "jsonl", "markdown", "html", "parquet", "arrow"] = "auto"
    text_field: str = "text"
    # Conditions on a record's other fields/columns, all of which must hold: "language == 'en'", "score >= 3".
    where: list[str] = field(default_factory=list)
    # hub
    dataset: str = ""
    subset: str = ""
    split: str = "train"
    data_files: list[str] = field(default_factory=list)
    max_documents: int = 0  # 0 = all
    max_document_bytes: int = 1_000_000
    # synthetic / model
    generators: list[str] = field(default_factory=lambda: list(SYNTHETIC_GENERATORS))
    count: int = 100
    seed: int = 0
    checkpoint: str = ""
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 50

    def validate(self) -> None:
        for name in [self.domain] if self.kind != "embedded" else self.domains:
            check_domain_name(name, "sources")
        if self.kind in ("files", "synthetic", "model", "hub") and not self.domain:
            raise ScratchError(f"sources: a {self.kind!r} source needs a 'domain'", 'add e.g. domain = "prose"')
        if self.kind == "files" and not self.paths:
            raise ScratchError("sources: a 'files' source needs 'paths'", 'add e.g. paths = ["my_texts/"]')
        if self.kind == "hub" and not self.dataset:
            raise ScratchError("sources: a 'hub' source needs 'dataset'", 'add e.g. dataset = "HuggingFaceFW/fineweb-edu"')
        if self.where:
            parse_where(self.where)
        if self.kind == "model" and not self.checkpoint:
            raise ScratchError("sources: a 'model' source needs 'checkpoint'", 'add e.g. checkpoint = "runs/model"')
        if self.kind == "synthetic":
            bad = [g for g in self.generators if g not in SYNTHETIC_GENERATORS]
            if bad or not self.generators:
                raise ScratchError(
                    f"sources: unknown synthetic generator {bad[0] if bad else '(none)'!r}",
                    f"choose from {', '.join(SYNTHETIC_GENERATORS)}",
                )
        for key in ("count", "max_document_bytes", "max_new_tokens", "top_k"):
            if getattr(self, key) < 1:
                raise ScratchError(f"sources: {key!r} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ScratchError(f"sources: 'temperature' must be > 0, got {self.temperature}")


@dataclass
class CleanConfig:
    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    remove_control: bool = True  # C0/C1 control characters except tab and newline, zero-width chars
    normalize_whitespace: bool = True  # \r\n -> \n, odd spaces -> ' ', strip line ends, cap blank lines
    max_blank_lines: int = 2
    # Lines matching any of these regexes (case-insensitive, searched anywhere in the line) are dropped.
    boilerplate: list[str] = field(default_factory=list)
    boilerplate_domains: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for pattern in self.boilerplate:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ScratchError(f"clean.boilerplate: bad regex {pattern!r}: {e}") from None
        if self.max_blank_lines < 0:
            raise ScratchError("clean.max_blank_lines must be >= 0")
