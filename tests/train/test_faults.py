"""Fault injection on training: a flipped shard byte, a full disk, a flipped checkpoint byte in every
loader, two runs on one directory, a dead peer, a second SIGTERM."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scratchllm.cli import main
from scratchllm.config import to_toml
from scratchllm.corpus.shards import ShardDataset, load_manifest
from scratchllm.errors import Interrupted, ScratchError
from scratchllm.model.model import Transformer
from scratchllm.train import checkpoint as ckpt
from scratchllm.train import runlock
from scratchllm.train.parallel import Dist
from scratchllm.train.pretrain import build_trainer
from scratchllm.train.tracking import Tracker, read_metrics

from .conftest import VOCAB

SCRATCHLLM = [sys.executable, "-m", "scratchllm"]


def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}


def copy_with_token(shard_dir: Path, to: Path, offset: int, value: int) -> Path:
    """A copy of the shards where train_00000.bin's token at ``offset`` is ``value`` (checksum now wrong)."""
    shutil.copytree(shard_dir, to)
    _, manifest = load_manifest(to)
    tokens = np.fromfile(to / "train_00000.bin", dtype=manifest["dtype"])
    tokens[offset] = value
    tokens.tofile(to / "train_00000.bin")
    return to


# --- 1. shards: checksums once per run, token ids on every read ---------------------------------------


def test_out_of_vocabulary_token_names_shard_and_offset(shard_dir, tmp_path):
    broken = copy_with_token(shard_dir, tmp_path / "broken", 1234, 60000)
    ds = ShardDataset(broken, "train")  # no checksum pass: the id check alone must catch it
    with pytest.raises(ScratchError) as e:
        for _ in ds.iter_batches(8, 32):
            pass
    assert "train_00000.bin" in e.value.message and "token id 60000 at token offset 1,234 " in e.value.message
    assert "outside the vocabulary of 257" in e.value.message and "data verify" in e.value.hint
    with pytest.raises(ScratchError, match="token offset 1,234 "):  # random windows: same check
        for _ in range(10_000):
            ds.sample_batch(64, 32)


def test_flipped_shard_byte_stops_training_before_any_checkpoint(make_cfg, shard_dir, tmp_path):
    # A flip that keeps the id inside the vocabulary: only the checksum can tell.
    _, manifest = load_manifest(shard_dir)
    original = int(np.fromfile(shard_dir / "train_00000.bin", dtype=manifest["dtype"])[50])
    broken = copy_with_token(shard_dir, tmp_path / "broken", 50, original ^ 1)
    cfg = make_cfg(f'data.path="{broken}"', "checkpoint.interval=2")
    trainer = build_trainer(cfg, Dist())
    with pytest.raises(ScratchError, match=r"train_00000.bin checksum mismatch") as e:
        trainer.fit()
    assert "data verify" in e.value.hint and "data prepare" in e.value.hint
    assert ckpt.list_checkpoints(trainer.ckpt_root) == []  # nothing trained on bad data was saved


def test_cli_on_a_corrupt_shard_is_a_clear_error_every_time(make_cfg, shard_dir, tmp_path, capsys):
    broken = copy_with_token(shard_dir, tmp_path / "broken", 7, 65535)
    preset = tmp_path / "preset.toml"
    preset.write_text(to_toml(make_cfg(f'data.path="{broken}"', out=tmp_path / "run")))
    for extra in ([], ["--resume"]):  # no crash loop: a resume gets the same explanation
        assert main(["train", "--config", str(preset), *extra]) == 2
        err = capsys.readouterr().err
        assert "error: " in err and "train_00000.bin" in err and "fix: " in err and "internal error" not in err


# --- 2. a full disk on every write path ----------------------------------------------------------------


