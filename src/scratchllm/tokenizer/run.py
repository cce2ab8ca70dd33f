"""Training a tokenizer from a TokenizerTrainConfig: read the corpus, learn the merges, save.

``run(config)`` is the tokenizer stage, called by ``scratchllm tokenizer train`` and the pipeline alike.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from scratchllm.config import to_toml
from scratchllm.corpus.clean import Cleaner
from scratchllm.corpus.config import CleanConfig
from scratchllm.corpus.embedded import embedded_documents
from scratchllm.corpus.ingest import IngestStats, read_files, resolve_paths
from scratchllm.corpus.synthetic import synthetic_documents
from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text
from scratchllm.stage import StageResult
from scratchllm.tokenizer.bpe import train_bpe
from scratchllm.tokenizer.chat import DEFAULT_SPECIAL_TOKENS
from scratchllm.tokenizer.config import CorpusConfig, TokenizerTrainConfig


def training_texts(cfg: CorpusConfig, progress: bool = False) -> tuple[list[str], str]:
    """The cleaned documents to train on, and a one-line ingest summary (what was read and skipped)."""
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


def run(cfg: TokenizerTrainConfig, progress: bool = False) -> StageResult:
    """Train and save the tokenizer (``out_dir``, with the config as train_config.toml).

    outputs: "tokenizer" (the directory); metrics: vocab_size, documents, bytes, bytes_per_token (on the
    first 200 documents)."""
    texts, summary = training_texts(cfg.corpus, progress)
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"training BPE: vocab {cfg.tokenizer.vocab_size}, pattern {cfg.tokenizer.pattern}, "
          f"{len(texts)} documents, {size / 1e6:.2f} MB ({summary})", file=sys.stderr)
    start = time.perf_counter()
    tok = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.pattern,
                    cfg.tokenizer.special_tokens or list(DEFAULT_SPECIAL_TOKENS),
                    cfg.tokenizer.min_frequency, progress=progress)
    elapsed = time.perf_counter() - start
    out = Path(tok.save_pretrained(cfg.out_dir))
    atomic_write_text(out / "train_config.toml", to_toml(cfg))
    if tok.vocab_size < cfg.tokenizer.vocab_size:
        print(f"note: corpus too small for the vocab asked; stopped at {tok.vocab_size} "
              f"(no pair occurs {cfg.tokenizer.min_frequency}+ times)", file=sys.stderr)
    sample = texts[:200]
    n_tokens = sum(len(tok.encode_ordinary(t)) for t in sample)
    n_bytes = sum(len(t.encode("utf-8")) for t in sample)
    return StageResult(outputs={"tokenizer": out},
                       metrics={"vocab_size": tok.vocab_size, "documents": len(texts), "bytes": size,
                                "bytes_per_token": n_bytes / max(1, n_tokens), "seconds": round(elapsed, 2)})
