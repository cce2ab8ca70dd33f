"""The OpenAI-compatible server over real HTTP on loopback: the official openai client, streaming, bad input."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch

from scratchllm.serve.config import ServeConfig

from scratchllm.serve.server import create_app

from .conftest import tiny_model

KEY = "sk-test"


@pytest.fixture(scope="module")
def served(byte_tokenizer, loopback_server):
    torch.set_num_threads(1)
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    cfg = ServeConfig(model_name="tiny", api_key=KEY, max_pending=4, timeout_s=30)
    srv = loopback_server(create_app(cfg, model, byte_tokenizer))
    yield srv, model, byte_tokenizer
    srv.stop()


@pytest.fixture(scope="module")
def client(served):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key=KEY, max_retries=0)


def _http(served, method: str, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **kw.pop("headers", {})}
    return httpx.request(method, served[0].url + path, headers=headers, timeout=30, **kw)


def test_openai_client_completion_matches_generate(served, client):
    from scratchllm.infer.generate import complete
    from scratchllm.infer.sampling import SamplingParams

    _, model, tok = served
    out = client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0)
    want = complete(model, [tok.encode("hello")], SamplingParams(max_new_tokens=12, temperature=0), tok)[0]
    assert out.choices[0].text == want.text
    assert out.usage.completion_tokens == len(want.tokens) and out.usage.prompt_tokens == 5
    assert out.choices[0].finish_reason == want.finish_reason


def test_skip_special_tokens_reaches_the_generator(served, client):
    from scratchllm.infer.generate import complete
    from scratchllm.infer.sampling import SamplingParams

    _, model, tok = served
    for skip in (True, False):
        out = client.completions.create(model="tiny", prompt="hello", max_tokens=40, temperature=0,
                                        extra_body={"skip_special_tokens": skip})
        params = SamplingParams(max_new_tokens=40, temperature=0, skip_special_tokens=skip)
        assert out.choices[0].text == complete(model, [tok.encode("hello")], params, tok)[0].text


def test_openai_client_chat_and_streaming_chat_agree(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert full.choices[0].message.role == "assistant"
    assert streamed == full.choices[0].message.content and len(streamed) > 0
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_streaming_completion_with_stop_string(client):
    free = client.completions.create(model="tiny", prompt="ab", max_tokens=20, temperature=0).choices[0].text
    stop = free[6:8]
    chunks = list(client.completions.create(model="tiny", prompt="ab", max_tokens=20, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == free[: free.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_health_ready(served, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(served[0].url + "/health").json() == {"status": "ok"}  # no auth needed
    assert httpx.get(served[0].url + "/ready").status_code == 200


def _assert_openai_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, "UTF-8"),
        (json.dumps({"model": "tiny"}).encode(), 400, "prompt"),
        (b'{"model": "tiny", "prompt": "\\ud800"}', 400, "invalid Unicode"),
        (json.dumps({"model": "tiny", "prompt": 5}).encode(), 400, "prompt"),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 1000}).encode(), 400, "context window"),
        (json.dumps({"model": "tiny", "prompt": "x" * 100, "max_tokens": 1}).encode(), 400, "context window"),
        (json.dumps({"model": "tiny", "prompt": "x", "temperature": "hot"}).encode(), 400, "temperature"),
        (json.dumps({"model": "gpt-9", "prompt": "x"}).encode(), 404, "does not exist"),
        (json.dumps({"model": "tiny", "prompt": [99999]}).encode(), 400, "token ids"),
    ],
    ids=["json", "utf8", "missing", "surrogate", "type", "max0", "max_ctx", "long_prompt", "temp_type", "model", "ids"],
)
def test_bad_completion_requests_get_openai_errors(served, body, status, fragment):
    r = _http(served, "POST", "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    _assert_openai_error(r, status, fragment)


def test_bad_chat_requests_and_auth(served):
    r = _http(served, "POST", "/v1/chat/completions", json={"model": "tiny", "messages": []})
    _assert_openai_error(r, 400, "messages")
    r = _http(served, "POST", "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "bot", "content": "x"}]})
    _assert_openai_error(r, 400, "role")
    r = _http(served, "POST", "/v1/chat/completions", content=b'{"model": "tiny", "messages": [{"role": "user", '
              b'"content": "\\udc80"}]}', headers={"Content-Type": "application/json"})
    _assert_openai_error(r, 400, "invalid Unicode")
    r = httpx.post(served[0].url + "/v1/completions", json={"model": "tiny", "prompt": "x"},
                   headers={"Authorization": "Bearer wrong"})
    _assert_openai_error(r, 401, "API key")
    _assert_openai_error(httpx.get(served[0].url + "/nope"), 404, "Not Found")


def test_disconnect_mid_stream_frees_the_worker_and_health_stays_responsive(served):
    """Drop a long stream after the first event: the worker must stop it and serve the next request."""
    url = served[0].url + "/v1/completions"
    body = {"model": "tiny", "prompt": "a", "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())
        # answered while the stream is open (its latency is measured in benchmarks/serve.py)
        assert httpx.get(served[0].url + "/health", timeout=30).status_code == 200
    r = _http(served, "POST", "/v1/completions", json={"model": "tiny", "prompt": "b", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    deadline = time.monotonic() + 10
    while _http(served, "GET", "/ready").json()["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _http(served, "GET", "/ready").json()["pending"] == 0


def test_queue_full_gives_429(byte_tokenizer, loopback_server):
    """The worker is held inside the first request's forward pass by an event the test controls, so the
    first request certainly holds the only slot when the second arrives, however loaded the machine is."""
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    fast = model.forward
    running, release = threading.Event(), threading.Event()

    def held_forward(*a, **k):
        running.set()
        assert release.wait(timeout=60), "the test never released the worker"
        return fast(*a, **k)

    model.forward = held_forward
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", max_pending=1), model, byte_tokenizer))
    try:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 8, "temperature": 0, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            assert running.wait(timeout=60), "the first request never reached the model"
            second = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "b"}, timeout=60)
            _assert_openai_error(second, 429, "busy")
            assert second.json()["error"]["code"] == "queue_full"
            release.set()
            events = [line for line in r.iter_lines() if line]
        assert events[-1] == "data: [DONE]" and '"finish_reason": "length"' in events[-2]  # the first one completes
        third = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "c", "max_tokens": 2},
                           timeout=60)
        assert third.status_code == 200  # the slot is free again
    finally:
        release.set()
        srv.stop()


def test_request_timeout_gives_504_and_frees_the_worker(byte_tokenizer, loopback_server):
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    fast = model.forward
    model.forward = lambda *a, **k: (time.sleep(0.05), fast(*a, **k))[1]
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", timeout_s=0.5), model, byte_tokenizer))
    try:
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 60}, timeout=30)
        _assert_openai_error(r, 504, "timed out")
        body = {"model": "tiny", "prompt": "a", "max_tokens": 60, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as s:
            events = [line for line in s.iter_lines() if line]
        assert '"timeout"' in events[-2] and events[-1] == "data: [DONE]"  # a clean end of the stream
        # the worker notices the timeout between two decode steps: wait for it, then the slot is free
        deadline = time.monotonic() + 60
        while httpx.get(srv.url + "/ready", timeout=30).json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(srv.url + "/ready", timeout=30).json()["pending"] == 0
    finally:
        srv.stop()
