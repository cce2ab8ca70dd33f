from __future__ import annotations

import errno
import json
from collections import Counter
from pathlib import Path

import pytest

from scratchllm.cli import main
from scratchllm.config import load_config
from scratchllm.data import prepare as P
from scratchllm.data.config import DataConfig
from scratchllm.corpus.embedded import embedded_documents
from scratchllm.corpus.shards import ShardDataset, iter_documents, verify
from scratchllm.errors import ScratchError

TINY = Path(__file__).parents[2] / "configs" / "data" / "tiny.toml"


@pytest.fixture(scope="session")
def samples() -> tuple[list[str], list[str]]:
    prose = [d.text for d in embedded_documents(["prose"], 300_000) if 800 < len(d.text) < 4000][:12]
    code = [d.text for d in embedded_documents(["code"], 2_000_000) if 500 < len(d.text) < 6000][:6]
    assert len(prose) == 12 and len(code) == 6
    return prose, code


@pytest.fixture
def inputs(tmp_path, samples) -> Path:
    """A user folder: prose as .txt/.md, an exact and a near duplicate, code in JSONL, one latin-1 file."""
    root = tmp_path / "inputs"
    (root / "prose").mkdir(parents=True)
    prose, code = samples
    for i, text in enumerate(prose):
        (root / "prose" / f"doc{i:02d}.{'md' if i % 4 == 0 else 'txt'}").write_text(text)
    (root / "prose" / "upper_copy.txt").write_text(prose[1].upper())  # exact duplicate up to case
    words = prose[2].split(" ")
    words[len(words) // 2] = "CHANGED"
    (root / "prose" / "near.txt").write_text(" ".join(words))  # near duplicate
    (root / "prose" / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "code.jsonl").write_text("".join(json.dumps({"content": c}) + "\n" for c in code))
    return root


def config(tmp_path, inputs, tokenizer_dir, *overrides) -> DataConfig:
    cfg_file = tmp_path / "data.toml"
    cfg_file.write_text(f"""
out_dir = "{tmp_path / 'out'}"
tokenizer = "{tokenizer_dir}"
val_fraction = 0.1
shard_tokens = 4096
debug_dump = true
[[sources]]
kind = "files"
paths = ["{inputs / 'prose'}"]
domain = "prose"
[[sources]]
kind = "files"
paths = ["{inputs / '*.jsonl'}"]
text_field = "content"
domain = "code"
[[sources]]
kind = "synthetic"
generators = ["grammar", "tasks"]
count = 6
domain = "synthetic"
[filters.length]
min_words = 10
""")
    return load_config(DataConfig, cfg_file, list(overrides))


def decoded(out: Path, tok) -> Counter:
    return Counter(
        (domain, tok.decode(ids.tolist())) for split in ("train", "val") for domain, ids in iter_documents(out, split)
    )


@pytest.mark.parametrize("which", ["bpe", "bytes"])
def test_shards_round_trip_to_the_kept_documents(tmp_path, inputs, bpe_dir, bpe_tokenizer, byte_tokenizer, which):
    cfg = config(tmp_path, inputs, bpe_dir)
    tok = bpe_tokenizer if which == "bpe" else byte_tokenizer
    manifest = P.prepare(cfg, progress=False, tokenizer=None if which == "bpe" else tok, log=lambda m: None)
    out = cfg.out_dir
    kept = [json.loads(line) for line in (out / "kept.jsonl").open()]
    removed = [json.loads(line) for line in (out / "removed.jsonl").open()]
    assert decoded(out, tok) == Counter((k["domain"], k["text"]) for k in kept)  # exactly, no up/down-sampling
    assert {r["source"].split("/")[-1] for r in removed if r["reason"].startswith("dedup")} == {"upper_copy.txt", "near.txt"}
    s = manifest["summary"]
    assert s["ingest"]["invalid_utf8"] == 1 and s["dedup"]["exact_removed"] == 1 and s["dedup"]["near_removed"] == 1
    assert s["input"]["prose"]["documents"] == 14 and s["input"]["code"]["documents"] == 6
    assert manifest["dtype"] == "uint16" and manifest["eos_id"] == tok.eos_id
    assert set(manifest["splits"]["train"]["domains"]) == {"prose", "code", "synthetic"}
    assert len(manifest["splits"]["train"]["shards"]) > 1 and verify(out) == []
    table = P.format_summary(manifest)
    assert "dedup: near" in table and "filter: repetition" in table and "1 invalid utf8" in table


def test_mixture_follows_the_weights(tmp_path, bpe_dir):
    cfg = load_config(DataConfig, TINY, [f"out_dir={json.dumps(str(tmp_path / 'out'))}",
                                         f"tokenizer={json.dumps(str(bpe_dir))}"])
    m = P.prepare(cfg, progress=False, log=lambda _: None)
    train = m["splits"]["train"]
    shares = {d: n / train["tokens"] for d, n in train["domains"].items()}
    for d, w in cfg.mix.weights.items():
        assert shares[d] == pytest.approx(w, abs=0.05), shares
    assert max(p["factor"] for p in m["mix"].values()) <= 1.0 + 1e-9  # max_upsample = 1: nothing repeated
    assert any(p["factor"] < 0.9 for p in m["mix"].values())
    x, y = ShardDataset(cfg.out_dir, "train", seed=0).sample_batch(4, 64)
    assert x.shape == (4, 64) and int(x.max()) < m["vocab_size"]


def test_upsampling_repeats_documents(tmp_path, inputs, bpe_dir):
    cfg = config(tmp_path, inputs, bpe_dir, "mix.weights={prose = 0.5, code = 0.5}", "mix.max_upsample=3.0")
    m = P.prepare(cfg, progress=False, log=lambda _: None)
    assert m["mix"]["prose"]["factor"] > 1.0  # code is bigger: prose gets repeated
    assert "up-sampled" in P.format_summary(m) and "dropped (weight 0)" in P.format_summary(m)


def test_rerun_is_a_no_op_and_a_new_mix_resumes_from_staging(tmp_path, inputs, bpe_dir, monkeypatch):
    logs: list[str] = []
    cfg = config(tmp_path, inputs, bpe_dir)
    first = P.prepare(cfg, progress=False, log=logs.append)
    assert P.prepare(cfg, progress=False, log=logs.append) == first and "up to date" in logs[-1]

    def no_pass1(*a, **k):
        raise AssertionError("pass 1 should have been skipped")

    monkeypatch.setattr(P, "stage_documents", no_pass1)
    cfg2 = config(tmp_path, inputs, bpe_dir, "mix.weights={prose = 0.8, code = 0.2}")
    second = P.prepare(cfg2, progress=False, log=logs.append)
    assert "resuming" in logs[-1] and second["fingerprint"] != first["fingerprint"]
    assert verify(cfg.out_dir) == []
    # a changed input file invalidates the staged tokens
    (inputs / "prose" / "doc05.txt").write_text("A brand new document about rivers and mills and the sea. " * 5)
    with pytest.raises(AssertionError, match="pass 1 should have been skipped"):
        P.prepare(cfg2, progress=False, log=logs.append)


def test_interrupted_runs_leave_no_manifest_and_rerun_cleanly(tmp_path, inputs, bpe_dir, monkeypatch):
    cfg = config(tmp_path, inputs, bpe_dir)
    P.prepare(cfg, progress=False, log=lambda _: None)
    out = cfg.out_dir
    cfg = config(tmp_path, inputs, bpe_dir, "shard_tokens=2048")  # a different build of the same data
    real_add = P.ShardWriter.add
    calls = {"n": 0}

    def interrupted_add(self, tokens, domain):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_add(self, tokens, domain)

    monkeypatch.setattr(P.ShardWriter, "add", interrupted_add)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg, progress=False, log=lambda _: None)
    assert not (out / "manifest.json").exists()  # the old manifest is gone too: it described other shards
    assert not list(out.glob(".*.tmp")) and not list((out / P.STAGING).glob(".*.tmp"))
    monkeypatch.setattr(P.ShardWriter, "add", real_add)
    logs: list[str] = []
    m = P.prepare(cfg, progress=False, log=logs.append)
    assert any("resuming" in line for line in logs) and verify(out) == []
    assert m["config"]["shard_tokens"] == 2048

    def interrupted_dedup(self, fingerprints):
        raise KeyboardInterrupt

    monkeypatch.setattr(P.Deduplicator, "decide", interrupted_dedup)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg, force=True, progress=False, log=lambda _: None)
    assert not (out / "manifest.json").exists() and not (out / P.STAGING / P.STAGING_INFO).exists()
    assert not (out / "kept.jsonl").exists() or (out / "kept.jsonl").stat().st_size > 0  # old one or none
    monkeypatch.undo()
    P.prepare(cfg, progress=False, log=lambda _: None)
    assert verify(out) == []


