"""``scratchllm data prepare``: the whole data pipeline, in two passes.

Pass 1 (streaming, one document at a time, memory flat)::

    ingest -> clean -> quality filters -> PII scrub -> dedup (exact, MinHash/LSH) -> tokenize
           -> per-domain staged tokens in out_dir/.staging/

Pass 2 (from the staged tokens, memory-mapped)::

    train/val split per domain -> mix (down/up-sample to the weights) -> shuffle -> shards + manifest

Resuming: the staged tokens carry a fingerprint of everything that produced them (sources and the
size/mtime of every input file, clean/filter/dedup settings, the tokenizer's bytes). A rerun whose
pass-1 fingerprint matches skips pass 1 (so changing only the mix is quick); one whose final
fingerprint matches an existing manifest does nothing. Anything interrupted is simply redone: no
manifest exists until every shard it names is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import pickle
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scratchllm.config import to_dict
from scratchllm.corpus.clean import CleanStats
from scratchllm.corpus.config import SourceConfig
from scratchllm.data.config import DataConfig
from scratchllm.corpus.embedded import Document, embedded_documents
from scratchllm.data.dedup import Deduplicator
from scratchllm.data.decontam import Decontaminator, DecontamStats
from scratchllm.data.filters import FilterCount, PiiStats, QualityFilters
from scratchllm.corpus.ingest import SKIP_KINDS, IngestStats, read_files, read_hub, resolve_paths
from scratchllm.data.mix import plan_mixture, select_documents
from scratchllm.corpus.shards import (
    MANIFEST, ShardWriter, load_manifest, split_summary, token_dtype, write_manifest,
)
from scratchllm.corpus.synthetic import synthetic_documents
from scratchllm.data.continuations import model_documents
from scratchllm.data.workers import DocumentProcessor, add_stats, process_batches
from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write, atomic_write_bytes, atomic_write_text, sha256_file
from scratchllm.stage import StageResult
from scratchllm.tokenizer import Tokenizer

STAGING = ".staging"
STAGING_INFO = "staging.json"
PIPELINE_VERSION = 2  # 2: decontamination


def load_tokenizer(path: Path):
    if not Path(path).exists():
        raise ScratchError(
            f"tokenizer not found at {path}",
            "run `scratchllm tokenizer train` first, or point `tokenizer = ...` in the data config at one",
        )
    return Tokenizer.load(path)


def _hash_path(path: Path) -> str:
    """sha256 over the files under ``path`` (names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Progress:
    """One tqdm bar per stage (shown only on a terminal unless forced)."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars: list[tqdm] = []

    def bar(self, desc: str, unit: str = "doc", total: int | None = None) -> tqdm:
        b = tqdm(desc=f"{desc:<9}", unit=unit, total=total, position=len(self.bars), leave=True,
                 disable=not self.enabled, unit_scale=True, dynamic_ncols=True, file=sys.stderr)
        self.bars.append(b)
        return b

    def close(self) -> None:
        for b in self.bars:
            b.close()
        self.bars = []


# ----------------------------------------------------------------------------------------------
# Pass 1


def _source_documents(src: SourceConfig, files: list[Path] | None, stats: IngestStats, tokenizer) -> Iterator[Document]:
    if src.kind == "embedded":
        yield from embedded_documents(src.domains, src.max_bytes_per_domain)
    elif src.kind == "files":
        yield from read_files(files or [], src.domain, stats, src.format, src.text_field, src.max_document_bytes,
                              src.where)
    elif src.kind == "hub":
        yield from read_hub(src.dataset, src.domain, stats, src.subset, src.split, src.data_files, src.text_field,
                            src.where, src.max_documents)
    elif src.kind == "synthetic":
        yield from synthetic_documents(src.generators, src.count, src.seed, src.domain)
    else:
        yield from model_documents(src.checkpoint, tokenizer, src.prompts, src.count, src.max_new_tokens,
                                   src.temperature, src.top_k, src.seed, src.domain)


def _inputs_fingerprint(cfg: DataConfig, files: dict[int, list[Path]]) -> list[Any]:
    out: list[Any] = [sys.version]  # the embedded corpus depends on the Python version
    for i, src in enumerate(cfg.sources):
        for p in files.get(i, []):
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        if src.kind == "model":
            out.append(_hash_path(Path(src.checkpoint)) if Path(src.checkpoint).exists() else src.checkpoint)
    return out


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


CHECKPOINT = "checkpoint.pkl"


def _load_checkpoint(staging: Path, fingerprint: str) -> dict[str, Any] | None:
    """The pass-1 checkpoint in ``staging`` if it was made by this config, inputs and tokenizer."""
    path = staging / CHECKPOINT
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)  # our own file, written by _save_checkpoint below
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if state.get("fingerprint") != fingerprint or state.get("version") != PIPELINE_VERSION:
        return None
    if not all((staging / seg["file"]).exists() for segs in state["segments"].values() for seg in segs):
        return None
    return state


def stage_documents(cfg: DataConfig, tok, files: dict[int, list[Path]], staging: Path, progress: Progress,
                    log=print, decontam: Decontaminator | None = None, fingerprint: str = "",
                    resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pass 1: stream every source through clean/filter/PII/decontam/dedup/tokenize into per-domain staged tokens.

    The per-document steps run in worker processes (or on Ray), the dedup decisions here, in order.
    Every ``checkpoint_seconds`` the staged segment is closed and the state (dedup index, counters,
    documents done) saved, so an interrupted run continues from there (``resume``): the documents
    already done are read again but not processed, which rebuilds the ingest counts exactly.
    """
    ingest = IngestStats()
    if decontam is None and cfg.decontam.enabled:
        decontam = Decontaminator(cfg.decontam)
    processor = DocumentProcessor(cfg, tok, decontam)
    dtype = token_dtype(tok.vocab_size)
    per_domain_in: dict[str, list[int]] = {}  # domain -> [docs, bytes]
    bars = {k: progress.bar(k) for k in ("ingest", "filter", "dedup")}
    bars["tokenize"] = progress.bar("tokenize", unit="tok")
    t0 = time.perf_counter()
    if resume is not None:
        st = resume
        log(f"resuming pass 1 after {st['consumed']:,} documents (checkpoint in {staging})")
        for p in staging.iterdir():  # a segment that was being written when the run stopped
            listed = {seg[k] for segs in st["segments"].values() for seg in segs for k in ("file", "index")}
            if p.name not in listed and p.name != CHECKPOINT:
                p.unlink()
    else:
        st = {"consumed": 0, "segment": 0, "segments": {}, "dedup": Deduplicator(cfg.dedup), "clean": CleanStats(),
              "filters": {}, "pii": PiiStats(), "seconds": 0.0, "timing": {"dedup": 0.0},
              "decontam": DecontamStats(per_set={n: 0 for n in (decontam.names if decontam else [])})}
    dedup: Deduplicator = st["dedup"]
    timing: dict[str, float] = st["timing"]
    checkpoints = cfg.checkpoint_seconds > 0 and not cfg.debug_dump  # the debug files cannot be resumed
    last_checkpoint = time.perf_counter()

    def documents() -> Iterator[Document]:
        for i, src in enumerate(cfg.sources):
            for doc in _source_documents(src, files.get(i), ingest, tok):
                bars["ingest"].update()
                counts = per_domain_in.setdefault(doc.domain, [0, 0])
                counts[0] += 1
                counts[1] += len(doc.text.encode("utf-8"))
                yield doc

    with contextlib.ExitStack() as stack:
        writers: dict[str, ShardWriter] = {}
        segment = stack.enter_context(contextlib.ExitStack())  # the open staging writers
        kept_f = removed_f = None
        if cfg.debug_dump:
            kept_f = stack.enter_context(atomic_write(cfg.out_dir / "kept.jsonl"))
            removed_f = stack.enter_context(atomic_write(cfg.out_dir / "removed.jsonl"))

        def dump(f, doc: Document, text: str | None = None, **extra: Any) -> None:
            if f is not None:
                f.write(json.dumps({"domain": doc.domain, "source": doc.source, **extra,
                                    "text": doc.text if text is None else text}) + "\n")

        def close_segment() -> None:
            nonlocal segment
            segment.close()  # fsync + rename of every staged file of this segment
            for d, w in writers.items():
                st["segments"].setdefault(d, []).extend(
                    {"file": s.file, "index": s.index, "documents": s.documents, "tokens": s.tokens} for s in w.shards)
            writers.clear()
            st["segment"] += 1
            segment = stack.enter_context(contextlib.ExitStack())

        docs = itertools.islice(documents(), st["consumed"], None)  # skip what a checkpoint holds
        for batch, res in process_batches(processor, _batches(docs, cfg.dedup.batch_docs), cfg, log):
            add_stats(st["clean"], res.clean)
            add_stats(st["filters"], res.filters)
            add_stats(st["pii"], res.pii)
            st["decontam"].add(res.decontam)
            for k, v in res.seconds.items():
                timing[k] = timing.get(k, 0.0) + v
            for i, reason in res.removed:
                dump(removed_f, batch[i], reason=reason)
            bars["filter"].update(len(res.passing))
            t = time.perf_counter()
            dups = dedup.decide(res.fingerprints)
            timing["dedup"] += time.perf_counter() - t
            for j, i in enumerate(res.passing):
                d = batch[i]
                text = res.texts[j] if res.texts is not None else None
                if dups[j]:
                    dump(removed_f, d, text, reason="dedup: duplicate")
                    continue
                extra = {"contaminated": res.contaminated[j]} if res.contaminated[j] else {}
                dump(kept_f, d, text, **extra)
                if d.domain not in writers:
                    name = f"{d.domain}.{st['segment']:05d}"
                    writers[d.domain] = segment.enter_context(ShardWriter(staging, name, dtype, 1 << 62, [d.domain]))
                writers[d.domain].add(res.ids[j], d.domain)
                bars["dedup"].update()
                bars["tokenize"].update(len(res.ids[j]))
            st["consumed"] += len(batch)
            if checkpoints and time.perf_counter() - last_checkpoint >= cfg.checkpoint_seconds:
                close_segment()
                st["seconds"] += time.perf_counter() - t0
                t0 = last_checkpoint = time.perf_counter()
                buf = io.BytesIO()
                pickle.dump({**st, "fingerprint": fingerprint, "version": PIPELINE_VERSION}, buf,
                            protocol=pickle.HIGHEST_PROTOCOL)
                atomic_write_bytes(staging / CHECKPOINT, buf.getvalue())
        close_segment()

    docs_in = sum(c[0] for c in per_domain_in.values())
    if docs_in == 0:
        raise ScratchError("no documents were read from any source", _why_empty(ingest))
    if not st["segments"]:
        removed = [f"{st['clean'].emptied} emptied by cleaning"]
        removed += [f"{c.removed} by the {name} filter" for name, c in st["filters"].items() if c.removed]
        if st["decontam"].contaminated and cfg.decontam.action == "drop":
            removed.append(f"{st['decontam'].contaminated} by decontamination")
        removed.append(f"{dedup.stats.exact_removed + dedup.stats.near_removed} as duplicates")
        raise ScratchError(
            f"all {docs_in} documents were removed: {', '.join(removed)}",
            "relax the filters that removed them (set debug_dump = true to see each document and why)",
        )
    seconds = st["seconds"] + time.perf_counter() - t0
    staged = {d: {"documents": sum(s["documents"] for s in segs), "tokens": sum(s["tokens"] for s in segs),
                  "segments": segs} for d, segs in sorted(st["segments"].items())}
    return {
        "input": {d: {"documents": c[0], "bytes": c[1]} for d, c in per_domain_in.items()},
        "ingest": {k: v for k, v in asdict(ingest).items()},
        "clean": asdict(st["clean"]),
        "filters": {name: asdict(st["filters"].get(name, FilterCount())) for name in QualityFilters(cfg.filters).stats},
        "pii": asdict(st["pii"]),
        "decontam": {"enabled": cfg.decontam.enabled, "action": cfg.decontam.action, "ngram": cfg.decontam.ngram,
                     **asdict(st["decontam"]),
                     "eval_ngrams": decontam.ngrams if decontam else 0,
                     "too_short": decontam.too_short if decontam else {}},
        "dedup": {**asdict(dedup.stats), "bands": dedup.bands, "rows": dedup.rows, "threshold": cfg.dedup.threshold,
                  "num_perm": cfg.dedup.num_perm},
        "staged": staged,
        "seconds": {"pass1": seconds, **timing},
    }


def _why_empty(ingest: IngestStats) -> str:
    if ingest.skipped:
        return "every input was skipped: " + "; ".join(ingest.problems[:3])
    return "check the [[sources]] in the config (empty files? wrong format or text_field?)"


# ----------------------------------------------------------------------------------------------
# Pass 2


def write_shards(cfg: DataConfig, tok, stage_info: dict[str, Any], staging: Path, progress: Progress) -> dict[str, Any]:
    """Pass 2: split, mix and shuffle staged documents into train/val shards; return the split summaries."""
    rng = np.random.default_rng(cfg.seed)
    dtype = token_dtype(tok.vocab_size)
    domains = sorted(stage_info["staged"])
    staged, train_idx, val_idx = {}, {}, {}
    for d in domains:
        # a domain's documents may be staged in several segments (one per pass-1 checkpoint)
        segs = stage_info["staged"][d]["segments"]
        memmaps = [np.memmap(staging / seg["file"], dtype=dtype, mode="r") for seg in segs]
        parts = [np.load(staging / seg["index"]) for seg in segs]
        rows = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
        seg_of = np.concatenate([np.full(len(r), i) for i, r in enumerate(parts)]) if parts else np.zeros(0, np.int64)
        staged[d] = (memmaps, rows, seg_of)
        perm = rng.permutation(len(rows))
        n_val = int(round(cfg.val_fraction * len(rows)))
        if cfg.val_fraction > 0 and len(rows) >= 2:
            n_val = min(max(1, n_val), len(rows) - 1)
        val_idx[d], train_idx[d] = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    result: dict[str, Any] = {"mix": {}, "splits": {}}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        available = {d: (int(staged[d][1][idx[d], 1].sum()), len(idx[d])) for d in domains}
        if split == "train":
            plan = plan_mixture(available, cfg.mix.weights, cfg.mix.total_tokens, cfg.mix.max_upsample)
        elif not cfg.mix.weights:  # natural proportions: every held-out document
            plan = plan_mixture(available, {}, 0, 1.0) if any(n for _, n in available.values()) else {}
        else:  # val mirrors the train mixture but never repeats documents
            weights = {d: p.weight for d, p in result["mix"].items() if available[d][0] > 0}
            plan = plan_mixture(available, weights, 0, 1.0) if any(weights.values()) else {}
        order_domain, order_doc = [], []
        for d, p in plan.items():
            chosen = idx[d][select_documents(staged[d][1][idx[d], 1], p.target_tokens, rng)]
            p.selected_docs, p.selected_tokens = len(chosen), int(staged[d][1][chosen, 1].sum())
            order_domain.append(np.full(len(chosen), domains.index(d)))
            order_doc.append(chosen)
        if split == "train":
            result["mix"] = plan
        perm = rng.permutation(sum(map(len, order_doc))) if order_doc else np.zeros(0, np.int64)
        all_domains = np.concatenate(order_domain)[perm] if order_doc else perm
        all_docs = np.concatenate(order_doc)[perm] if order_doc else perm
        bar = progress.bar(f"{split} shards", unit="tok", total=sum(p.selected_tokens for p in plan.values()))
        with ShardWriter(cfg.out_dir, split, dtype, cfg.shard_tokens, domains) as writer:
            for di, doc in zip(all_domains.tolist(), all_docs.tolist(), strict=True):
                memmaps, rows, seg_of = staged[domains[di]]
                start, length = int(rows[doc, 0]), int(rows[doc, 1])
                writer.add(memmaps[seg_of[doc]][start : start + length], domains[di])
                bar.update(length)
        result["splits"][split] = split_summary(writer.shards)
    result["mix"] = {d: {**asdict(p), "factor": p.factor} for d, p in result["mix"].items()}
    return result


# ----------------------------------------------------------------------------------------------


def _remove_temp_files(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def prepare(cfg: DataConfig, force: bool = False, progress: bool | None = None, tokenizer=None,
            log=print) -> dict[str, Any]:
    """Run the pipeline; returns the manifest (also written to ``cfg.out_dir/manifest.json``)."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    out = Path(cfg.out_dir)
    staging = out / STAGING
    files = {i: resolve_paths(s.paths) for i, s in enumerate(cfg.sources) if s.kind == "files"}
    tok_hash = _hash_path(cfg.tokenizer) if tokenizer is None else getattr(tokenizer, "fingerprint", repr(tokenizer))
    upstream = {k: v for k, v in to_dict(cfg).items() if k in ("sources", "clean", "filters", "pii", "dedup", "decontam")}
    decontam = Decontaminator(cfg.decontam) if cfg.decontam.enabled else None  # reads the eval sets
    stage_fp = _digest([PIPELINE_VERSION, upstream, tok_hash, _inputs_fingerprint(cfg, files),
                        cfg.debug_dump and str(out), decontam.fingerprint if decontam else None])
    final_fp = _digest([stage_fp, to_dict(cfg.mix), cfg.seed, cfg.val_fraction, cfg.shard_tokens])

    if not force and (out / MANIFEST).exists():
        with contextlib.suppress(ScratchError):
            _, old = load_manifest(out)
            if old.get("fingerprint") == final_fp and all(
                (out / s["file"]).exists() for sp in old["splits"].values() for s in sp["shards"]
            ):
                log(f"{out}/{MANIFEST} is up to date (same config, inputs and tokenizer); use --force to rebuild")
                return old

    out.mkdir(parents=True, exist_ok=True)
    _remove_temp_files(out)
    _remove_temp_files(staging)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on, no manifest until the new one is complete

    bars = Progress(progress)
    try:
        stage_info = None
        info_path = staging / STAGING_INFO
        if not force and info_path.exists():
            with contextlib.suppress(json.JSONDecodeError, KeyError, OSError):
                candidate = json.loads(info_path.read_text())
                if candidate["fingerprint"] == stage_fp and all(
                    (staging / seg["file"]).exists() for s in candidate["staged"].values() for seg in s["segments"]
                ):
                    stage_info = candidate
                    log(f"resuming: reusing staged tokens in {staging} (pass 1 already done for this config)")
        if stage_info is None:
            resume = None if force else _load_checkpoint(staging, stage_fp)
            if resume is None:
                if staging.exists():
                    shutil.rmtree(staging)
                staging.mkdir(parents=True)
            stage_info = stage_documents(cfg, tok, files, staging, bars, log, decontam, stage_fp, resume)
            stage_info["fingerprint"] = stage_fp
            atomic_write_text(info_path, json.dumps(stage_info, indent=1))
            (staging / CHECKPOINT).unlink(missing_ok=True)  # pass 1 is done: staging.json supersedes it
        t = time.perf_counter()
        result = write_shards(cfg, tok, stage_info, staging, bars)
        pass2 = time.perf_counter() - t
    finally:
        bars.close()

    listed = {s[k] for sp in result["splits"].values() for s in sp["shards"] for k in ("file", "index")}
    for p in out.iterdir():  # shards of an earlier, larger run
        if re.fullmatch(r"(train|val)_\d{5}\.(bin|idx\.npy)", p.name) and p.name not in listed:
            p.unlink()
    summary = {k: v for k, v in stage_info.items() if k not in ("staged", "fingerprint")}
    summary["seconds"] = {**summary.get("seconds", {}), "pass2": pass2}
    manifest = {
        "fingerprint": final_fp,
        "dtype": token_dtype(tok.vocab_size).name,
        "vocab_size": int(tok.vocab_size),
        "eos_id": int(tok.eos_id),
        "bos_id": None if getattr(tok, "bos_id", None) is None else int(tok.bos_id),
        "tokenizer": str(cfg.tokenizer),
        "tokenizer_sha256": tok_hash,
        "domains": sorted(stage_info["staged"]),
        "splits": result["splits"],
        "mix": result["mix"],
        "summary": summary,
        "config": to_dict(cfg),
    }
    write_manifest(out, manifest)
    if not cfg.keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    return json.loads((out / MANIFEST).read_text())


# ----------------------------------------------------------------------------------------------
# The summary table


def run(cfg: DataConfig, force: bool = False, progress: bool | None = None, log=print) -> StageResult:
    """The data stage (``scratchllm data prepare`` and the pipeline): :func:`prepare`, then its result.

    outputs: "data" (out_dir) and "manifest"; metrics: domains, vocab_size, per split tokens/documents/
    shards, the decontamination counts and the seconds of each step."""
    manifest = prepare(cfg, force=force, progress=progress, log=log)
    out = Path(cfg.out_dir)
    metrics = {
        "domains": manifest["domains"], "vocab_size": manifest["vocab_size"],
        "splits": {k: {"tokens": v["tokens"], "documents": v["documents"], "shards": len(v["shards"])}
                   for k, v in manifest["splits"].items()},
        "decontam": {k: v for k, v in manifest["summary"].get("decontam", {}).items()
                     if k in ("enabled", "action", "ngram", "checked", "contaminated", "per_set")},
        "seconds": manifest["summary"].get("seconds", {}),
    }
    return StageResult(outputs={"data": out, "manifest": out / MANIFEST}, metrics=metrics)


def _n(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.2f}"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers] + [[_n(c) if isinstance(c, int | float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return [fmt(cells[0]), "  ".join("-" * w for w in widths), *map(fmt, cells[1:])]


def format_summary(manifest: dict[str, Any]) -> str:
    s = manifest["summary"]
    lines: list[str] = []
    ing = s["ingest"]
    skipped = {k: ing.get(k, 0) for k in SKIP_KINDS if ing.get(k, 0)}
    docs_in = sum(v["documents"] for v in s["input"].values())
    n = docs_in - s["clean"]["emptied"]
    rows: list[list[Any]] = [["ingest", "", "", "", docs_in], ["clean (empty after)", docs_in, docs_in, s["clean"]["emptied"], n]]
    for name, c in s["filters"].items():
        rows.append([f"filter: {name}", n, c["seen"], c["removed"], n - c["removed"]])
        n -= c["removed"]
    dc = s.get("decontam", {})
    if dc.get("enabled"):
        removed = dc["contaminated"] if dc["action"] == "drop" else 0
        rows.append([f"decontam ({dc['ngram']}-gram, {dc['action']})", n, dc["checked"], removed, n - removed])
        n -= removed
    d = s["dedup"]
    for label, removed in (("dedup: exact", d["exact_removed"]),
                           (f"dedup: near (J>={d['threshold']}, {d['bands']}x{d['rows']})", d["near_removed"])):
        rows.append([label, n, n, removed, n - removed])
        n -= removed
    lines += ["Documents", *_table(["stage", "docs in", "checked", "removed", "docs out"], rows)]
    if skipped:
        lines.append("  skipped inputs: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
        lines += [f"    {p}" for p in ing["problems"][:5]]
    if ing.get("metadata_removed"):
        lines.append(f"  {ing['metadata_removed']} records dropped by the sources' `where` conditions")
    notes = [f"{s['clean']['changed']} documents changed by cleaning",
             f"{s['clean']['boilerplate_lines']} boilerplate lines dropped"]
    if s["pii"]["documents"]:
        notes.append(f"PII: {s['pii']['emails']} e-mails, {s['pii']['ips']} IPs replaced in {s['pii']['documents']} documents")
    if dc.get("enabled"):
        per = ", ".join(f"{k} {v}" for k, v in sorted(dc["per_set"].items()) if v) or "none"
        verb = "dropped" if dc["action"] == "drop" else "flagged (kept)"
        notes.append(f"eval overlap ({dc['eval_ngrams']:,} eval n-grams): {dc['contaminated']} documents {verb}: {per}")
    notes.append(f"LSH candidates checked {d['candidates']}, rejected by full signature {d['rejected_candidates']}")
    lines += ["  " + n_ for n_ in notes]

    mix_rows = []
    for dom, p in manifest["mix"].items():
        f = p["factor"]
        how = "kept all" if abs(f - 1) < 1e-9 else (f"down-sampled x{f:.2f}" if f < 1 else f"up-sampled x{f:.2f}")
        if p["weight"] == 0:
            how = "dropped (weight 0)"
        mix_rows.append([dom, f"{p['weight']:.2f}", p["available_tokens"], p["target_tokens"], p["selected_tokens"],
                         p["selected_docs"], how])
    lines += ["", "Mixture (train)", *_table(["domain", "weight", "available", "target", "selected", "docs", ""], mix_rows)]

    split_rows = []
    for name, sp in manifest["splits"].items():
        per = ", ".join(f"{k} {_n(v)} ({v / max(1, sp['tokens']):.0%})" for k, v in sorted(sp["domains"].items()))
        split_rows.append([name, len(sp["shards"]), sp["documents"], sp["tokens"], per])
    lines += ["", f"Shards ({manifest['dtype']}, vocab {manifest['vocab_size']})",
              *_table(["split", "shards", "docs", "tokens", "tokens per domain"], split_rows)]
    sec = s.get("seconds", {})
    if sec:
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in sec.items()))
    return "\n".join(lines)
