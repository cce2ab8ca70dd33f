from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.finetune.lora import LoraConfig, apply_lora, count_trainable, merged_model
from scratchllm.finetune.nf4 import (
    NF4Linear,
    dequantize_nf4,
    dynamic_code,
    nf4_code,
    quantize_model_nf4,
    quantize_nf4,
)
from scratchllm.model.model import ModelConfig, Transformer


def weights(seed: int, shape=(128, 320), std=0.02) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def test_code_shape():
    # The values themselves are checked against bitsandbytes' table in test_matches_bitsandbytes (the
    # independent reference); here only what the format needs: 16 increasing values, exact -1, 0, 1.
    code = nf4_code()  # built from the normal quantile function
    assert code.shape == (16,) and torch.all(code[1:] > code[:-1])
    assert code[7] == 0 and code[0] == -1 and code[-1] == 1


def test_roundtrip_error_and_memory():
    w = weights(0)
    for dq in (False, True):
        q = quantize_nf4(w, 64, double_quant=dq)
        back = dequantize_nf4(q)
        assert back.shape == w.shape and back.dtype == w.dtype
        # every value lands within half the widest code gap of the block's scale
        scale = w.abs().reshape(-1, 64).amax(1, keepdim=True)
        err = (back - w).reshape(-1, 64).abs() / scale
        assert err.max() < 0.16 + (0.01 if dq else 1e-6)
        bits = 8 * q.nbytes() / w.numel()
        assert bits == pytest.approx(4.127 if dq else 4.5, abs=0.01)
    odd = quantize_nf4(torch.randn(7, 9), 64)  # not a whole block, odd length
    assert dequantize_nf4(odd).shape == (7, 9)


@pytest.mark.parametrize("shape,blocksize", [((7, 9), 64), ((33,), 2), ((96, 40), 64), ((3, 5, 7), 16)])
def test_dequantize_equals_nibble_by_nibble_decoding(shape, blocksize):
    # the byte-pair lookup must give exactly code[index] * block scale, nibbles high first
    w = weights(3, shape, std=0.05)
    for dq in (False, True):
        q = quantize_nf4(w, blocksize, double_quant=dq)
        idx = torch.stack([q.packed >> 4, q.packed & 0x0F], dim=1).view(-1)[: w.numel()].long()
        n = w.numel()
        values = torch.cat([nf4_code()[idx], torch.zeros(-n % blocksize)]).view(-1, blocksize)
        expected = (values * q.block_absmax()[:, None]).view(-1)[:n].view(shape)
        assert torch.equal(dequantize_nf4(q), expected)


def test_matches_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes.functional")
    for seed in range(2):
        w = weights(seed, (256, 512))  # 2048 blocks = 8 groups of 256 scales
        # single quantization: identical packed bytes and scales
        packed, state = bnb.quantize_4bit(w, blocksize=64, compress_statistics=False, quant_type="nf4")
        ours = quantize_nf4(w, 64, double_quant=False)
        torch.testing.assert_close(state.code, nf4_code(), atol=2e-7, rtol=0)
        assert torch.equal(ours.packed, packed.flatten())
        torch.testing.assert_close(ours.absmax, state.absmax, atol=0, rtol=0)
        torch.testing.assert_close(dequantize_nf4(ours), bnb.dequantize_4bit(packed, state), atol=1e-6, rtol=0)
        # double quantization: same dynamic 8-bit code, offset, second-level scales
        packed2, state2 = bnb.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        ours2 = quantize_nf4(w, 64, double_quant=True)
        assert torch.equal(dynamic_code(), state2.state2.code)
        assert ours2.absmax_offset == pytest.approx(float(state2.offset), rel=1e-6)
        torch.testing.assert_close(ours2.absmax_scale, state2.state2.absmax, atol=0, rtol=0)
        assert torch.equal(ours2.packed, packed2.flatten())
        # 8-bit scale indices: equal except exact ties between two codes, where ours is as near
        centred = (ours.absmax - ours2.absmax_offset).view(-1, 256) / ours2.absmax_scale[:, None]
        code, a, b = dynamic_code(), ours2.absmax.long(), state2.absmax.long()
        assert (a == b).float().mean() > 0.99
        diff = a != b
        near_ours = (centred.flatten()[diff] - code[a[diff]]).abs()
        near_theirs = (centred.flatten()[diff] - code[b[diff]]).abs()
        assert torch.all(near_ours <= near_theirs + 1e-6)
        torch.testing.assert_close(dequantize_nf4(ours2), bnb.dequantize_4bit(packed2, state2), atol=2e-3, rtol=0)


def test_qlora_model_forward_grads_and_savings():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=300, context_length=64, d_model=64, n_layers=2, n_heads=4, d_ff=128))
    x = torch.randint(0, 300, (2, 16))
    before = m(x)
    dense_bytes = sum(p.numel() * 4 for n, p in m.named_parameters() if "proj" in n)
    assert quantize_model_nf4(m, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) == 14
    nf4 = [mod for mod in m.modules() if isinstance(mod, NF4Linear)]
    nf4_bytes = sum(b.numel() * b.element_size() for mod in nf4 for b in mod.buffers())
    assert nf4_bytes < dense_bytes / 7  # ~4.1 bits instead of 32
    after = m(x)
    assert (after - before).abs().max() < 0.05 * before.abs().max()  # close, not equal
    apply_lora(m, LoraConfig(r=4, alpha=8))
    trainable, total = count_trainable(m)
    assert 0 < trainable < total / 10
    _, loss = m(x, targets=x)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in m.named_parameters() if "lora_" not in n)
    plain = merged_model(m)  # dequantized + merged, a plain Transformer
    torch.testing.assert_close(plain(x), m(x), atol=1e-5, rtol=1e-5)


def test_nf4_linear_gradients_equal_dense_dequantized():
    lin = torch.nn.Linear(64, 48, bias=False)
    q = NF4Linear(lin)
    dense = q.dequantized_weight()
    x = torch.randn(3, 5, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = q(x), torch.nn.functional.linear(x2, dense)
    torch.testing.assert_close(y, y2)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    assert not list(q.parameters())  # nothing in the quantized layer can train


def test_bad_input():
    with pytest.raises(ScratchError, match="blocksize"):
        quantize_nf4(torch.randn(4, 4), 63)
    with pytest.raises(ScratchError, match="floating-point"):
        quantize_nf4(torch.ones(4, dtype=torch.int64))
