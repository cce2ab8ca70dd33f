"""The per-document steps of pass 1, run on every core (worker processes) or a cluster (Ray).

A batch of documents goes through clean -> quality filters -> PII -> decontamination -> dedup
fingerprints (exact key, MinHash signature, LSH band keys) -> tokenize in one worker. Each step is a
pure function of the document, so a batch's result does not depend on which worker ran it. Results
come back in submission order and only the global step, the dedup decision against every earlier
document, runs in the main process. Hence the shards, manifest and checksums are byte-identical for 1,
2 or N workers and for the Ray executor.

Memory stays bounded: at most ``2 x workers + 1`` batches are in flight at any time (a plain
``Pool.imap`` would read the whole input ahead).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from scratchllm.corpus.clean import Cleaner, CleanStats
from scratchllm.data.config import DataConfig
from scratchllm.corpus.embedded import Document
from scratchllm.data.decontam import Decontaminator, DecontamStats
from scratchllm.data.dedup import Deduplicator, Fingerprints
from scratchllm.data.filters import FilterCount, PiiScrubber, PiiStats, QualityFilters
from scratchllm.corpus.shards import token_dtype
from scratchllm.errors import ScratchError


@dataclass
class BatchResult:
    """What pass 1's main process needs about one batch (indices are positions in the batch)."""

    removed: list[tuple[int, str]]  # (document, reason) for clean / filters / decontamination (drop)
    passing: list[int]  # documents that go on to dedup, in order
    fingerprints: Fingerprints  # over ``passing``
    ids: list[np.ndarray]  # over ``passing``: token ids with <|eos|> appended
    contaminated: list[list[str]]  # over ``passing``: evaluation sets overlapped (flag mode; else empty)
    texts: list[str] | None  # over ``passing``: final texts, only for debug_dump
    clean: CleanStats
    filters: dict[str, FilterCount]
    pii: PiiStats
    decontam: DecontamStats
    seconds: dict[str, float] = field(default_factory=dict)


class DocumentProcessor:
    """The per-document steps for one config and tokenizer; picklable, so it can be shipped to workers."""

    def __init__(self, cfg: DataConfig, tok, decontam: Decontaminator | None) -> None:
        self.cfg = cfg
        self.tok = tok
        self.decontam = decontam
        self.dtype = token_dtype(tok.vocab_size)
        self.dedup = Deduplicator(cfg.dedup)  # only its pure fingerprints() is used here

    def __call__(self, docs: list[Document]) -> BatchResult:
        cfg = self.cfg
        cleaner, filters, pii = Cleaner(cfg.clean), QualityFilters(cfg.filters), PiiScrubber(cfg.pii)
        t0 = time.perf_counter()
        removed: list[tuple[int, str]] = []
        passing: list[int] = []
        texts: list[str] = []
        for i, doc in enumerate(docs):
            text = cleaner(doc.text, doc.domain)
            if not text:
                removed.append((i, "clean: empty after cleaning"))
                continue
            reason = filters.check(text, doc.domain)
            if reason:
                removed.append((i, reason))
                continue
            passing.append(i)
            texts.append(pii(text, doc.domain))
        t1 = time.perf_counter()
        contaminated: list[list[str]] = [[] for _ in passing]
        decontam_stats = DecontamStats()
        if self.decontam is not None:
            self.decontam.stats = decontam_stats
            dc = cfg.decontam
            which = [j for j, i in enumerate(passing) if not dc.domains or docs[i].domain in dc.domains]
            for j, hits in zip(which, self.decontam([texts[j] for j in which]), strict=True):
                contaminated[j] = hits
            if dc.action == "drop":
                keep = [j for j in range(len(passing)) if not contaminated[j]]
                removed += [(passing[j], "decontam: overlaps " + ", ".join(contaminated[j]))
                            for j in range(len(passing)) if contaminated[j]]
                removed.sort()
                passing, texts = [passing[j] for j in keep], [texts[j] for j in keep]
                contaminated = [[] for _ in passing]
        t2 = time.perf_counter()
        fp = self.dedup.fingerprints(texts)
        t3 = time.perf_counter()
        ids = []
        for doc_ids in self.tok.encode_batch(texts, num_workers=1):
            arr = np.empty(len(doc_ids) + 1, self.dtype)
            arr[:-1] = doc_ids
            arr[-1] = self.tok.eos_id
            ids.append(arr)
        t4 = time.perf_counter()
        return BatchResult(
            removed, passing, fp, ids, contaminated, texts if cfg.debug_dump else None,
            cleaner.stats, filters.stats, pii.stats, decontam_stats,
            {"clean_filter": t1 - t0, "decontam": t2 - t1, "minhash": t3 - t2, "tokenize": t4 - t3},
        )


