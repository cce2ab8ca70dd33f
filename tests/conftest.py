"""Fixtures shared by several stages' tests."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

MAX_REQUESTS = 200  # a fake server stops answering after this many, whatever happens


class FakeOpenAI:
    """An OpenAI-compatible endpoint on 127.0.0.1: ``reply(request_json, n) -> (status, body)``, where
    ``n`` counts requests from 1; records every request (with its path) and its headers."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                if len(fake.requests) >= MAX_REQUESTS:
                    self.send_error(503)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, **body})
                fake.headers.append(dict(self.headers))
                status, payload = fake.reply(body, len(fake.requests))
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    """``start(reply) -> FakeOpenAI``; every server started is closed after the test."""
    servers: list[FakeOpenAI] = []

    def start(reply) -> FakeOpenAI:
        servers.append(FakeOpenAI(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


class LoopbackServer:
    """An ASGI app (e.g. ``scratchllm serve``'s) under uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def loopback_server():
    """``loopback_server(app) -> LoopbackServer`` (call ``.stop()`` when done); usable from fixtures of any scope."""
    pytest.importorskip("uvicorn")
    return LoopbackServer


@pytest.fixture(autouse=True)
def _no_api_key_from_the_environment(monkeypatch):
    """`scratchllm serve` reads its API key from these; a developer's own must not reach the tests' servers."""
    monkeypatch.delenv("SCRATCHLLM_API_KEY", raising=False)
    monkeypatch.delenv("SCRATCHLLM_API_KEY_FILE", raising=False)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; two threads on a loaded 2-core machine are ~10x slower.
    The align, serve and train tests use it for every test (an autouse fixture in their conftest)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- CI: a missing library never skips --------------------------------------------------------------
# Every importorskip in this suite guards a reference library (or a test tool) that the `test` extra
# installs. Locally a missing one is a skip; under CI=true (.ci/run sets it) it fails the test (or,
# at module level, its file's collection), so a reference comparison cannot silently stop running.
# Other skips (no GPU, no Chromium, no tmpfs) stay skips.

_importorskip = pytest.importorskip


def _strict_importorskip(modname: str, *args, **kwargs):
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as e:
        reason = e.msg
    pytest.fail(f"CI=true: a test needing {modname!r} would be skipped ({reason}); every library the tests "
                "import must be installed by the test extra: pip install -e '.[test]'", pytrace=False)


if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
    pytest.importorskip = _strict_importorskip