class FullDisk:
    """A directory whose disk can be filled: a small tmpfs when this process may mount one (root), else
    a wrapper making writes under it raise ENOSPC (os.write, TensorBoard's record writer, atomic_write)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, tmpfs: bool) -> None:
        self.dir = root
        self.mp = monkeypatch
        self.filler = root / "filler"
        self.tmpfs = tmpfs
        self.full = False
        if tmpfs:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], capture_output=True)
            if r.returncode:
                pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); the wrapper variant runs")

    def fill(self) -> None:
        self.full = True
        if self.tmpfs:
            with open(self.filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            # a page left half-used can still take a few bytes: fill those too
            with contextlib.suppress(OSError):
                for i in range(10_000):
                    with open(self.dir / f"filler{i}", "wb") as f:
                        f.write(b"\0")
            return
        root = str(self.dir)
        real_write, real_fdopen = os.write, os.fdopen

        def inside(fd: int) -> bool:
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/self/fd/{fd}").startswith(root)
            return False

        def write(fd, data):
            if self.full and inside(fd):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def fdopen(fd, *args, **kwargs):
            if self.full and inside(fd):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fdopen(fd, *args, **kwargs)

        from tensorboard.summary.writer import record_writer

        real_record = record_writer.RecordWriter.write

        def record(writer, data):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_record(writer, data)

        self.mp.setattr(os, "write", write)
        self.mp.setattr(os, "fdopen", fdopen)
        self.mp.setattr(record_writer.RecordWriter, "write", record)

    def free(self) -> None:
        self.full = False
        if self.tmpfs:
            for p in self.dir.glob("filler*"):
                p.unlink()
        else:
            self.mp.undo()

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)


@pytest.fixture(params=["tmpfs", "wrapper"])
def full_disk(request, tmp_path, monkeypatch):
    root = tmp_path / "disk"
    root.mkdir()
    disk = FullDisk(root, monkeypatch, tmpfs=request.param == "tmpfs")
    yield disk
    disk.close()


def whole_lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "metrics.jsonl ends mid-line"
    return [json.loads(line) for line in text.splitlines()]


def test_metrics_on_a_full_disk(full_disk):
    tracker = Tracker(full_disk.dir / "run", True, {}, tensorboard=False)
    tracker.log(1, "train", {"loss": 1.0})
    full_disk.fill()
    with pytest.raises(ScratchError, match=r"disk full while writing .*metrics.jsonl \(step \d+\)") as e:
        for step in range(2, 500):  # a page left half-used on tmpfs can take a few more rows
            tracker.log(step, "train", {"loss": 1.0, "pad": "x" * 200})
    assert "--resume" in e.value.hint
    tracker.close(quiet=True)
    full_disk.free()
    assert whole_lines(full_disk.dir / "run" / "metrics.jsonl")[0] == {"step": 1, "kind": "train", "loss": 1.0}


def test_tensorboard_on_a_full_disk_is_the_same_error_without_a_thread_traceback(full_disk, capfd):
    hook = threading.excepthook
    tracker = Tracker(full_disk.dir / "run", True, {}, tensorboard=True)
    tracker.log(1, "train", {"loss": 1.0})
    full_disk.fill()
    with pytest.raises(ScratchError, match="disk full while writing") as e:
        for step in range(2, 2000):
            tracker.log(step, "train", {"loss": 1.0, "text": "x" * 500})
    assert "--resume" in e.value.hint
    tracker.close(quiet=True)
    full_disk.free()
    assert "Traceback" not in capfd.readouterr().err
    assert threading.excepthook is hook  # restored


class FillDiskAt:
    """A batch source that fills the disk when batch ``at`` is drawn."""

    def __init__(self, inner, at, disk):
        self.inner, self.at, self.disk, self.n = inner, at, disk, 0

    def next_batch(self):
        self.n += 1
        if self.n == self.at:
            self.disk.fill()
        return self.inner.next_batch()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_disk_filling_between_checkpoints_then_resume(make_cfg, full_disk):
    cfg = make_cfg("train.max_steps=400", "checkpoint.interval=2", "checkpoint.keep_last=1", "log.tensorboard=true",
                   out=full_disk.dir / "run")
    trainer = build_trainer(cfg, Dist())
    trainer.train_source = FillDiskAt(trainer.train_source, 5, full_disk)
    with pytest.raises(ScratchError, match="disk full") as e:
        trainer.fit()
    assert "--resume" in e.value.hint
    full_disk.free()
    saved = ckpt.latest_checkpoint(trainer.ckpt_root)
    assert saved is not None
    rows = whole_lines(cfg.out_dir / "metrics.jsonl")
    assert rows and rows[-1]["step"] >= int(saved.name.split("_")[1])
    resumed = build_trainer(make_cfg("train.max_steps=8", "checkpoint.interval=2", "train.allow_schedule_change=true",
                                     out=cfg.out_dir), Dist(), resume=True)
    resumed.fit()
    assert [r["step"] for r in read_metrics(cfg.out_dir, "train")] == list(range(1, 9))


def test_a_cut_last_metrics_line_is_skipped_and_repaired(make_cfg):
    cfg = make_cfg("train.max_steps=4", "checkpoint.interval=2")
    build_trainer(cfg, Dist()).fit()
    path = cfg.out_dir / "metrics.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 5, "kind": "train", "lo')  # the writer died mid-row (e.g. 4,096 bytes into a buffer)
    assert [r["step"] for r in read_metrics(path, "train")] == [1, 2, 3, 4]
    build_trainer(make_cfg("train.max_steps=6", "checkpoint.interval=2", "train.allow_schedule_change=true"), Dist(),
                  resume=True).fit()
    assert [r["step"] for r in whole_lines(path) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_disk_full_anywhere_is_a_clear_cli_error(monkeypatch, capsys, tmp_path):
    import scratchllm.train.pretrain as pretrain

    def run(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere.log"))

    monkeypatch.setattr(pretrain, "run", run)
    preset = tmp_path / "p.toml"
    preset.write_text("")
    assert main(["train", "--config", str(preset)]) == 2
    err = capsys.readouterr().err
    assert f"error: disk full while writing {tmp_path / 'somewhere.log'}" in err and "fix: free" in err


# --- 3. a flipped checkpoint byte, through every loader --------------------------------------------------


@pytest.fixture
def corrupt_checkpoint(make_cfg):
    cfg = make_cfg("train.max_steps=2", "checkpoint.interval=1")
    build_trainer(cfg, Dist()).fit()
    path = ckpt.latest_checkpoint(cfg.out_dir / "checkpoints")
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-7] ^= 0x40  # inside the last tensor: the file still parses, the values differ
    f.write_bytes(bytes(data))
    return path


def _loaders():
    def finetune(path):
        from scratchllm.finetune.run import load_base

        tok = SimpleNamespace(vocab_size=VOCAB)
        return load_base(SimpleNamespace(base=SimpleNamespace(checkpoint=str(path.parent.parent))), tok)

    def align(path):
        from scratchllm.align.run import load_model

        return load_model(path, "policy", SimpleNamespace(vocab_size=VOCAB))

    def eval_(path):
        from scratchllm.eval.lm import load_lm

        return load_lm(path)

    def serve(path):  # generate, chat, serve and quantize load through it
        from scratchllm.infer.load import load_model

        return load_model(path)

    return {"from_pretrained": Transformer.from_pretrained, "serve/generate/chat": serve, "eval": eval_,
            "finetune": finetune, "align": align}


@pytest.mark.parametrize("loader", list(_loaders()))
def test_flipped_checkpoint_byte_is_refused_by_every_loader(corrupt_checkpoint, loader):
    with pytest.raises(ScratchError) as e:
        _loaders()[loader](corrupt_checkpoint)
    assert "model.safetensors is truncated or corrupt (sha256 differs from checksums.json)" in e.value.message
    assert str(corrupt_checkpoint) in e.value.message and "step_000001" in e.value.hint


def test_flipped_checkpoint_byte_in_the_cli(corrupt_checkpoint, tmp_path, capsys):
    code = main(["export", "hf", str(corrupt_checkpoint), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code == 2 and "sha256 differs" in err, err
    assert not (tmp_path / "hf").exists()


def test_an_intact_checkpoint_and_an_unchecksummed_directory_load(corrupt_checkpoint, tmp_path):
    good = corrupt_checkpoint.parent / "step_000001"
    Transformer.from_pretrained(good)
    from scratchllm.model.checkpoint import save_pretrained

    plain = tmp_path / "plain"

    save_pretrained(Transformer.from_pretrained(good), plain)
    assert not (plain / "checksums.json").exists()
    Transformer.from_pretrained(plain)


# --- 4. one run per directory ----------------------------------------------------------------------------


HOLD = ("import sys, time; from scratchllm.train import runlock; runlock.acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(300)")


def test_second_run_on_a_locked_directory_is_refused_naming_the_holder(make_cfg, tmp_path, capsys):
    cfg = make_cfg("train.max_steps=2", out=tmp_path / "run")
    preset = tmp_path / "preset.toml"
    preset.write_text(to_toml(cfg))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg.out_dir)], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "--config", str(preset), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run: process {holder.pid} on host {socket.gethostname()}" in err
        assert f"kill {holder.pid}" in err
        assert not (cfg.out_dir / "checkpoints").exists() and not (cfg.out_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    assert main(["train", "--config", str(preset), "--resume"]) == 0
    assert os.path.realpath(cfg.out_dir) not in runlock._held  # released at the end of the run


def test_run_lock_is_reentrant_in_one_process_and_released(tmp_path):
    runlock.acquire(tmp_path)
    runlock.acquire(tmp_path)
    runlock.release(tmp_path)
    assert runlock.holder(tmp_path)["pid"] == os.getpid()
    check = [sys.executable, "-c", "import sys; from scratchllm.train import runlock; runlock.acquire(sys.argv[1])",
             str(tmp_path)]
    assert subprocess.run(check, env=subprocess_env(), capture_output=True).returncode != 0
    runlock.release(tmp_path)
    assert subprocess.run(check, env=subprocess_env(), capture_output=True).returncode == 0


# --- 5. a dead peer, a second SIGTERM, the torchrun resume hint --------------------------------------------


def test_dead_peer_is_named_with_collective_and_resume_command(make_cfg):
    trainer = build_trainer(make_cfg(), Dist())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    trainer.dist = Dist(rank=0, world_size=2)
    trainer.peers = [trainer.peers[0], (gone.pid, socket.gethostname())]
    trainer._collective = "step 7's gradient-norm and loss all-reduce"
    trainer.resume_command = "torchrun --nproc_per_node=2 -m scratchllm train --config x.toml --resume"
    error = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:33669")
    e = trainer._dead_peer(error, Path("run/checkpoints/step_000006"))
    assert f"rank 1 (pid {gone.pid}) has exited" in e.message
    assert "during step 7's gradient-norm and loss all-reduce" in e.message and "step_000006" in e.message
    assert e.hint.endswith(trainer.resume_command)
    assert trainer._dead_peer(RuntimeError("shape mismatch"), None) is None  # other errors pass through
    trainer.close()


def test_second_sigterm_stops_at_once_with_143(make_cfg, tmp_path, monkeypatch):
    trainer = build_trainer(make_cfg(), Dist())
    with pytest.raises(Interrupted) as e, trainer._signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.exit_code == 143
    trainer.close()
    import scratchllm.train.pretrain as pretrain

    def run(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(pretrain, "run", run)
    preset = tmp_path / "p.toml"
    preset.write_text("")
    assert main(["train", "--config", str(preset)]) == 143


def test_resume_hint_under_torchrun_is_the_torchrun_command(tmp_path, monkeypatch):
    from scratchllm.train.cli import _torchrun_argv, resume_command

    fake = tmp_path / "torchrun"
    fake.write_text(f"#!{sys.executable}\nimport time; time.sleep(60)\n")
    fake.chmod(0o755)
    args = ["--nproc_per_node=2", "-m", "scratchllm", "train", "--config", "a b.toml", "--resume-from", "x/step_2"]
    proc = subprocess.Popen([str(fake), *args])
    try:
        for _ in range(200):  # until the interpreter has replaced the shell's exec
            argv = _torchrun_argv(proc.pid)
            if argv:
                break
            threading.Event().wait(0.05)
        assert argv == ["torchrun", *args]
    finally:
        proc.kill()
        proc.wait()
    assert resume_command(["train", "--config", "c.toml"]) == "scratchllm train --config c.toml --resume"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")
    monkeypatch.setattr("scratchllm.train.cli._torchrun_argv", lambda pid: ["torchrun", *args])
    assert resume_command(["train"]) == \
        "torchrun --nproc_per_node=2 -m scratchllm train --config 'a b.toml' --resume"
    monkeypatch.setattr("scratchllm.train.cli._torchrun_argv", lambda pid: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command(["train", "--config", "c.toml"]) == \
        "torchrun --nnodes=1 --nproc_per_node=4 -m scratchllm train --config c.toml --resume"


def test_trainer_releases_the_lock_when_fit_fails(make_cfg):
    cfg = make_cfg()
    trainer = build_trainer(cfg, Dist())

    class Boom:
        def next_batch(self):
            raise ValueError("boom")

    trainer.train_source = Boom()
    with pytest.raises(ValueError):
        trainer.fit()
    assert os.path.realpath(cfg.out_dir) not in runlock._held
