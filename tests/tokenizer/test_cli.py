from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scratchllm.cli import main

PRESET = str(Path(__file__).resolve().parents[2] / "configs/tokenizer/default.toml")


def train(tmp_path, *overrides, files=None):
    corpus = files or [str(write(tmp_path / "c.txt", "the quick brown fox jumps over the lazy dog\n" * 50))]
    out = tmp_path / "tok"
    files_toml = "[" + ", ".join(f'"{f}"' for f in corpus) + "]"
    code = main(["tokenizer", "train", "--config", PRESET,
                 f"out_dir={out}", f"corpus.files={files_toml}", "tokenizer.vocab_size=300", *overrides])
    return code, out


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_train_encode_decode_info(tmp_path, capsys):
    code, out = train(tmp_path)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "scratchllm_tokenizer.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "train_config.toml"}
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(out), "the lazy dog<|eos|>", "--allow-special"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", str(out), *ids]) == 0
    assert capsys.readouterr().out == "the lazy dog<|eos|>\n"
    assert main(["tokenizer", "info", str(out)]) == 0
    assert "vocab size:" in capsys.readouterr().out


def error_of(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_invalid_utf8_file_is_skipped_and_counted_like_data_prepare(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xc3\x28 broken")
    code, out = train(tmp_path, files=[str(bad)])
    assert code == 2
    err = error_of(capsys)
    assert "training corpus is empty" in err and "invalid utf8" in err and "fix:" in err
    assert not out.exists()  # nothing half-written
    good = write(tmp_path / "good.txt", "the quick brown fox jumps over the lazy dog\n" * 50)
    code, out = train(tmp_path, files=[str(bad), str(good)])
    assert code == 0
    assert "2 files read, 1 skipped" in capsys.readouterr().err


def test_reads_files_through_data_ingest(tmp_path, capsys):
    """gzip, JSONL and Latin-1 files: the tokenizer sees the text data prepare sees, never the raw bytes."""
    import gzip
    import json

    from scratchllm.tokenizer.bpe import Tokenizer

    folder = tmp_path / "corpus"
    folder.mkdir()
    line = "the quick brown fox jumps over the lazy dog\n"
    (folder / "a.txt.gz").write_bytes(gzip.compress((line * 40).encode()))
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": line * 5, "id": i}) for i in range(8)) + "\n")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 20)
    code, out = train(tmp_path, "tokenizer.vocab_size=320", files=[str(folder)])
    assert code == 0
    assert "3 files read, 1 skipped" in capsys.readouterr().err
    tok = Tokenizer.load(out)
    vocab = [tok.id_to_bytes(i) for i in range(256, 256 + len(tok.merges))]
    # No JSON syntax, no gzip bytes, no U+FFFD, no literal backslash-n: only the documents' text.
    assert not any(b'"' in v or b"\\n" in v or "\ufffd".encode() in v for v in vocab)
    assert all(v.decode("utf-8", "strict") is not None for v in vocab if v.isascii())
    assert any(b"quick" in v or b"brown" in v for v in vocab)


@pytest.mark.parametrize("tty, flag, bars", [(False, [], False), (True, ["--no-progress"], False), (True, [], True)])
def test_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch, tty, flag, bars):
    corpus = write(tmp_path / "c.txt", "the quick brown fox jumps over the lazy dog\n" * 50)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    code = main(["tokenizer", "train", *flag, f"out_dir={tmp_path / 'tok'}", f'corpus.files=["{corpus}"]',
                 "tokenizer.vocab_size=300"])
    assert code == 0
    assert ("merges" in capsys.readouterr().err) == bars


@pytest.mark.parametrize(
    "setup, overrides, message",
    [
        ("empty", [], "training corpus is empty"),
        ("ok", ["tokenizer.vocab_size=100"], "vocab_size 100 is too small"),
        ("ok", ["tokenizer.vocab_size=big"], "'tokenizer.vocab_size' must be an integer"),
        ("ok", ["tokenizer.vocab=300"], "unknown config key 'tokenizer.vocab'"),
        ("missing", [], "not found"),
    ],
)
def test_training_bad_input(tmp_path, capsys, setup, overrides, message):
    files = {"empty": [str(write(tmp_path / "e.txt", ""))], "missing": [str(tmp_path / "nope.txt")], "ok": None}
    code, out = train(tmp_path, *overrides, files=files[setup])
    assert code == 2
    assert message in error_of(capsys)
    assert not out.exists()


def test_missing_and_corrupt_tokenizer(tmp_path, capsys):
    assert main(["tokenizer", "encode", str(tmp_path / "none"), "x"]) == 2
    assert "tokenizer not found" in error_of(capsys)
    code, out = train(tmp_path)
    f = out / "scratchllm_tokenizer.json"
    f.write_bytes(f.read_bytes()[:100])  # truncate
    assert main(["tokenizer", "info", str(out)]) == 2
    assert "corrupt or truncated" in error_of(capsys)
    assert main(["tokenizer", "decode", str(tmp_path / "none"), "abc"]) == 2


def test_bad_ids_to_decode(tmp_path, capsys):
    code, out = train(tmp_path)
    capsys.readouterr()
    assert main(["tokenizer", "decode", str(out), "12", "x1"]) == 2
    assert "not a token id: 'x1'" in error_of(capsys)
    assert main(["tokenizer", "decode", str(out), "999999"]) == 2
    assert "out of range" in error_of(capsys)


def test_installed_entry_point_lists_stages():
    result = subprocess.run([sys.executable, "-m", "scratchllm", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "tokenizer" in result.stdout
    result = subprocess.run([sys.executable, "-m", "scratchllm", "tokenizer", "train", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--config" in result.stdout
