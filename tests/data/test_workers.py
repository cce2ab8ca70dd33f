"""Worker processes and the Ray executor: the same shards, manifest and checksums as one process."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from scratchllm.config import load_config
from scratchllm.data import prepare as P
from scratchllm.data.config import DataConfig
from scratchllm.corpus.embedded import embedded_documents
from scratchllm.corpus.shards import verify
from scratchllm.tasks.specs import builtin_tasks

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstd = pytest.importorskip("zstandard")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Real paragraphs, with exact and near duplicates and eval items pasted in, as .jsonl.zst and Parquet."""
    rng = random.Random(0)
    paras = [p for d in embedded_documents(["prose"], 250_000) for p in d.text.split("\n\n") if len(p.split()) > 60]
    docs = list(paras)
    for p in rng.sample(paras, 20):
        docs.append(p.upper())  # exact duplicate after normalisation
        w = p.split()
        w[len(w) // 2] = "changed"
        docs.append(" ".join(w))  # near duplicate
    gsm = [json.loads(line)["question"] for line in
           (builtin_tasks()["gsm8k"].parent / "data.jsonl").read_text().splitlines()]
    for q in gsm[:8]:
        docs.append(rng.choice(paras) + "\n\n" + q)  # contaminated
    rng.shuffle(docs)
    root = tmp_path_factory.mktemp("corpus")
    half = len(docs) // 2
    lines = "".join(json.dumps({"text": t}) + "\n" for t in docs[:half]).encode()
    (root / "a.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist([{"text": t, "score": 1.0} for t in docs[half:]]), root / "b.parquet",
                   row_group_size=25)
    return root


def run(tmp_path: Path, corpus: Path, tokenizer: Path, name: str, *overrides: str) -> tuple[dict, dict[str, bytes]]:
    cfg_file = tmp_path / f"{name}.toml"
    cfg_file.write_text(f"""
out_dir = "{tmp_path / name}"
tokenizer = "{tokenizer}"
val_fraction = 0.1
shard_tokens = 4096
[[sources]]
kind = "files"
paths = ["{corpus}"]
domain = "prose"
[filters.length]
min_words = 20
[dedup]
batch_docs = 16
""")
    cfg = load_config(DataConfig, cfg_file, list(overrides))
    manifest = P.prepare(cfg, progress=False, log=lambda _: None)
    out = cfg.out_dir
    assert verify(out) == []
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    for key in ("config", "summary"):  # paths, worker count and timings differ; everything else must not
        manifest.pop(key)
    files.pop("manifest.json")
    return manifest, files


def summary_counts(tmp_path: Path, name: str) -> dict:
    s = json.loads((tmp_path / name / "manifest.json").read_text())["summary"]
    s.pop("seconds")
    return s


def test_one_and_two_workers_write_identical_output(tmp_path, corpus, bpe_dir):
    one, files_one = run(tmp_path, corpus, bpe_dir, "one", "num_workers=1")
    two, files_two = run(tmp_path, corpus, bpe_dir, "two", "num_workers=2")
    assert one == two and files_one == files_two
    assert summary_counts(tmp_path, "one") == summary_counts(tmp_path, "two")
    s = summary_counts(tmp_path, "two")
    assert s["dedup"]["exact_removed"] >= 20 and s["dedup"]["near_removed"] >= 10  # planted: 20 and 20
    assert s["decontam"]["per_set"]["gsm8k"] == 8 and s["decontam"]["contaminated"] == 8


@pytest.mark.slow  # starting a local Ray instance takes 20-40 s on a busy machine
def test_ray_executor_writes_identical_output(tmp_path, corpus, bpe_dir):
    pytest.importorskip("ray")
    local, files_local = run(tmp_path, corpus, bpe_dir, "local", "num_workers=1")
    ray_run, files_ray = run(tmp_path, corpus, bpe_dir, "ray", "executor=ray", "num_workers=2")
    assert local == ray_run and files_local == files_ray
    assert summary_counts(tmp_path, "local") == summary_counts(tmp_path, "ray")


def test_interrupted_pass_one_resumes_from_its_checkpoint(tmp_path, corpus, bpe_dir, monkeypatch):
    """Killed in the middle of pass 1, the rerun continues after the last checkpoint, with the same output."""
    whole, files_whole = run(tmp_path, corpus, bpe_dir, "whole", "num_workers=1")
    real = P.Deduplicator.decide
    calls = {"n": 0}

    def dies_at_batch_9(self, fp):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, fp)

    monkeypatch.setattr(P.Deduplicator, "decide", dies_at_batch_9)
    args = (tmp_path, corpus, bpe_dir, "cut", "num_workers=2", "checkpoint_seconds=1e-9")  # after every batch
    with pytest.raises(KeyboardInterrupt):
        run(*args)
    staging = tmp_path / "cut" / P.STAGING
    assert (staging / P.CHECKPOINT).exists() and not (tmp_path / "cut" / "manifest.json").exists()
    monkeypatch.setattr(P.Deduplicator, "decide", real)
    logs: list[str] = []
    monkeypatch.setattr(P, "prepare", lambda cfg, _p=P.prepare, **kw: _p(cfg, **{**kw, "log": logs.append}))
    cut, files_cut = run(*args)
    assert any("resuming pass 1 after 128 documents" in line for line in logs), logs  # 8 batches of 16
    assert cut == whole and files_cut == files_whole
    assert summary_counts(tmp_path, "cut") == summary_counts(tmp_path, "whole")
    assert not (staging / P.CHECKPOINT).exists()
