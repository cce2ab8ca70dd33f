"""The server on the continuous-batching engine, over real HTTP: n > 1, logprobs, many concurrent
streams, /metrics, and a client that goes away (streaming or not) frees its slot."""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from scratchllm.serve.config import ServeConfig

from scratchllm.serve.server import create_app

from .conftest import tiny_model


@pytest.fixture(scope="module")
def served(byte_tokenizer, loopback_server):
    torch.set_num_threads(1)
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", max_batch=8, max_pending=32, timeout_s=60),
                                     model, byte_tokenizer))
    yield srv, model, byte_tokenizer
    srv.stop()


@pytest.fixture(scope="module")
def client(served):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key="none", max_retries=0)


def _complete(model, tok, prompt: str, **kw):
    from scratchllm.infer.generate import complete
    from scratchllm.infer.sampling import SamplingParams

    return complete(model, [tok.encode(prompt)], SamplingParams(**kw), tok)[0]


def test_n_choices_with_seeds_and_exact_usage(served, client):
    _, model, tok = served
    out = client.completions.create(model="tiny", prompt="hello", max_tokens=10, temperature=1.0, n=3, seed=4)
    assert [c.index for c in out.choices] == [0, 1, 2]
    want = [_complete(model, tok, "hello", max_new_tokens=10, temperature=1.0, seed=4 + i) for i in range(3)]
    assert [c.text for c in out.choices] == [w.text for w in want]  # choice i is seeded with seed + i
    assert len({c.text for c in out.choices}) > 1
    assert out.usage.completion_tokens == sum(len(w.tokens) for w in want) and out.usage.prompt_tokens == 5
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                          temperature=0, n=3)
    assert len(chat.choices) == 3 and len({c.message.content for c in chat.choices}) == 1  # greedy: all equal


def test_streaming_n_choices_each_end_once(client):
    chunks = list(client.completions.create(model="tiny", prompt="ab", max_tokens=6, temperature=0, n=2, stream=True))
    finishes = [(ch.index, ch.finish_reason) for c in chunks for ch in c.choices if ch.finish_reason]
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    texts = ["".join(ch.text for c in chunks for ch in c.choices if ch.index == i) for i in (0, 1)]
    assert texts[0] == texts[1] and texts[0]


def test_completion_logprobs(served, client):
    _, model, tok = served
    out = client.completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    ids = tok.encode("hello") + _complete(model, tok, "hello", max_new_tokens=6, temperature=0).tokens
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].float().log_softmax(-1)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for i, got in enumerate(lp.token_logprobs):
        assert got == pytest.approx(float(ref[4 + i].max()), abs=1e-4)  # greedy: the top token's logprob
        assert len(lp.top_logprobs[i]) <= 2
    assert "".join(lp.tokens) == out.choices[0].text or out.choices[0].finish_reason == "stop"


def test_chat_logprobs_streaming_and_not(client):
    messages = [{"role": "user", "content": "hi"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                          top_logprobs=3)
    content = full.choices[0].logprobs.content
    assert content and all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content)
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)  # greedy picks the top one
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [c for ch in chunks for choice in ch.choices if choice.logprobs for c in choice.logprobs.content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content])


def test_many_concurrent_streams_match_their_solo_output(served, client):
    _, model, tok = served
    prompts = [f"p{i} " * (1 + i % 5) for i in range(16)]

    def one(prompt: str) -> str:
        chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, prompts))
    assert got == [_complete(model, tok, p, max_new_tokens=12, temperature=0).text for p in prompts]
    metrics = httpx.get(served[0].url + "/metrics", timeout=10).text
    assert "scratchllm:time_to_first_token_seconds_count" in metrics
    assert _sample(metrics, "scratchllm:generation_tokens_total") >= 16 * 12


def _sample(text: str, name: str) -> float:
    """The value of a Prometheus sample line 'name value'."""
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def _running(url: str) -> int:
    return int(_sample(httpx.get(url + "/metrics", timeout=10).text, "scratchllm:num_requests_running"))


def test_non_streaming_client_that_disconnects_frees_its_slot(byte_tokenizer, loopback_server):
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=256)
    fast = model.forward
    model.forward = lambda *a, **k: (time.sleep(0.02), fast(*a, **k))[1]  # 200 tokens take seconds
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", max_batch=2), model, byte_tokenizer))
    try:
        host, port = srv.url.removeprefix("http://").split(":")
        body = b'{"model": "tiny", "prompt": "a", "max_tokens": 200, "temperature": 0}'
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 30
        while _running(srv.url) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _running(srv.url) == 1
        sock.close()  # the client goes away before its 200 tokens are done
        while _running(srv.url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(srv.url) == 0
        text = httpx.get(srv.url + "/metrics", timeout=10).text
        assert 'finished_reason="abort"} 1' in text  # cancelled, not finished
    finally:
        srv.stop()


def test_requests_share_the_batch(byte_tokenizer, loopback_server):
    """Eight slow concurrent requests are decoded together: the engine holds several at once."""
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    fast, widths = model.forward, []

    def recording(idx, *a, **k):
        widths.append(idx.size(0))
        return fast(idx, *a, **k)

    model.forward = recording
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", max_batch=8), model, byte_tokenizer))
    try:
        start = threading.Barrier(8)

        def one(i: int) -> int:
            start.wait()
            r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": f"x{i}", "max_tokens": 30,
                                                              "temperature": 0}, timeout=60)
            return r.json()["usage"]["completion_tokens"]

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(8))) == [30] * 8
        assert max(widths) >= 4  # rows of several requests in one forward
    finally:
        srv.stop()
