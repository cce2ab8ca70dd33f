"""The web chat page at /, in a real headless browser (the distribution's Chromium, driven by Playwright).

No browser is downloaded: the test uses /usr/bin/chromium and skips, saying why, where it is missing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch

from scratchllm.serve.config import ServeConfig

from scratchllm.serve.server import create_app

from .conftest import tiny_model

KEY = "sk-page"
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()),
                shutil.which("chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def test_page_and_info_need_no_key(byte_tokenizer, loopback_server):
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size)
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", api_key=KEY), model, byte_tokenizer))
    try:
        page = httpx.get(srv.url + "/", timeout=30)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "/v1/chat/completions" in page.text and "http://" not in page.text and "https://" not in page.text
        info = httpx.get(srv.url + "/chat/info", timeout=30).json()
        assert info == {"model": "tiny", "auth": True, "ready": True, "chat": True, "context_length": 64}
        assert httpx.get(srv.url + "/v1/models", timeout=30).status_code == 401  # the API still needs the key
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def slow_server(byte_tokenizer, loopback_server):
    """The tiny model, slowed to ~25 tokens/s so that a stream lasts long enough to watch and stop."""
    torch.set_num_threads(1)
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size, context_length=256)
    model.register_forward_hook(lambda *_: time.sleep(0.04))
    srv = loopback_server(create_app(ServeConfig(model_name="tiny", api_key=KEY, timeout_s=60), model,
                                     byte_tokenizer))
    yield srv
    srv.stop()


def _open(browser, url: str, key: str | None):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#model:has-text('tiny')")
    if key is not None:
        page.wait_for_selector("#keyinput", state="visible")
        page.fill("#keyinput", key)
        page.click("#keysave")
    return page


def _send(page, text: str, temperature: str, max_tokens: str) -> None:
    page.fill("#temperature", temperature)
    page.fill("#maxtokens", max_tokens)
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_chat_streams_the_servers_reply(browser, slow_server):
    page = _open(browser, slow_server.url, KEY)
    page.fill("#system", "Be brief.")
    _send(page, "hello there", "0", "12")
    msg = page.locator(".msg.assistant").last
    page.wait_for_function("document.querySelector('.msg.assistant').dataset.status === 'done'", timeout=60_000)
    shown = msg.locator(".reply").inner_text()
    want = httpx.post(slow_server.url + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "temperature": 0, "max_tokens": 12,
                            "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hello there"}]}).json()
    assert shown == want["choices"][0]["message"]["content"] and shown
    assert int(msg.get_attribute("data-chunks")) > 1  # it arrived in pieces, not at once
    # The key was entered once: a second message needs no new entry.
    _send(page, "and again", "0", "4")
    page.wait_for_function("[...document.querySelectorAll('.msg.assistant')].length === 2 && "
                           "document.querySelectorAll('.msg.assistant')[1].dataset.status === 'done'", timeout=60_000)
    assert not page.is_visible("#error")
    page.close()


def test_stop_button_ends_the_stream(browser, slow_server):
    page = _open(browser, slow_server.url, KEY)
    _send(page, "tell me a long story", "1", "200")
    page.wait_for_function("parseInt(document.querySelector('.msg.assistant').dataset.chunks) >= 3", timeout=60_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('.msg.assistant').dataset.status === 'stopped'", timeout=10_000)
    n = len(page.locator(".msg.assistant .reply").inner_text())
    chunks = int(page.locator(".msg.assistant").get_attribute("data-chunks"))
    time.sleep(0.5)
    assert len(page.locator(".msg.assistant .reply").inner_text()) == n  # nothing more arrives
    assert chunks < 200 and page.is_enabled("#send") and not page.is_enabled("#stop")
    page.close()


def test_wrong_key_gives_a_readable_message(browser, slow_server):
    page = _open(browser, slow_server.url, "sk-wrong")
    _send(page, "hello", "0", "4")
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    text = page.inner_text("#error")
    assert "rejected the API key" in text and "invalid or missing API key" in text
    assert page.is_visible("#keyinput")  # asked again
    page.close()


def test_no_chat_format_gives_a_completion_box(browser, loopback_server):
    from scratchllm.tokenizer import train_bpe

    tok = train_bpe(["hello world"], 256 + 1, special_tokens=["<|eos|>"])
    model = tiny_model(vocab_size=tok.vocab_size)
    srv = loopback_server(create_app(ServeConfig(model_name="tiny"), model, tok))
    try:
        page = _open(browser, srv.url, None)
        page.wait_for_selector("body[data-mode='completion']")
        assert not page.is_visible("#system")
        _send(page, "hello", "0", "8")
        page.wait_for_function("document.querySelector('.msg.completion').dataset.status === 'done'", timeout=60_000)
        want = httpx.post(srv.url + "/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "hello", "temperature": 0, "max_tokens": 8}).json()
        assert page.locator(".msg.completion .reply").inner_text() == want["choices"][0]["text"]
        page.close()
    finally:
        srv.stop()
