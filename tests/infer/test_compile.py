"""The compiled decode path (scratchllm.infer.compile): static cache view, the gemv/attention rewrites, plumbing.

The default-run tests trace with dynamo and run the rewritten graph eagerly (seconds); the inductor
compile itself is in the slow test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchllm.infer import compile as compiled
from scratchllm.infer.generate import SamplingParams, generate

from .conftest import VOCAB, tiny_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]


@pytest.fixture
def traced_only(monkeypatch):
    """decode_step traced by dynamo (fullgraph, static shapes) and rewritten, but run eagerly: no inductor."""
    rewrites: list[int] = []

    def backend(gm, example_inputs):
        rewrites.append(compiled.rewrite_for_decode(gm))
        return gm.forward

    torch._dynamo.reset()
    step = torch.compile(compiled._forward, backend=backend, fullgraph=True, dynamic=False)
    monkeypatch.setattr(compiled, "decode_step", step)
    yield rewrites
    torch._dynamo.reset()


def test_gemv_and_one_query_attention_equal_torch():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 1, 48, generator=g), torch.randn(40, 48, generator=g)
    torch.testing.assert_close(compiled.gemv(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    q = torch.randn(3, 6, 1, 16, generator=g)
    k, v = torch.randn(3, 2, 10, 16, generator=g), torch.randn(3, 2, 10, 16, generator=g)
    mask = torch.rand(3, 1, 1, 10, generator=g) > 0.3
    mask[..., 0] = True
    for m in (None, mask, mask[:1]):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
        torch.testing.assert_close(compiled.attend_one(q, k, v, m, enable_gqa=True), want, rtol=1e-5, atol=1e-5)


def test_traced_decode_step_is_token_identical(make_model, traced_only):
    model = make_model()
    params = SamplingParams(max_new_tokens=20, temperature=0)
    want = generate(model, PROMPTS, params)
    assert generate(model, PROMPTS, params, compile=True) == want  # batched, padded to 4 rows
    assert generate(model, PROMPTS[:1], params, compile=True) == want[:1]
    # batch of 4: the 2 attentions only; batch of 1: also 2 layers x 7 linears + the head
    assert traced_only == [2, 2 + 2 * 7 + 1]
    seeded = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=10, seed=3)
    assert generate(model, PROMPTS, seeded, compile=True) == generate(model, PROMPTS, seeded)


def test_generate_cli_compile_flag(tmp_path, byte_tokenizer, capsys, traced_only):
    from scratchllm.cli import main

    model = tiny_model(vocab_size=byte_tokenizer.vocab_size)
    model.save_pretrained(tmp_path)
    byte_tokenizer.save_pretrained(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "6"]
    assert main(argv) == 0
    eager = capsys.readouterr().out
    assert main([*argv, "--compile"]) == 0
    assert capsys.readouterr().out == eager and traced_only  # the compiled step ran, and printed the same
    assert main([*argv, "--compile", "--draft", str(tmp_path)]) == 2
    assert "--compile" in capsys.readouterr().err


def test_server_compiles_before_ready(byte_tokenizer, traced_only):
    from fastapi.testclient import TestClient

    from scratchllm.infer.generate import complete
    from scratchllm.serve.config import ServeConfig
    from scratchllm.serve.server import create_app

    model = tiny_model(vocab_size=byte_tokenizer.vocab_size)
    want = complete(model, [byte_tokenizer.encode("hi")], SamplingParams(max_new_tokens=5, temperature=0),
                    byte_tokenizer)[0].text
    with TestClient(create_app(ServeConfig(compile=True), model, byte_tokenizer)) as client:
        assert traced_only and client.get("/ready").status_code == 200  # the warm-up compiled it
        r = client.post("/v1/completions", json={"model": "scratchllm", "prompt": "hi", "max_tokens": 5,
                                                  "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == want


@pytest.mark.slow
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_inductor_compiled_greedy_is_token_identical(pos_emb):
    model = tiny_model(pos_emb=pos_emb, vocab_size=257, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128)
    params = SamplingParams(max_new_tokens=24, temperature=0)
    torch._dynamo.reset()
    try:
        assert generate(model, PROMPTS[:1], params, compile=True) == generate(model, PROMPTS[:1], params)
        assert generate(model, PROMPTS, params, compile=True) == generate(model, PROMPTS, params)
        assert compiled.warm_up(model) >= 0
    finally:
        torch._dynamo.reset()