def test_disk_full_is_a_clear_error(tmp_path, inputs, bpe_dir, monkeypatch):
    cfg = config(tmp_path, inputs, bpe_dir)
    real_fsync = __import__("os").fsync

    def fsync(fd):
        if "train_0000" in Path(f"/proc/self/fd/{fd}").resolve().name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr("os.fsync", fsync)
    with pytest.raises(ScratchError, match="disk full"):
        P.prepare(cfg, progress=False, log=lambda _: None)
    assert not (cfg.out_dir / "manifest.json").exists()
    assert not [p for p in cfg.out_dir.iterdir() if p.name.endswith(".tmp")]


def test_cli(tmp_path, inputs, bpe_dir, capsys):
    out = tmp_path / "cli-out"
    args = ["data", "prepare", "--config", str(TINY), "--no-progress", f"out_dir={out}"]
    assert main([*args, f"tokenizer={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer not found" in err and "scratchllm tokenizer train" in err

    assert main([*args, f"tokenizer={bpe_dir}"]) == 0
    printed = capsys.readouterr().out
    assert "Documents" in printed and "Mixture (train)" in printed and "wrote" in printed
    assert main(["data", "verify", str(out)]) == 0 and "OK" in capsys.readouterr().out
    assert main(["data", "show", str(out)]) == 0 and "Shards" in capsys.readouterr().out

    assert main([*args, f"tokenizer={bpe_dir}", "mix.weights={poetry = 1.0}"]) == 2
    assert "no source produces domain 'poetry'" in capsys.readouterr().err  # before anything runs
    assert main([*args, "dedup.threshold=1.5"]) == 2 and "dedup.threshold" in capsys.readouterr().err


def test_empty_and_all_filtered_inputs(tmp_path, bpe_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.txt").write_text("")
    (folder / "bad.txt").write_bytes(b"\xff\xfe")
    src = ['kind="files"', f'paths=["{folder}"]', 'domain="prose"']
    cfg = load_config(DataConfig, None, [f"out_dir={json.dumps(str(tmp_path / 'o'))}", f"tokenizer={json.dumps(str(bpe_dir))}",
                                         "sources=[{" + ", ".join(src) + "}]"])
    with pytest.raises(ScratchError, match="no documents were read") as e:
        P.prepare(cfg, progress=False, log=lambda _: None)
    assert "invalid utf8" in e.value.hint and "empty" in e.value.hint
    (folder / "short.txt").write_text("too short")
    with pytest.raises(ScratchError, match=r"all 1 documents were removed: 0 emptied by cleaning, 1 by the \w+ "
                                           r"filter, 0 as duplicates"):
        P.prepare(cfg, progress=False, log=lambda _: None)


def test_same_config_gives_identical_shards(tmp_path, inputs, bpe_dir):
    """Seeded: a forced rebuild (pass 1 and 2 redone) writes byte-identical shards and manifest splits."""
    cfg = config(tmp_path, inputs, bpe_dir)
    first = P.prepare(cfg, progress=False, log=lambda _: None)
    again = P.prepare(cfg, force=True, progress=False, log=lambda _: None)
    assert again["splits"] == first["splits"] and again["mix"] == first["mix"]
    assert [s["sha256"] for s in first["splits"]["train"]["shards"]]  # checksums are there to compare
    other = P.prepare(config(tmp_path, inputs, bpe_dir, "seed=7"), force=True, progress=False, log=lambda _: None)
    assert [s["sha256"] for s in other["splits"]["train"]["shards"]] != \
        [s["sha256"] for s in first["splits"]["train"]["shards"]]  # the seed drives split and order


@pytest.mark.parametrize("preset", sorted((Path(__file__).parents[2] / "configs" / "data").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_presets_load(preset):
    cfg = load_config(DataConfig, preset, [])
    assert cfg.sources and all(s.kind in ("embedded", "files", "synthetic", "model") for s in cfg.sources)
