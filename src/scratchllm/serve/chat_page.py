"""The web chat page: ``GET /`` serves one static HTML/JS file (no build step, no CDN: it works offline),
``GET /chat/info`` tells it the model name, whether the API needs a key and whether the tokenizer has
the chat format (else the page shows a plain completion box). Neither needs the API key; the page's
own calls to ``/v1/...`` carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from scratchllm.tokenizer.chat import CHAT_SPECIAL_TOKENS


def page_html() -> str:
    return resources.files("scratchllm.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


def has_chat_format(tokenizer: Any) -> bool:
    return all(t in tokenizer.special_tokens for t in CHAT_SPECIAL_TOKENS)


def add_chat_page(app: FastAPI, model_name: str, api_key: str, engine: Callable[[], Any]) -> None:
    """Register ``/`` and ``/chat/info``; ``engine()`` is the loaded engine or None while loading."""
    html = page_html()  # read once: the file ships inside the package

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @app.get("/chat/info", include_in_schema=False)
    async def chat_info() -> JSONResponse:
        eng = engine()
        if eng is None:
            return JSONResponse({"model": model_name, "auth": bool(api_key), "ready": False}, status_code=503)
        return JSONResponse({"model": model_name, "auth": bool(api_key), "ready": True,
                             "chat": has_chat_format(eng.tokenizer),
                             "context_length": eng.model.cfg.context_length})
