"""The KV cache (scratchllm.infer.cache) with the model's forward: incremental logits equal full ones."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.cache import KVCache

from .conftest import VOCAB


def _incremental(model, x: torch.Tensor, prefill: int, static: bool = False) -> torch.Tensor:
    """Logits of x computed as one prefill of `prefill` tokens, then one token per forward (row b in slot b)."""
    B = x.size(0)
    cache = KVCache.for_model(model, B, model.cfg.context_length if static else x.size(1))
    slots = torch.arange(B)

    def step(t0: int, t1: int) -> torch.Tensor:
        pos = torch.arange(t0, t1).expand(B, -1)
        return model(x[:, t0:t1], input_pos=pos, cache=cache.view(slots, pos, static=static))

    return torch.cat([step(0, prefill)] + [step(t, t + 1) for t in range(prefill, x.size(1))], dim=1)


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
def test_rows_at_different_lengths_compute_what_they_compute_alone(make_model, pos_emb):
    """Continuous batching: rows in different slots at different positions, padded chunks, one forward."""
    model = make_model(pos_emb=pos_emb)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, VOCAB, (n,), generator=g) for n in (20, 13, 7)]
    cache = KVCache.for_model(model, 4, 32)
    slots = torch.tensor([3, 0, 2])  # any slot order
    with torch.no_grad():
        # Prefill the first 6 tokens of each row, then the rest in one padded chunk (pads are random ids:
        # if they leaked into a row's keys, results would change).
        pos = torch.arange(6).expand(3, -1)
        first = model(torch.stack([r[:6] for r in rows]), input_pos=pos, cache=cache.view(slots, pos))
        width = max(len(r) for r in rows) - 6
        chunk = torch.stack([torch.cat([r[6:], torch.randint(0, VOCAB, (width - len(r) + 6,), generator=g)])
                             for r in rows])
        pos = (6 + torch.arange(width)).expand(3, -1)
        valid = torch.arange(width)[None] < torch.tensor([len(r) - 6 for r in rows])[:, None]
        rest = model(chunk, input_pos=pos, cache=cache.view(slots, pos, valid))
        for i, r in enumerate(rows):
            alone = model(r[None])[0]
            torch.testing.assert_close(first[i], alone[:6], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(rest[i, : len(r) - 6], alone[6:], rtol=1e-4, atol=1e-4)


def test_static_view_reads_every_position_and_matches(make_model):
    model = make_model()
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(_incremental(model, x, 8, static=True), model(x), rtol=1e-4, atol=1e-4)


def test_cache_is_not_model_state(make_model):
    model = make_model()
    KVCache.for_model(model, 2, 16)
    assert not any("cache" in k for k in model.state_dict())  # caches never reach checkpoints


def test_engine_cache_must_fit_context(make_model):
    from scratchllm.infer.engine import Engine

    model = make_model()
    with pytest.raises(ScratchError, match="context_length"):
        Engine(model, max_len=model.cfg.context_length + 1)


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
