"""The training loop end to end on tiny byte-level shards: learning, logging, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from scratchllm.cli import main
from scratchllm.errors import ScratchError
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.data import unigram_entropy
from scratchllm.train.loop import NonFiniteLoss, lm_loss
from scratchllm.train.parallel import Dist
from scratchllm.train.pretrain import build_trainer
from scratchllm.train.tracking import read_metrics


class ByteTokenizer:
    eos_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_loss_falls_well_below_unigram_entropy(make_cfg, shard_dir):
    cfg = make_cfg("train.max_steps=250", "train.batch_size=32", "model.d_model=64", "model.d_ff=128",
                   "schedule.warmup_steps=10", "optim.lr=5e-3", "eval.batches=4")
    trainer = build_trainer(cfg, Dist())
    result = trainer.fit()
    assert result.reason == "done" and result.step == 250
    baseline = unigram_entropy(shard_dir)  # ~3.2 nats for bytes of English + Python
    val = read_metrics(cfg.out_dir, "val")[-1]["loss"]
    train = read_metrics(cfg.out_dir, "train")
    assert train[0]["loss"] > baseline + 1.5  # starts near ln(257) = 5.55
    assert val < baseline - 0.5, (val, baseline)  # ~2.6: it has learned far more than frequencies


def test_metrics_run_record_and_tensorboard(make_cfg):
    cfg = make_cfg("log.tensorboard=true", "eval.interval=3", "eval.sample_interval=3", "eval.sample_tokens=5",
                   'eval.sample_prompts=["def "]')
    trainer = build_trainer(cfg, Dist())
    trainer.tokenizer = ByteTokenizer()
    trainer.fit()
    rows = read_metrics(cfg.out_dir)
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "rss_mb"} <= train[0].keys()
    assert train[-1]["tokens"] == 6 * 4 * 32
    assert [r["step"] for r in rows if r["kind"] == "val"] == [3, 6]
    samples = [r for r in rows if r["kind"] == "sample"]
    assert [r["step"] for r in samples] == [3, 6] and all(r["text"].startswith("def ") for r in samples)
    run = json.loads((cfg.out_dir / "run.json").read_text())["runs"][0]
    assert run["git_commit"] and run["world_size"] == 1
    assert 'seq_len = 32' in (cfg.out_dir / "config.toml").read_text()
    assert list((cfg.out_dir / "tensorboard").glob("events.out.tfevents.*"))


class StopAt:
    """Wraps a batch source and runs ``action`` when batch number ``at`` is requested."""

    def __init__(self, source, at, action):
        self.source, self.at, self.action, self.n = source, at, action, 0

    def next_batch(self):
        self.n += 1
        if self.n == self.at:
            self.action()
        return self.source.next_batch()

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def losses(out_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(out_dir, "train")]


def test_interrupted_and_resumed_run_is_identical(make_cfg, tmp_path):
    extra = ("train.max_steps=8", "checkpoint.interval=3", "model.dropout=0.1", "train.deterministic=true")
    full = make_cfg(*extra, out=tmp_path / "full")
    build_trainer(full, Dist()).fit()

    part = make_cfg(*extra, out=tmp_path / "part")
    trainer = build_trainer(part, Dist())

    def crash():
        raise RuntimeError("simulated crash")

    trainer.train_source = StopAt(trainer.train_source, 5, crash)  # dies during step 5
    with pytest.raises(RuntimeError):
        trainer.fit()
    assert [s for s, _ in losses(part.out_dir)] == [1, 2, 3, 4]
    resumed = build_trainer(part, Dist(), resume=True)
    assert resumed.step == 3
    resumed.fit()
    assert losses(part.out_dir) == losses(full.out_dir)  # bit-identical, rows after step 3 replaced
    assert len(json.loads((part.out_dir / "run.json").read_text())["runs"]) == 2


def test_sigterm_saves_checkpoint_and_stops(make_cfg):
    cfg = make_cfg("train.max_steps=20", "checkpoint.interval=0")
    trainer = build_trainer(cfg, Dist())
    trainer.train_source = StopAt(trainer.train_source, 4, lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = trainer.fit()
    assert (result.reason, result.step, result.exit_code) == ("SIGTERM", 4, 143)
    assert result.checkpoint.name == "step_000004" and ckpt.latest_checkpoint(trainer.ckpt_root) == result.checkpoint
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert build_trainer(cfg, Dist(), resume=True).step == 4


def test_nan_loss_stops_with_last_good_checkpoint(make_cfg):
    cfg = make_cfg("train.max_steps=10", "checkpoint.interval=2")
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss, metrics = lm_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 5 else loss), metrics

    trainer = build_trainer(cfg, Dist())
    trainer.loss_fn = poisoned
    with pytest.raises(NonFiniteLoss) as e:
        trainer.fit()
    assert "loss is nan" in e.value.message and "at step 5" in e.value.message
    assert "step_000004" in e.value.message and "--resume" in e.value.hint
    assert [s for s, _ in ckpt.list_checkpoints(trainer.ckpt_root)] == [2, 4]
    # the update was not applied: the weights equal the last checkpoint's
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(trainer.ckpt_root)).model_state
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_missing_shard_is_reported(make_cfg, shard_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    (broken / "train_00001.bin").unlink()
    with pytest.raises(ScratchError, match="train_00001.bin is missing") as e:
        build_trainer(make_cfg(f'data.path="{broken}"'), Dist())
    assert "data prepare" in e.value.hint
    with pytest.raises(ScratchError, match="no prepared data") as e:
        build_trainer(make_cfg(f'data.path="{tmp_path / "nowhere"}"'), Dist())
    assert "data prepare" in e.value.hint


def test_vocab_mismatch_is_reported(make_cfg):
    """Refused before training, both ways: a larger model would sample ids the tokenizer cannot decode."""
    for vocab in (200, 4096):
        with pytest.raises(ScratchError, match=f"model config has vocab_size={vocab} but the tokenizer of the data "
                                               ".* has 257 tokens") as e:
            build_trainer(make_cfg(f"model.vocab_size={vocab}"), Dist())
        assert "model.vocab_size=257" in e.value.hint


def test_final_checkpoint_is_saved_before_the_final_samples(make_cfg):
    """A failure in the end-of-run sample must not cost the final checkpoint."""
    trainer = build_trainer(make_cfg("train.max_steps=3", "eval.sample_tokens=4"), Dist())
    trainer.tokenizer = ByteTokenizer()

    def failing_sample():
        raise RuntimeError("sampling failed")

    trainer.sample = failing_sample
    with pytest.raises(RuntimeError, match="sampling failed"):
        trainer.fit()
    assert ckpt.latest_checkpoint(trainer.ckpt_root).name == "step_000003"


def test_cli_trains_and_reports_errors(make_cfg, tmp_path, capsys):
    from scratchllm.config import to_toml

    cfg = make_cfg("train.max_steps=3", out=tmp_path / "cli")
    preset = tmp_path / "preset.toml"
    preset.write_text(to_toml(cfg))
    assert main(["train", "--config", str(preset)]) == 0
    assert [s for s, _ in losses(cfg.out_dir)] == [1, 2, 3]
    assert main(["train", "--config", str(preset)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # A longer run changes the learning-rate schedule: refused unless asked for.
    assert main(["train", "--config", str(preset), "--resume", "train.max_steps=5"]) == 2
    err = capsys.readouterr().err
    assert "train.max_steps: 3 -> 5" in err and "train.allow_schedule_change=true" in err
    assert main(["train", "--config", str(preset), "--resume", "train.max_steps=5",
                 "train.allow_schedule_change=true"]) == 0
    assert "resuming on a changed schedule" in capsys.readouterr().err
    assert [s for s, _ in losses(cfg.out_dir)] == [1, 2, 3, 4, 5]
    assert main(["train", "--config", str(preset), "train.activation_checkpointing=some"]) == 2
    assert "every-N" in capsys.readouterr().err


def test_auto_threads_uses_idle_cores(monkeypatch):
    import os

    from scratchllm.train.loop import auto_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.4, 0.0, 0.0))
    assert auto_threads() == 6
    monkeypatch.setattr(os, "getloadavg", lambda: (12.0, 0.0, 0.0))  # oversubscribed: one thread
    assert auto_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert auto_threads() == 0  # the launcher's (torchrun's) choice stands
