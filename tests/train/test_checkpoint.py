"""Checkpoints: complete state, atomic writes, keep-last-k, and clear errors for bad checkpoints."""

from __future__ import annotations

import errno
import json
import random

import numpy as np
import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.model.model import Transformer
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.parallel import Dist
from scratchllm.train.pretrain import build_trainer


def trained(cfg, steps: int = 2, resume: bool = False):
    trainer = build_trainer(cfg, Dist(), resume=resume)
    for _ in range(steps):
        trainer.train_step([trainer.train_source.next_batch()])
        trainer.step += 1
    return trainer


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.rng_state()))  # plain JSON, no pickle
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_and_resume_restores_everything(make_cfg):
    cfg = make_cfg()
    a = trained(cfg, steps=3)
    path = a.save()
    assert path.name == "step_000003" and (path.parent / "latest").read_text().strip() == "step_000003"
    assert sorted(p.name for p in path.iterdir()) == [
        "checksums.json", "config.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    b = build_trainer(cfg, Dist(), resume=True)
    assert b.step == 3 and b.resumed_from == path
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][key], sb["state"][i][key])
    # the data loader continues where it was: the next batches are the same
    assert all(torch.equal(u, v) for u, v in zip(a.train_source.next_batch(), b.train_source.next_batch(),
                                                  strict=True))
    # a checkpoint is also a model directory
    model = Transformer.from_pretrained(path)
    assert torch.equal(model.tok_emb.weight, a.model.tok_emb.weight)


def test_rng_state_is_restored_on_resume(make_cfg):
    cfg = make_cfg()
    a = trained(cfg, steps=1)
    a.save()
    expected = torch.rand(4)
    b = build_trainer(cfg, Dist(), resume=True)  # building reseeds; resume restores the saved state
    assert torch.equal(torch.rand(4), expected)
    assert b.step == 1


def test_keep_last_and_latest(make_cfg):
    trainer = trained(make_cfg("checkpoint.keep_last=2"), steps=0)
    for _ in range(4):
        trainer.step += 1
        trainer.save()
    root = trainer.ckpt_root
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [3, 4]
    assert ckpt.latest_checkpoint(root).name == "step_000004"
    assert not list(root.glob(".tmp_*"))


def test_existing_run_needs_resume(make_cfg):
    cfg = make_cfg()
    trained(cfg, steps=1).save()
    with pytest.raises(ScratchError, match="already holds a run") as e:
        build_trainer(cfg, Dist())
    assert "--resume" in e.value.hint


def test_resume_without_checkpoint_starts_fresh(make_cfg):
    trainer = build_trainer(make_cfg(), Dist(), resume=True)
    assert trainer.step == 0 and trainer.resumed_from is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_corrupt_checkpoint_is_refused_with_alternatives(make_cfg, damage, victim):
    cfg = make_cfg()
    trainer = trained(cfg, steps=1)
    first = trainer.save()
    trainer.step += 1
    second = trainer.save()
    f = second / victim
    data = f.read_bytes()
    if damage == "flip":
        f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    else:
        f.unlink()
    with pytest.raises(ScratchError) as e:
        build_trainer(cfg, Dist(), resume=True)
    assert victim in e.value.message and str(second) in e.value.message
    assert first.name in e.value.hint and "--resume-from" in e.value.hint
    # the earlier one still resumes
    assert build_trainer(cfg, Dist(), resume_from=first).step == 1


def test_corrupt_checksums_file(make_cfg):
    cfg = make_cfg()
    path = trained(cfg, steps=1).save()
    (path / "checksums.json").write_text("{not json")
    with pytest.raises(ScratchError, match="checksums.json is corrupt"):
        build_trainer(cfg, Dist(), resume=True)


def test_checkpoint_from_another_model_config(make_cfg):
    trained(make_cfg(), steps=1).save()
    with pytest.raises(ScratchError, match=r"different model config \(d_model: 32 in the checkpoint, 64") as e:
        build_trainer(make_cfg("model.d_model=64"), Dist(), resume=True)
    assert "config.json" in e.value.hint


def test_disk_full_while_saving_keeps_previous_checkpoint(make_cfg, monkeypatch):
    trainer = trained(make_cfg(), steps=1)
    good = trainer.save()
    trainer.step += 1

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("scratchllm.io.os.fsync", no_space)
    with pytest.raises(ScratchError, match="disk full while saving checkpoint step_000002") as e:
        trainer.save()
    monkeypatch.undo()
    assert str(good) in e.value.message and "--resume" in e.value.hint
    root = trainer.ckpt_root
    assert [p.name for _, p in ckpt.list_checkpoints(root)] == ["step_000001"]
    assert not list(root.glob(".tmp_*")) and ckpt.latest_checkpoint(root) == good
    ckpt.verify_checkpoint(good)


def test_stale_temporary_directory_is_ignored_and_removed(make_cfg):
    cfg = make_cfg("train.max_steps=1")
    trainer = trained(cfg, steps=0)
    stale = trainer.ckpt_root / ".tmp_step_000005_123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(trainer.ckpt_root) is None
    trainer.fit()
    assert not stale.exists()
