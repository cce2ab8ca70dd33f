"""Muon: the Newton-Schulz orthogonalisation, equality with torch.optim.Muon / AdamW, parameter groups,
training and exact resume (the 2-process DDP/FSDP2 checks are in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scratchllm.model.model import ModelConfig, Transformer
from scratchllm.train.config import OptimConfig
from scratchllm.train.optim import Muon, build_optimizer, newton_schulz, newton_schulz_many, param_groups
from scratchllm.train.parallel import Dist
from scratchllm.train.pretrain import build_trainer
from scratchllm.train.schedule import lr_factor

SHAPES = [(48, 16), (16, 40), (24, 24), (48, 16), (24, 24), (48, 16)]  # tall, wide, square; repeats are batched


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (344, 128)])
def test_newton_schulz_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = newton_schulz(g).float()
    assert o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.6 and s.max() < 1.25, s  # the records' quintic: roughly [0.7, 1.2], not exactly 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cos > 0.95  # the same singular vectors as the exact U V^T


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_batched_newton_schulz_equals_one_matrix_at_a_time(dtype):
    """The stacked (baddbmm) iteration gives each matrix exactly what the single-matrix one does."""
    g = torch.Generator().manual_seed(3)
    mats = [torch.randn(*s, generator=g) for s in [(40, 24), (24, 40), (40, 24), (40, 24), (24, 40), (8, 8)]]
    many = newton_schulz_many(mats, dtype=dtype)
    for m, o in zip(mats, many, strict=True):
        assert o.shape == m.shape and o.dtype == dtype
        assert torch.equal(o, newton_schulz(m, dtype=dtype))
    stack = newton_schulz(torch.stack(mats[:1] + mats[2:4]), dtype=dtype)
    assert torch.equal(stack[1], newton_schulz(mats[2], dtype=dtype))


def params_and_grads(seed=0, steps=3):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=g) for s in SHAPES]
    grads = [[torch.randn(*s, generator=g) for s in SHAPES] for _ in range(steps)]
    return params, grads


def run(opt_cls, params, grads, **kw):
    ps = [nn.Parameter(p.clone()) for p in params]
    opt = opt_cls(ps, **kw)
    for step_grads in grads:
        for p, gr in zip(ps, step_grads, strict=True):
            p.grad = gr.clone()
        opt.step()
    return ps


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("scale", ["original", "match_rms_adamw"])
def test_muon_equals_torch_muon(nesterov, scale):
    """Same definitions: EMA momentum buffer, Nesterov as grad.lerp(buf, momentum), 5 bf16 quintic
    iterations with (3.4445, -4.7750, 2.0315), eps 1e-7, decoupled decay lr * wd, and torch's
    adjust_lr_fn "original" / "match_rms_adamw" for our lr_scale of the same name."""
    params, grads = params_and_grads()
    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov}
    ours = run(lambda ps, **k: Muon([{"params": ps, "use_muon": True}], lr_scale=scale, **k), params, grads, **kw)
    ref = run(lambda ps, **k: torch.optim.Muon(ps, adjust_lr_fn=scale, **k), params, grads, **kw)
    for a, b, before in zip(ours, ref, params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(a, before)


def test_adamw_groups_equal_torch_adamw():
    params, grads = params_and_grads(seed=1, steps=4)
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    ours = run(lambda ps, **k: Muon([{"params": ps, "use_muon": False}], **k), params, grads, **kw)
    ref = run(lambda ps, **k: torch.optim.AdamW(ps, foreach=False, **k), params, grads, **kw)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_muon_groups_hidden_matrices_only():
    model = Transformer(ModelConfig(vocab_size=50, context_length=16, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                                    pos_emb="learned", tie_embeddings=False))
    muon, decay, exempt = param_groups(model, OptimConfig(name="muon", muon_lr=0.05, lr=1e-3))
    assert muon["use_muon"] and muon["lr"] == 0.05 and not decay["use_muon"] and not exempt["use_muon"]
    assert set(muon["names"]) == {f"layers.{i}.{m}.{n}_proj.weight" for i in range(2)
                                  for m, names in (("attn", "qkvo"), ("mlp", ("gate", "up", "down")))
                                  for n in names}
    assert decay["names"] == ["lm_head.weight"]  # an untied head stays with AdamW (decayed)
    assert {"tok_emb.weight", "pos_emb.weight", "norm.weight"} <= set(exempt["names"])
    opt = build_optimizer(model, OptimConfig(name="muon"), "cpu")
    assert isinstance(opt, Muon)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    # the default stays AdamW
    assert type(build_optimizer(model, OptimConfig(), "cpu")) is torch.optim.AdamW


def test_muon_trains_with_separate_scheduled_lrs(make_cfg):
    cfg = make_cfg("optim.name=muon", "optim.muon_lr=0.02", "optim.lr=3e-3", "train.max_steps=8")
    t = build_trainer(cfg, Dist())
    losses = [t.train_step([t.train_source.next_batch()])["loss"] for _ in range(8)]
    assert losses[-1] < losses[0] - 0.3
    t.step = 0  # warmup: each group's lr is its own peak times the schedule's factor (< 1 here)
    t.train_step([t.train_source.next_batch()])
    factor = lr_factor(0, cfg.schedule, cfg.train.max_steps)
    assert factor < 1
    # tied embeddings: no decayed AdamW parameter, so the groups are Muon's and AdamW's exempt one
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx([0.02 * factor, 3e-3 * factor])
    t.close()


def test_muon_resume_is_exact(make_cfg, tmp_path):
    """Optimizer state (momentum buffers, AdamW moments) in the checkpoint: a resumed run continues bit-exactly."""
    cfg = make_cfg("optim.name=muon", "train.max_steps=5", "checkpoint.interval=3", out=tmp_path / "full")
    full = build_trainer(cfg, Dist())
    full.fit()
    from scratchllm.train import checkpoint as ckpt

    part = tmp_path / "part" / "checkpoints"
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000003", part / "step_000003")
    cfg2 = make_cfg("optim.name=muon", "train.max_steps=5", "checkpoint.interval=3", out=tmp_path / "part")
    resumed = build_trainer(cfg2, Dist(), resume=True)
    assert resumed.step == 3
    bufs = [k for k in ckpt.load_checkpoint(part / "step_000003").optim_state["state"].values()
            if "momentum_buffer" in k]
    assert len(bufs) == 7 * 2  # q, k, v, o, gate, up, down in each of the 2 blocks
    resumed.fit()
    a = full.model.state_dict()
    b = resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
