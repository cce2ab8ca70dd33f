from __future__ import annotations

import math
from pathlib import Path

import pytest
from torch import nn

from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.model.model import ModelConfig, Transformer
from scratchllm.train.config import OptimConfig, ScheduleConfig, TrainConfig, ac_every
from scratchllm.train.optim import build_optimizer, param_groups
from scratchllm.train.schedule import lr_factor


def curve(kind: str, steps: int = 100, **kw) -> list[float]:
    cfg = ScheduleConfig(kind=kind, warmup_steps=10, min_lr_ratio=0.1, **kw)
    return [lr_factor(s, cfg, steps) for s in range(steps)]


def test_warmup_is_linear_and_reaches_peak():
    c = curve("cosine")
    assert c[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert max(c) == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_min_at_last_step():
    c = curve("cosine")
    assert all(a >= b for a, b in zip(c[9:], c[10:], strict=False))
    assert c[-1] == pytest.approx(0.1)
    mid = 10 + (99 - 10) / 2  # half-way through the decay: halfway between peak and min
    assert lr_factor(int(mid), ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1), 100) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_is_flat_then_decays_over_the_last_fraction(shape):
    c = curve("wsd", decay_fraction=0.2, decay_shape=shape)
    assert c[10:80] == [1.0] * 70  # stable phase
    assert all(a > b for a, b in zip(c[79:], c[80:], strict=False))  # strictly decaying
    assert c[-1] == pytest.approx(0.1)


def test_constant_after_warmup():
    assert curve("constant")[10:] == [1.0] * 90


def test_zero_warmup_starts_at_peak():
    assert lr_factor(0, ScheduleConfig(warmup_steps=0), 10) == 1.0


def test_ac_mode_parsing():
    assert [ac_every(m) for m in ("none", "full", "every-3")] == [0, 1, 3]
    with pytest.raises(ScratchError, match="every-N"):
        ac_every("every-0")


def tiny_model() -> Transformer:
    return Transformer(ModelConfig(vocab_size=50, context_length=16, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                                   pos_emb="learned"))


def test_no_decay_on_norms_biases_embeddings():
    model = tiny_model()
    model.extra = nn.Linear(4, 4, bias=True)  # something with a bias
    decay, exempt = param_groups(model, OptimConfig(weight_decay=0.1))
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert set(exempt["names"]) == {"tok_emb.weight", "pos_emb.weight", "norm.weight", "extra.bias",
                                    *(f"layers.{i}.{n}_norm.weight" for i in range(2) for n in ("attn", "mlp"))}
    assert "layers.0.attn.q_proj.weight" in decay["names"] and "extra.weight" in decay["names"]
    # the head tied to the embedding is one parameter, counted once and exempt with it
    assert "lm_head.weight" not in decay["names"] + exempt["names"]
    n_opt = sum(p.numel() for g in (decay, exempt) for p in g["params"])
    assert n_opt == model.num_params()  # every parameter, the tied one once


def test_no_decay_kinds_are_configurable():
    decay, exempt = param_groups(tiny_model(), OptimConfig(no_decay=["norm"]))
    assert "tok_emb.weight" in decay["names"] and "norm.weight" in exempt["names"]


def test_only_trainable_parameters_are_optimised():
    model = tiny_model()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("layers.1.")
    opt = build_optimizer(model, OptimConfig(), "cpu")
    trainable = {id(p) for p in model.layers[1].parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ScratchError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig(), "cpu")


def test_optimizer_is_fused_on_cuda_only():
    assert not build_optimizer(tiny_model(), OptimConfig(), "cpu").defaults["fused"]
    assert build_optimizer(tiny_model(), OptimConfig(fused=False), "cuda").defaults["foreach"]


def test_train_config_resolves_model_preset(make_cfg):
    cfg = load_config(TrainConfig, None, ['model.preset="configs/model/1m.toml"', "model.vocab_size=300"])
    assert cfg.model.d_model == 128 and cfg.model.vocab_size == 300 and isinstance(cfg.model, ModelConfig)
    assert cfg.model.n_kv_heads == 4  # every field resolved, so the saved config is self-contained
    with pytest.raises(ScratchError, match="seq_len"):
        make_cfg("data.seq_len=65")
    with pytest.raises(ScratchError, match="unknown config key 'model.d_modle'"):
        make_cfg("model.d_modle=3")


@pytest.mark.parametrize("preset", sorted((Path(__file__).parents[2] / "configs" / "train").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_presets_load_and_resolve_their_model(preset):
    cfg = load_config(TrainConfig, preset, [])
    model = cfg.model  # the model preset resolved and valid
    assert cfg.data.seq_len <= model.context_length and model.vocab_size >= 4096
    assert (cfg.train.precision == "bf16") == preset.stem.startswith("gpu")  # CPU preset stays fp32
