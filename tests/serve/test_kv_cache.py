"""The static KV cache and left-padded batches in scratchllm.model.model: incremental logits equal full ones."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchError

from .conftest import VOCAB


def _incremental(model, x: torch.Tensor, prefill: int, pad: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of x computed as one prefill of `prefill` tokens, then one token per forward."""
    model.setup_cache(x.size(0), x.size(1))
    try:
        outs = [model(x[:, :prefill], input_pos=torch.arange(prefill), pad=pad)]
        for t in range(prefill, x.size(1)):
            outs.append(model(x[:, t : t + 1], input_pos=torch.tensor([t]), pad=pad))
    finally:
        model.clear_cache()
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("pos_emb", ["rope", "learned", "sinusoidal"])
@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_cached_logits_equal_full_forward(make_model, pos_emb, attn_impl):
    model = make_model(pos_emb=pos_emb, attn_impl=attn_impl)
    x = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        inc = _incremental(model, x, prefill=9)
    torch.testing.assert_close(inc, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
@pytest.mark.parametrize("cached", [False, True])
def test_left_padded_rows_compute_what_they_compute_alone(make_model, pos_emb, cached):
    model = make_model(pos_emb=pos_emb)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, VOCAB, (n,), generator=g) for n in (20, 13, 7)]
    pads = [20 - len(r) for r in rows]
    # Padding filled with real-looking ids: if the mask leaked, results would change.
    batch = torch.stack([torch.cat([torch.randint(0, VOCAB, (p,), generator=g), r]) for p, r in zip(pads, rows)])
    pad = torch.tensor(pads)
    with torch.no_grad():
        out = _incremental(model, batch, prefill=14, pad=pad) if cached else model(batch, pad=pad)
        for i, r in enumerate(rows):
            torch.testing.assert_close(out[i, pads[i] :], model(r[None])[0], rtol=1e-4, atol=1e-4)


def test_cache_does_not_change_training_forward(make_model):
    model = make_model()
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
        model.setup_cache(2, 16)
        model.clear_cache()
        after = model(x)
    assert torch.equal(before, after)
    assert all(layer.attn.kv_cache is None for layer in model.layers)
    assert not any("kv_cache" in k for k in model.state_dict())  # caches never reach checkpoints


def test_cache_must_fit_context(make_model):
    model = make_model()
    with pytest.raises(ScratchError, match="context_length"):
        model.setup_cache(1, model.cfg.context_length + 1)


def test_cached_incremental_logits_match_transformers(make_model, tmp_path):
    """Our cache vs Hugging Face's DynamicCache on the exported model, step by step."""
    transformers = pytest.importorskip("transformers")
    from scratchllm.model.hf import export_hf

    model = make_model()
    export_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = _incremental(model, x, prefill=5)
        out = hf(x[:, :5], use_cache=True)
        theirs, past = [out.logits], out.past_key_values
        for t in range(5, 12):
            out = hf(x[:, t : t + 1], past_key_values=past, use_cache=True)
            theirs.append(out.logits)
            past = out.past_key_values
    torch.testing.assert_close(ours, torch.cat(theirs, dim=1), rtol=1e-4, atol=1e-4)
