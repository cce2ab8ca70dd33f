"""The ``scratchllm data prepare`` config: one dataclass per stage, loaded from configs/data/*.toml.

Every step that only makes sense for some kinds of text (a stop-word filter for prose, a line-length
filter for code) has a ``domains`` list; an empty list means "all domains".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.corpus.config import CleanConfig, SourceConfig, check_domain_name
from scratchllm.errors import ScratchError

@dataclass
class LengthFilter:
    enabled: bool = True
    domains: list[str] = field(default_factory=list)
    min_words: int = 50
    max_words: int = 100_000
    min_chars: int = 0


@dataclass
class WordLengthFilter:
    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["prose"])
    min_mean: float = 3.0
    max_mean: float = 10.0


@dataclass
class SymbolFilter:
    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["prose"])
    max_symbol_word_ratio: float = 0.1  # '#' and ellipses per word
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8  # fraction of words containing at least one letter


@dataclass
class RepetitionFilter:
    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["prose"])
    max_dup_lines: float = 0.3  # fraction of lines that repeat an earlier line
    max_dup_line_chars: float = 0.2  # fraction of characters in such lines
    max_dup_paragraphs: float = 0.3
    max_dup_paragraph_chars: float = 0.2
    # {n: max fraction of word characters in the most frequent n-gram}, Gopher: 2-4
    max_top_ngram: dict[str, float] = field(default_factory=lambda: {"2": 0.2, "3": 0.18, "4": 0.16})
    # {n: max fraction of word characters covered by n-grams that occur more than once}, Gopher: 5-10
    max_dup_ngram: dict[str, float] = field(
        default_factory=lambda: {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10}
    )


@dataclass
class StopwordFilter:
    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["prose"])
    min_count: int = 2
    words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])


@dataclass
class LanguageFilter:
    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["prose"])
    language: Literal["en"] = "en"
    min_latin: float = 0.9  # fraction of letters that are Latin script
    min_common_words: float = 0.1  # fraction of words that are frequent English function words


@dataclass
class LineFilter:
    """C4/FineWeb line heuristics."""

    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["prose"])
    min_punct_lines: float = 0.0  # FineWeb uses 0.12: fraction of lines ending in . ! ? " etc.
    max_short_lines: float = 1.0  # FineWeb uses 0.67: fraction of lines shorter than 30 characters
    bad_phrases: list[str] = field(default_factory=lambda: ["lorem ipsum"])


@dataclass
class CodeFilter:
    """The Stack / StarCoder heuristics for source files."""

    enabled: bool = True
    domains: list[str] = field(default_factory=lambda: ["code"])
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25


@dataclass
class FiltersConfig:
    length: LengthFilter = field(default_factory=LengthFilter)
    word_length: WordLengthFilter = field(default_factory=WordLengthFilter)
    symbols: SymbolFilter = field(default_factory=SymbolFilter)
    repetition: RepetitionFilter = field(default_factory=RepetitionFilter)
    stopwords: StopwordFilter = field(default_factory=StopwordFilter)
    language: LanguageFilter = field(default_factory=LanguageFilter)
    lines: LineFilter = field(default_factory=LineFilter)
    code: CodeFilter = field(default_factory=CodeFilter)

    def validate(self) -> None:
        for n in [*self.repetition.max_top_ngram, *self.repetition.max_dup_ngram]:
            if not n.isdigit() or int(n) < 1:
                raise ScratchError(f"filters.repetition: n-gram size {n!r} must be a positive integer")


@dataclass
class PiiConfig:
    enabled: bool = True
    domains: list[str] = field(default_factory=list)
    emails: bool = True
    ips: bool = True
    email_replacement: str = "email@example.com"
    ip_replacement: str = "0.0.0.0"


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # estimated Jaccard similarity of word n-gram sets above which a doc is a near-duplicate
    num_perm: int = 128
    ngram: int = 5  # words per shingle
    seed: int = 1
    scheme: Literal["affine32", "legacy"] = "affine32"  # datasketch's permutation schemes
    bands: int = 0  # 0 = choose bands x rows from threshold (as datasketch does)
    rows: int = 0
    # Weights of false positives / false negatives when choosing bands x rows. Candidates are verified
    # against the threshold with the full signature, so favouring recall is cheap.
    false_positive_weight: float = 0.1
    false_negative_weight: float = 0.9
    batch_docs: int = 512

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ScratchError(f"dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.ngram < 1 or self.batch_docs < 1:
            raise ScratchError("dedup.num_perm must be >= 2, dedup.ngram and dedup.batch_docs >= 1")
        if (self.bands > 0) != (self.rows > 0):
            raise ScratchError("dedup.bands and dedup.rows must be set together (or both 0 for automatic)")
        if self.bands * self.rows > self.num_perm:
            raise ScratchError(
                f"dedup.bands x dedup.rows = {self.bands * self.rows} exceeds dedup.num_perm = {self.num_perm}"
            )


@dataclass
class DecontamConfig:
    """Drop (or flag) training documents sharing a 13-gram of normalised words with an evaluation set."""

    enabled: bool = True
    action: Literal["drop", "flag"] = "drop"  # flag: keep the document, count it (and mark it in kept.jsonl)
    # "builtin" = every built-in eval task; also task names, task .toml specs, data files (PATH or NAME=PATH)
    tasks: list[str] = field(default_factory=lambda: ["builtin"])
    ngram: int = 13
    min_words: int = 8  # shorter evaluation texts are too generic to match on
    domains: list[str] = field(default_factory=list)  # empty = all

    def validate(self) -> None:
        if self.ngram < 1 or not 1 <= self.min_words <= self.ngram:
            raise ScratchError("decontam.ngram must be >= 1 and 1 <= decontam.min_words <= decontam.ngram")


@dataclass
class MixConfig:
    # {domain: weight}; weights are normalised. Empty = keep every domain at its natural size.
    weights: dict[str, float] = field(default_factory=dict)
    # Tokens in the training mixture; 0 = the largest mixture with no domain repeated more than
    # max_upsample times.
    total_tokens: int = 0
    max_upsample: float = 1.0

    def validate(self) -> None:
        if any(w < 0 for w in self.weights.values()) or (self.weights and sum(self.weights.values()) <= 0):
            raise ScratchError("mix.weights must be non-negative and not all zero")
        for name in self.weights:
            check_domain_name(name, "mix.weights")
        if self.total_tokens < 0 or self.max_upsample < 1.0:
            raise ScratchError("mix.total_tokens must be >= 0 and mix.max_upsample >= 1")


@dataclass
class DataConfig:
    out_dir: Path = Path("runs/data")
    tokenizer: Path = Path("runs/tokenizer")
    seed: int = 1337
    val_fraction: float = 0.01  # of each domain's documents, taken before any up-sampling
    shard_tokens: int = 16 * 1024 * 1024
    batch_docs: int = 256  # documents per tokenizer call
    # Worker processes for the per-document steps (clean, filter, PII, decontamination, MinHash,
    # tokenize); 0 or None = every core. The output is identical for any number.
    num_workers: int | None = 0
    executor: Literal["local", "ray"] = "local"  # ray: the per-document steps run as Ray tasks (pip install ray)
    ray_address: str = ""  # "" = start a local Ray instance (or join RAY_ADDRESS); "auto" = the running cluster
    # Pass 1 saves a checkpoint this often (seconds; 0 = never) so that an interrupted run continues
    # from it instead of starting over. Not with debug_dump (its files are written in one go).
    checkpoint_seconds: float = 300.0
    keep_staging: bool = True  # keep per-domain staged tokens so a rerun with a new mix skips stage 1
    debug_dump: bool = False  # also write kept.jsonl and removed.jsonl (with reasons) to out_dir
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    clean: CleanConfig = field(default_factory=CleanConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    mix: MixConfig = field(default_factory=MixConfig)

    def validate(self) -> None:
        if not self.sources:
            raise ScratchError("no data sources configured", "add a [[sources]] table to the config")
        # A weighted domain no source produces would fail only after ingest: say so before anything runs.
        produced = {d for s in self.sources for d in (s.domains if s.kind == "embedded" else [s.domain])}
        missing = sorted(d for d, w in self.mix.weights.items() if w > 0 and d not in produced)
        if missing:
            raise ScratchError(
                f"mix.weights: no source produces domain {missing[0]!r} "
                f"(the sources give: {', '.join(sorted(produced))})",
                "add a source with that domain, or set mix.weights to your domains only, e.g. mix.weights={prose=1.0}",
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ScratchError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens < 1024 or self.batch_docs < 1:
            raise ScratchError("shard_tokens must be >= 1024 and batch_docs >= 1")
        if self.checkpoint_seconds < 0:
            raise ScratchError(f"checkpoint_seconds must be >= 0 (0 = no checkpoints), got {self.checkpoint_seconds}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ScratchError(f"num_workers must be >= 0 (0 = every core), got {self.num_workers}")
