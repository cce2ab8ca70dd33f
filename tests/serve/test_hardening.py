"""What an adversarial client and a careless operator found (issue 15), over real HTTP on loopback:
body limits and read timeouts before routing and auth, edge-of-range sampling values, strict types,
every response logged (500s included), load errors before the port opens, one vocabulary check."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import httpx
import pytest
import torch

from scratchllm.cli import main
from scratchllm.errors import ScratchError
from scratchllm.serve.config import ServeConfig
from scratchllm.serve.server import bind, build_server, create_app

from .conftest import tiny_model

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Running:
    """The app under the server serve() runs (its protocol, timeouts and bound socket), in a thread."""

    def __init__(self, cfg: ServeConfig, app) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.server = build_server(cfg, app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def srv(byte_tokenizer):
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    cfg = ServeConfig(model_name="tiny", api_key=KEY, max_pending=4, timeout_s=30, max_body_bytes=4096,
                      header_timeout_s=0.5, body_timeout_s=0.5)
    running = Running(cfg, create_app(cfg, model, byte_tokenizer))
    yield running
    running.stop()


def _raw(port: int, data: bytes, read: bool = True) -> bytes:
    """Send raw bytes; return everything the server sends until it closes (a hang fails on the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def _post(srv, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, headers={**AUTH, **kw.pop("headers", {})}, timeout=30, **kw)


def _assert_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and set(err) == {"message", "type", "param", "code"}, err


# --- 1. body limit: 413 from the declared length or while reading, before routing and before auth -------------


@pytest.mark.parametrize("path", ["/health", "/v1/completions", "/nope"])
def test_declared_oversized_body_gets_413_without_being_read(srv, path):
    """300 MB announced, nothing sent: the answer comes at once (before auth on /v1) and the
    connection is closed, so the server never holds the body."""
    raw = _raw(srv.port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n".encode())
    status, err = _status_and_error(raw)
    assert status == 413 and err["code"] == "request_too_large"
    assert b"connection: close" in raw.lower()


def test_chunked_oversized_body_gets_413_while_reading(srv):
    def chunks():
        for _ in range(64):
            yield b"x" * 1024  # 64 KiB against a 4 KiB limit, no Content-Length

    for path in ("/health", "/v1/completions"):
        _assert_error(httpx.post(srv.url + path, content=chunks(), headers=AUTH, timeout=30), 413, "max_body_bytes")
    # Without the key, /v1 answers 401 before reading any of the body (and closes the connection).
    r = httpx.post(srv.url + "/v1/completions", content=chunks(), timeout=30)
    _assert_error(r, 401, "API key")
    assert r.headers["connection"] == "close"
    assert _post(srv, "/v1/completions", {"model": "tiny", "prompt": "ok", "max_tokens": 2}).status_code == 200


# --- 2. sampling values at the edge of their ranges ------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-6])
def test_tiny_temperatures_are_greedy(srv, temperature):
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 8, "seed": 3}
    greedy = _post(srv, "/v1/completions", {**body, "temperature": 0}).json()["choices"][0]["text"]
    r = _post(srv, "/v1/completions", {**body, "temperature": temperature})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy
    with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "temperature": temperature, "stream": True},
                      headers=AUTH, timeout=30) as s:
        events = [line for line in s.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == greedy


_BAD_VALUES = [
    ("repetition_penalty", 1e-300, "repetition_penalty"),
    ("repetition_penalty", 1e300, "repetition_penalty"),
    ("seed", 2**64, "seed"),
    ("seed", -(2**63) - 1, "seed"),
    ("max_tokens", True, "max_tokens"),  # strict types: no bool for an int
    ("temperature", "0.5", "temperature"),
    ("prompt", [False], "prompt"),
    ("prompt", ["one", "two"], "prompt"),  # one prompt per request, and the schema says so
    ("top_p", 0, "top_p"),
]


@pytest.mark.parametrize(
    "field,value,fragment,stream",
    [(*case, stream) for case in _BAD_VALUES for stream in (False, True)]
    + [("stream", "yes", "stream", None), ("stream_options", {"include_usage": True}, "stream_options", False)],
)
def test_out_of_range_or_loosely_typed_values_get_400(srv, field, value, fragment, stream):
    """Each was a 500 (streaming: an empty 200) or silently coerced; now 400 with OpenAI's body."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, field: value}
    if stream is not None:
        body.setdefault("stream", stream)
    _assert_error(_post(srv, "/v1/completions", body), 400, fragment)


def test_null_means_the_default(srv):
    nulls = {k: None for k in ("temperature", "top_p", "top_k", "seed", "stop", "max_tokens", "stream", "n",
                               "stream_options", "ignore_eos", "repetition_penalty")}
    r = _post(srv, "/v1/completions", {"model": "tiny", "prompt": "hi", **nulls})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    _assert_error(_post(srv, "/v1/completions", {"model": None, "prompt": "hi"}), 400, "model")


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63)])
def test_seeds_at_the_64_bit_bounds_work(srv, seed):
    r = _post(srv, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 3, "seed": seed})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_nan_and_huge_names(srv):
    r = httpx.post(srv.url + "/v1/completions", content=b'{"model": "tiny", "prompt": "x", "temperature": NaN}',
                   headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    _assert_error(r, 400, "temperature")
    long_name = "m" * 3000
    r = _post(srv, "/v1/completions", {"model": long_name, "prompt": "x"})
    _assert_error(r, 404, "does not exist")
    assert len(r.text) < 600  # the name is not echoed back whole


def test_generate_cli_edge_values(tmp_path, byte_tokenizer, capsys):
    d = tmp_path / "m"
    tiny_model(vocab_size=byte_tokenizer.vocab_size).save_pretrained(d)
    byte_tokenizer.save_pretrained(d)
    base = ["generate", "--model", str(d), "--prompt", "hi", "--max-new-tokens", "6"]
    assert main([*base, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main([*base, "--temperature", "1e-300", "--seed", "1"]) == 0
    assert capsys.readouterr().out == greedy
    for flag, value in [("--seed", str(2**64)), ("--seed", str(-(2**63) - 1)), ("--repetition-penalty", "1e-300"),
                        ("--temperature", "nan"), ("--frequency-penalty", "inf")]:
        assert main([*base, flag, value]) == 2, (flag, value)
        err = capsys.readouterr().err
        assert "error: sampling:" in err and "fix:" in err and "internal error" not in err


# --- 3. one vocabulary check, at load, for serve, generate, chat and eval (train: tests/train) ---------------


@pytest.fixture
def mismatched_dir(tmp_path, byte_tokenizer):
    d = tmp_path / "big"
    tiny_model(vocab_size=byte_tokenizer.vocab_size + 40).save_pretrained(d)  # larger than the tokenizer's
    byte_tokenizer.save_pretrained(d)
    return d


def test_vocabulary_mismatch_is_refused_at_load(mismatched_dir, tmp_path, byte_tokenizer, capsys):
    from scratchllm.eval.lm import load_lm
    from scratchllm.infer.load import load_for_inference

    with pytest.raises(ScratchError, match="vocabulary mismatch"):
        load_for_inference(mismatched_dir)
    with pytest.raises(ScratchError, match="vocabulary mismatch"):
        load_lm(mismatched_dir)
    for argv in (["generate", "--model", str(mismatched_dir), "--prompt", "x"],
                 ["chat", "--model", str(mismatched_dir)],
                 ["serve", f"model={mismatched_dir}", "port=0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "vocabulary mismatch" in err and "fix:" in err
    small = tmp_path / "small"  # and the other way round: a tokenizer larger than the model
    tiny_model(vocab_size=byte_tokenizer.vocab_size - 3).save_pretrained(small)
    byte_tokenizer.save_pretrained(small)
    with pytest.raises(ScratchError, match="vocabulary mismatch"):
        load_for_inference(small)


# --- 4. serve: every setting and the model checked before the port opens: error/fix, exit 2 --------------------


@pytest.fixture
def model_dir(tmp_path, byte_tokenizer):
    d = tmp_path / "m"
    tiny_model(vocab_size=byte_tokenizer.vocab_size).save_pretrained(d)
    byte_tokenizer.save_pretrained(d)
    return d


def test_serve_load_and_config_errors_exit_2(model_dir, tmp_path, capsys):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in model_dir.iterdir():
        data = f.read_bytes()
        (truncated / f.name).write_bytes(data[:200] if f.name == "model.safetensors" else data)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((model_dir / name).read_bytes())
    cases = [
        ([f"model={truncated}"], "safetensors"),
        ([f"model={no_tok}"], "tokenizer"),
        ([f"model={model_dir}", "device=bogus"], "device"),
        ([f"model={model_dir}", "device=cuda:7"], "cuda:7"),
        ([f"model={model_dir}", "port=99999"], "port"),
        ([f"model={model_dir}", "threads=-1"], "threads"),
        ([f"model={model_dir}", "max_pending=-1"], "max_pending"),
        ([f"model={model_dir}", "max_batch=0"], "max_batch"),
        ([f"model={model_dir}", "prefill_chunk=0"], "prefill_chunk"),
        ([f"model={model_dir}", "timeout_s=-1"], "timeout_s"),
        ([f"model={model_dir}", "max_body_bytes=0"], "max_body_bytes"),
        ([f"model={model_dir}", "header_timeout_s=0"], "header_timeout_s"),
        ([f"model={model_dir}", "body_timeout_s=-3"], "body_timeout_s"),
        ([f"model={model_dir}", "host=no.such.host.invalid"], "host"),
        (["model="], "no model"),
    ]
    for overrides, fragment in cases:
        assert main(["serve", *overrides]) == 2, overrides
        err = capsys.readouterr().err
        assert err.startswith("error:") and fragment in err and "fix:" in err and "Traceback" not in err, (overrides,
                                                                                                            err)


def test_serve_on_a_port_in_use_exits_2(model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", f"model={model_dir}", f"port={port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "fix:" in err


# --- 5. every response is logged, 500s included, and a 500 has OpenAI's body (a stream ends cleanly) -----------


def test_internal_errors_are_logged_and_shaped(byte_tokenizer, caplog):
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)

    def broken(*a, **k):
        raise RuntimeError("boom")

    model.forward = broken
    cfg = ServeConfig(model_name="tiny")
    running = Running(cfg, create_app(cfg, model, byte_tokenizer))
    caplog.set_level(logging.INFO, logger="scratchllm.serve")
    try:
        r = httpx.post(running.url + "/v1/completions", json={"model": "tiny", "prompt": "a"}, timeout=30)
        _assert_error(r, 500, "internal error")
        assert r.json()["error"]["type"] == "server_error"
        body = {"model": "tiny", "prompt": "a", "stream": True}
        with httpx.stream("POST", running.url + "/v1/completions", json=body, timeout=30) as s:
            events = [line for line in s.iter_lines() if line]
        assert '"server_error"' in events[-2] and events[-1] == "data: [DONE]"
    finally:
        running.stop()
    lines = [json.loads(m) for m in caplog.messages if m.startswith('{"event": "request"')]
    assert [x["status"] for x in lines if x["path"] == "/v1/completions"] == [500, 200]


# --- 6. read timeouts: headers (the protocol) and bodies (the guard); a client leaving mid-body is quiet ----------


def test_slow_headers_are_cut_off(srv):
    assert _raw(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n") == b""  # closed; a hang fails on the timeout
    assert _raw(srv.port, b"") == b""  # a connection that sends nothing at all


def test_slow_body_gets_408(srv):
    raw = _raw(srv.port, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    status, err = _status_and_error(raw)
    assert status == 408 and err["code"] == "request_timeout"


def test_client_leaving_mid_body_is_logged_without_a_traceback(srv, caplog):
    caplog.set_level(logging.INFO)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
    _raw(srv.port, head.encode() + b'{"mod', read=False)
    deadline = time.monotonic() + 20
    while not any('"status": 499' in m for m in caplog.messages):
        assert time.monotonic() < deadline, caplog.messages
        time.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200


# --- 7. tokenization off the event loop; the OpenAPI document says what the server answers ----------------------


class _BlockingTokenizer:
    """The byte tokenizer, but encode waits until the test says go (after /health answered meanwhile)."""

    def __init__(self, tok) -> None:
        self._tok, self.entered, self.go = tok, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode(self, text):
        self.entered.set()
        assert self.go.wait(timeout=30), "the test never released encode"
        return self._tok.encode(text)


def test_tokenization_does_not_block_the_event_loop(byte_tokenizer, loopback_server):
    tok = _BlockingTokenizer(byte_tokenizer)
    srv = loopback_server(create_app(ServeConfig(model_name="tiny"), tiny_model(vocab_size=tok.vocab_size), tok))
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=httpx.post(
            srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x" * 40, "max_tokens": 2}, timeout=60)))
        t.start()
        assert tok.entered.wait(timeout=30)
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # answered while encode is held
        tok.go.set()
        t.join(timeout=60)
        assert result["r"].status_code == 200
    finally:
        tok.go.set()
        srv.stop()


def test_openapi_document_lists_the_real_status_codes(srv):
    doc = httpx.get(srv.url + "/openapi.json", timeout=10).json()
    assert "422" not in json.dumps(doc["paths"])
    for path in ("/v1/completions", "/v1/chat/completions"):
        codes = set(doc["paths"][path]["post"]["responses"])
        assert {"200", "400", "401", "404", "408", "413", "429", "500", "503", "504"} <= codes
    prompt = doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]
    assert any(alt.get("maxItems") == 1 for alt in prompt["anyOf"])
    assert httpx.get(srv.url + "/docs", timeout=10).status_code == 404  # no CDN-backed page (issue 23)


# --- issue 23, item 8: stream_options.include_usage, ignore_eos, the start-up line ------------------------------


@pytest.fixture(scope="module")
def eos_server(byte_tokenizer, loopback_server):
    """A model whose greedy choice is always <|eos|> (or <|end|> in chat): it stops at once unless told not to."""
    from scratchllm.tokenizer.chat import END

    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=64)
    fast = model.forward
    boost = torch.zeros(byte_tokenizer.vocab_size)
    boost[byte_tokenizer.eos_id] = boost[byte_tokenizer.token_id(END)] = 1e4
    model.forward = lambda *a, **k: fast(*a, **k) + boost
    srv = loopback_server(create_app(ServeConfig(model_name="tiny"), model, byte_tokenizer))
    yield srv
    srv.stop()


@pytest.mark.parametrize("chat", [False, True])
def test_ignore_eos_generates_exactly_max_tokens(eos_server, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": "tiny", "max_tokens": 7, "temperature": 0,
            **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    stopped = httpx.post(eos_server.url + path, json=body, timeout=30).json()
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["usage"]["completion_tokens"] == 1
    full = httpx.post(eos_server.url + path, json={**body, "ignore_eos": True}, timeout=30).json()
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 7


def test_stream_include_usage_sends_the_usage_chunk(eos_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=eos_server.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason == "length"
    plain = list(client.completions.create(model="tiny", prompt="hi", max_tokens=3, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices  # no usage chunk unless asked
