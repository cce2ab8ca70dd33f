"""Weight-only INT8/INT4 quantization: rounding vs PyTorch's reference quantizer, logits error, save/load."""

from __future__ import annotations

import warnings

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.generate import SamplingParams, generate
from scratchllm.infer.quantize import (
    Int4Linear,
    Int8Linear,
    quantize,
    quantize_int4,
    quantize_int8,
    save_quantized,
    unpack_int4,
)
from scratchllm.infer.load import load_model
from scratchllm.model.checkpoint import state_dict_bytes as weight_bytes

from .conftest import VOCAB


def test_int8_codes_equal_torch_reference_quantizer():
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_int8(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated but still the reference
        ref = torch.quantize_per_channel(w, scale.double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(q, ref.int_repr())
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("group_size", [16, 32])
def test_int4_codes_equal_torch_reference_quantizer(group_size):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    packed, scale, zero = quantize_int4(w, group_size)
    assert packed.shape == (8, 32) and packed.dtype == torch.uint8
    q = unpack_int4(packed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_channel(w.reshape(-1, group_size), scale.flatten().double(),
                                         zero.flatten().long(), 0, torch.quint8)
    assert torch.equal(q.reshape(-1, group_size), ref.int_repr())
    lin = Int4Linear(64, 8, group_size)
    lin.weight, lin.scale, lin.zero = packed, scale, zero
    assert ((lin.dequantize(torch.float32) - w).abs().reshape(8, -1, group_size) <= scale[..., None] / 2 + 1e-6).all()


@pytest.mark.parametrize("mode,tol", [("int8", 0.02), ("int4", 0.2)])
def test_quantized_logits_close_and_generation_works(make_model, mode, tol, tmp_path):
    ref = make_model(init_std=0.02, tie_embeddings=False)
    x = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(x)
        q = quantize(make_model(init_std=0.02, tie_embeddings=False), mode, group_size=32)
        got = q(x)
    kind = Int8Linear if mode == "int8" else Int4Linear
    assert isinstance(q.layers[0].attn.q_proj, kind) and isinstance(q.lm_head, kind)
    err = (got - want).abs().max().item()
    assert 0 < err < tol * want.abs().max().item()
    assert weight_bytes(q) < weight_bytes(ref) / (2.5 if mode == "int8" else 3.5)  # embeddings stay fp32
    save_quantized(q, tmp_path)
    loaded = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
    params = SamplingParams(max_new_tokens=6, temperature=0)
    assert generate(loaded, [[1, 2, 3]], params) == generate(q, [[1, 2, 3]], params)


def test_quantize_errors(make_model, tmp_path):
    with pytest.raises(ScratchError, match="unknown quantization"):
        quantize(make_model(), "int3")
    with pytest.raises(ScratchError, match="group_size"):
        quantize(make_model(), "int4", group_size=48)  # does not divide d_model=32
    with pytest.raises(ScratchError, match="not quantized"):
        save_quantized(make_model(), tmp_path)
    model = make_model()
    model.save_pretrained(tmp_path)
    assert not hasattr(load_model(tmp_path).layers[0].attn.q_proj, "scale")  # plain directories load plainly
