"""The project's one HTTP client for OpenAI-compatible chat endpoints (including our own server).

``ChatClient`` POSTs ``/v1/chat/completions`` with the standard library only; it retries with
exponential backoff on connection errors, timeouts, HTTP 429 and 5xx, then raises a clear error
naming the URL and the setting that fixes it. Users: eval's judge and safety classifier,
``eval --model URL``, and align's constitutional ``backend = "openai"``. Plumbing: it imports only
``errors``, so any stage may use it.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from scratchllm.errors import ScratchError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ChatClient:
    """Minimal OpenAI-compatible chat client (``base_url`` like ``http://host:8000`` or ``.../v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        role: str = "judge endpoint",
        url_setting: str = "--judge-url",
        key_setting: str = "--api-key-env",
    ) -> None:
        # role / *_setting: how errors name the endpoint and the settings that fix it, for each user
        # of the client (the eval judge, eval --model URL, align's constitutional backend).
        self.role, self.url_setting, self.key_setting = role, url_setting, key_setting
        if not re.match(r"^https?://", base_url):
            raise ScratchError(f"{role} URL {base_url!r} must start with http:// or https://",
                               f"e.g. {url_setting} http://127.0.0.1:8000/v1")
        base = base_url.rstrip("/")
        if base.endswith("/chat/completions"):
            self.url = base
        else:
            self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_retries, self.backoff, self.max_backoff, self.sleep = max_retries, backoff, max_backoff, sleep

    def chat(self, messages: Sequence[dict[str, str]], temperature: float = 0.0, max_tokens: int | None = None,
             **params: Any) -> str:
        """The reply's text; ``params`` are further request fields (``stop``, ``top_p``, ``seed``).

        ``max_tokens=None`` leaves the length to the server (for a small-context model, such as one
        of ours, a fixed large value would not fit beside a long judge prompt).
        """
        fields = {"model": self.model, "messages": list(messages), "temperature": temperature, **params}
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        body = json.dumps(fields).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                return _content(payload, self.url, self.role, self.url_setting)
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in RETRY_STATUS:
                    raise ScratchError(
                        f"{self.role} {self.url} refused the request: HTTP {e.code} {detail}",
                        f"check the model name and the API key ({self.key_setting})" if e.code in (401, 403, 404)
                        else "check that the server speaks the OpenAI chat-completions API",
                    ) from None
                last = f"HTTP {e.code} {detail}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.isdigit() and attempt < self.max_retries:
                    self.sleep(min(self.max_backoff, float(retry_after)))
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as e:
                last = str(getattr(e, "reason", e)) or type(e).__name__
        raise ScratchError(
            f"{self.role} {self.url} unreachable after {self.max_retries + 1} attempts (last error: {last})",
            f"start the server (e.g. `scratchllm serve`) or fix {self.url_setting}; for a slow server allow more retries",
        )


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        return e.read().decode("utf-8", errors="replace")[:300]
    except OSError:
        return e.reason or ""


def _content(payload: bytes, url: str, role: str, url_setting: str) -> str:
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise ScratchError(f"{role} {url} sent a response that is not an OpenAI chat completion: "
                           f"{payload[:200]!r}", f"point {url_setting} at an OpenAI-compatible server") from None
    if not isinstance(content, str):
        raise ScratchError(f"{role} {url} returned no text content", "check the model name")
    return content