def add_stats(total: Any, delta: Any) -> None:
    """Add the counters of one dataclass (or a dict of them) to another, in place."""
    if isinstance(total, dict):
        for k, v in delta.items():
            if k in total:
                add_stats(total[k], v)
            else:
                total[k] = v
    elif isinstance(total, DecontamStats):
        total.add(delta)
    elif is_dataclass(total):
        for f in fields(total):
            setattr(total, f.name, getattr(total, f.name) + getattr(delta, f.name))


def worker_count(cfg: DataConfig) -> int:
    return cfg.num_workers or os.cpu_count() or 1


def process_batches(
    processor: DocumentProcessor, batches: Iterable[list[Document]], cfg: DataConfig, log=print
) -> Iterator[tuple[list[Document], BatchResult]]:
    """(batch, result) in input order, computed in-process, in worker processes or on Ray."""
    if cfg.executor == "ray":
        yield from _ray_batches(processor, batches, cfg, log)
        return
    workers = worker_count(cfg)
    batches = iter(batches)
    first = next(batches, None)
    second = next(batches, None) if first is not None else None
    if workers <= 1 or second is None:  # one batch: starting processes would cost more than it saves
        for batch in itertools.chain([first, second] if first is not None else [], batches):
            if batch is not None:
                yield batch, processor(batch)
        return
    batches = itertools.chain([first, second], batches)
    ctx = mp.get_context("spawn")  # no fork: the parent may hold threads (torch, tqdm) or locks
    with ctx.Pool(workers, initializer=_init_worker, initargs=(processor,)) as pool:
        pending: collections.deque = collections.deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(_run_in_worker, (batch,))))
            if len(pending) > 2 * workers:
                b, r = pending.popleft()
                yield b, r.get()
        while pending:
            b, r = pending.popleft()
            yield b, r.get()


_processor: DocumentProcessor | None = None


def _init_worker(processor: DocumentProcessor) -> None:
    global _processor
    _processor = processor


def _run_in_worker(batch: list[Document]) -> BatchResult:
    assert _processor is not None
    return _processor(batch)


class _RayWorker:
    """One Ray actor per worker: it holds the processor (tokenizer, decontamination tables) once."""

    def __init__(self, processor: DocumentProcessor) -> None:
        self.processor = processor

    def run(self, batch: list[Document]) -> BatchResult:
        return self.processor(batch)


def _ray_batches(
    processor: DocumentProcessor, batches: Iterable[list[Document]], cfg: DataConfig, log
) -> Iterator[tuple[list[Document], BatchResult]]:
    try:
        import ray
    except ImportError:
        raise ScratchError('executor = "ray" needs Ray installed',
                           "pip install 'scratchllm[ray]' (or set executor = \"local\")") from None
    started = not ray.is_initialized()
    if started:
        address = cfg.ray_address or None
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["num_cpus"] = worker_count(cfg)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ScratchError(f"cannot start or join Ray at {address or 'a local instance'}: {e}",
                               "check ray_address (or `ray status` on the head node)") from None
    try:
        n = cfg.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        log(f"ray: {n} workers on {len(ray.nodes())} node(s)")
        actor = ray.remote(num_cpus=1)(_RayWorker)
        shared = ray.put(processor)
        actors = [actor.remote(shared) for _ in range(n)]
        pending: collections.deque = collections.deque()
        for k, batch in enumerate(batches):
            pending.append((batch, actors[k % n].run.remote(batch)))
            if len(pending) > 2 * n:
                b, ref = pending.popleft()
                yield b, ray.get(ref)
        while pending:
            b, ref = pending.popleft()
            yield b, ray.get(ref)
    finally:
        if started:
            ray.shutdown()
