from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.model.cli import activation_bytes_per_token
from scratchllm.model.model import IGNORE_INDEX, ModelConfig, Transformer, sinusoidal_table

POSITIONS = ["rope", "sinusoidal", "learned"]
VOCAB = 97  # as in conftest.py
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"


def test_shapes_and_loss(make_model, tokens):
    model = make_model()
    logits = model(tokens)
    assert logits.shape == (3, 32, VOCAB)
    logits2, loss = model(tokens[:, :-1], tokens[:, 1:])
    expected = torch.nn.functional.cross_entropy(logits2.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_ignored_targets_do_not_count(make_model, tokens):
    model = make_model()
    targets = tokens.clone()
    targets[:, :16] = IGNORE_INDEX
    logits, loss = model(tokens, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 16:].reshape(-1, VOCAB), tokens[:, 16:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_initial_loss_is_near_uniform(make_model):
    model = make_model(vocab_size=512, d_model=64)
    idx = torch.randint(0, 512, (4, 32))
    _, loss = model(idx, torch.randint(0, 512, (4, 32)))
    assert abs(loss.item() - math.log(512)) < 0.3


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_sdpa_matches_explicit_math(make_model, make_config, tokens, n_kv_heads):
    sdpa = make_model(n_kv_heads=n_kv_heads)
    math_model = Transformer(make_config(n_kv_heads=n_kv_heads, attn_impl="math")).eval()
    math_model.load_state_dict(sdpa.state_dict())
    torch.testing.assert_close(sdpa(tokens), math_model(tokens), atol=1e-5, rtol=0)
    # gradients too: training uses the SDPA backward
    for m in (sdpa, math_model):
        m.zero_grad()
        m(tokens, tokens)[1].backward()
    for (name, a), b in zip(sdpa.named_parameters(), math_model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("pos_emb", POSITIONS)
@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_future_tokens_never_change_past_logits(make_model, tokens, pos_emb, attn_impl):
    model = make_model(pos_emb=pos_emb, attn_impl=attn_impl)
    base = model(tokens)
    for p in (0, 7, 20, 31):
        changed = tokens.clone()
        changed[:, p] = (changed[:, p] + 1) % VOCAB
        out = model(changed)
        torch.testing.assert_close(out[:, :p], base[:, :p], atol=0, rtol=0)
        assert not torch.allclose(out[:, p], base[:, p])  # and the changed position itself is seen


def test_every_past_token_is_seen(make_model, tokens):
    # The last position must depend on every earlier token (no over-masking).
    model = make_model()
    base = model(tokens)[:, -1]
    for p in range(31):
        changed = tokens.clone()
        changed[:, p] = (changed[:, p] + 1) % VOCAB
        assert not torch.allclose(model(changed)[:, -1], base), p


def test_gqa_equals_mha_with_repeated_kv_heads(make_model, make_config, tokens):
    # Grouping convention: KV head j serves query heads j*g .. j*g+g-1 (as in HF's repeat_kv).
    gqa = make_model(n_kv_heads=2)
    mha = Transformer(make_config(n_kv_heads=4)).eval()
    state = gqa.state_dict()
    hd = gqa.cfg.head_dim
    for name, w in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = w.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    torch.testing.assert_close(gqa(tokens), mha(tokens), atol=1e-5, rtol=0)


def test_rope_is_relative_absolute_schemes_are_not(make_model, tokens):
    x = tokens[:, :16]
    shifted = torch.arange(16) + 9
    rope = make_model(pos_emb="rope")
    torch.testing.assert_close(rope(x, input_pos=shifted), rope(x), atol=1e-5, rtol=0)
    for pos_emb in ("sinusoidal", "learned"):
        model = make_model(pos_emb=pos_emb)
        assert not torch.allclose(model(x, input_pos=shifted), model(x), atol=1e-3)
        torch.testing.assert_close(model(x, input_pos=torch.arange(16)), model(x), atol=0, rtol=0)


def test_sinusoidal_table_formula():
    t = sinusoidal_table(8, 5)
    p, i = 3, 2
    assert t[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert t[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)


def test_sequence_longer_than_context_is_refused(make_model):
    model = make_model()
    with pytest.raises(ScratchError, match="33 tokens .* context_length=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_scaled_residual_init():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, d_model=256, n_layers=8, n_heads=4, d_ff=512)
    model = Transformer(cfg)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1), name
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
    assert model.lm_head.weight is model.tok_emb.weight


def test_param_count_and_flops(make_config):
    cfg = make_config(tie_embeddings=False, pos_emb="learned")
    model = Transformer(cfg)
    d, f, hd, L = 48, 80, 12, 2
    per_layer = d * 4 * hd + 2 * d * 2 * hd + d * 4 * hd + 3 * d * f + 2 * d  # q, k+v (2 kv heads), o, MLP, norms
    emb, head, pos = VOCAB * d, VOCAB * d, 32 * d
    total = emb + pos + L * per_layer + d + head
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - emb - pos
    assert model.flops_per_token(10) == 6 * (total - emb - pos) + 12 * L * 4 * hd * 10
    assert model.flops_per_token() == model.flops_per_token(32)
    tied = Transformer(make_config())
    assert tied.num_params() == tied.num_params(non_embedding=True) == total - pos - head


def test_activation_estimate_matches_saved_tensors(make_config):
    # The `model info` activation estimate vs. what autograd really keeps for backward.
    cfg = make_config(vocab_size=300, d_model=128, n_heads=4, n_kv_heads=2, d_ff=352, n_layers=3, context_length=64)
    model = Transformer(cfg)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    idx = torch.randint(0, 300, (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    measured = sum(saved.values()) / idx.numel()
    assert activation_bytes_per_token(cfg) == pytest.approx(measured, rel=0.15)


def test_dropout_only_in_training(make_model, tokens):
    model = make_model(dropout=0.5)
    torch.testing.assert_close(model(tokens), model(tokens), atol=0, rtol=0)
    model.train()
    assert not torch.allclose(model(tokens), model(tokens))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["d_model=48", "n_heads=5"], "n_heads=5 does not divide d_model=48"),
        (["n_heads=4", "n_kv_heads=3"], "n_heads=4 is not a multiple of n_kv_heads=3"),
        (["n_heads=2", "n_kv_heads=4"], "n_heads=2 is not a multiple of n_kv_heads=4"),
        (["n_layers=0"], "n_layers must be at least 1"),
        (["d_model=20", "n_heads=4"], "RoPE needs an even head_dim"),
        (["pos_emb=alibi"], "'pos_emb' must be one of"),
        (["dropout=1.0"], "dropout must be in"),
    ],
)
def test_bad_configs_name_the_field(overrides, match):
    with pytest.raises(ScratchError, match=match):
        load_config(ModelConfig, None, overrides)


def test_presets_load_and_have_their_advertised_size():
    sizes = {"1m": 1.13e6, "10m": 11.0e6, "30m": 31.3e6, "125m": 125.9e6}
    for name, expected in sizes.items():
        cfg = load_config(ModelConfig, PRESETS / f"{name}.toml")
        with torch.device("meta"):
            n = Transformer(cfg).num_params()
        assert n == pytest.approx(expected, rel=0.01), name
