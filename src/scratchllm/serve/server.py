"""An OpenAI-compatible HTTP server: FastAPI + uvicorn.

    GET  /                      the web chat page (chat_page.py; no auth to load it, its API calls carry the key)
    GET  /health                liveness: the process answers (no auth)
    GET  /ready                 readiness: 200 once the model is loaded, else 503 (no auth)
    GET  /metrics               Prometheus text: running/waiting requests, tokens, latency histograms
    GET  /v1/models             the one model served
    POST /v1/completions        text completion; stream=true sends server-sent events
    POST /v1/chat/completions   chat (the fine-tuning chat template); stream=true as well
    GET  /openapi.json          the OpenAPI document (the /docs page is off: it needs a CDN)

Every error is a 4xx/5xx with OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: bad
JSON, wrong fields, prompts that do not fit the context -> 400, wrong API key -> 401, unknown model ->
404, body not sent in time -> 408, body too large -> 413, queue full -> 429, a bug -> 500, timeout -> 504.
The guard (an ASGI middleware around the app) enforces the body limit while reading, before routing and
auth, logs every response (500s included) and turns unexpected errors into that body; a uvicorn
protocol subclass closes connections that do not send their request headers in time. Generation runs
on the continuous-batching engine (scratchllm.infer.engine) on a thread of its own
(scratchllm.infer.background), tokenization in a thread: the event loop only routes. A client that
goes away, streaming or not, frees its slot at the engine's next step. docs/serve.md lists the guarantees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.background import BackgroundEngine, QueueFull
from scratchllm.infer.compile import warm_up
from scratchllm.infer.engine import Engine, RequestCancelled, RequestTimeout
from scratchllm.infer.load import load_for_inference
from scratchllm.infer.sampling import (
    REPETITION_PENALTY_RANGE,
    SEED_MAX,
    SEED_MIN,
    SamplingParams,
)
from scratchllm.serve.chat_page import add_chat_page
from scratchllm.serve.config import ServeConfig, check_config
from scratchllm.tokenizer.chat import BOS, END, encode_chat

log = logging.getLogger("scratchllm.serve")


# --- request bodies ---------------------------------------------------------------------------------
# pydantic validates types strictly (no "yes" for true, no true for 1) and every value to the range the
# sampling maths can take; extra fields are ignored, as OpenAI does.

_STRICT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False  # a last chunk with "usage" (and empty choices) before [DONE], as OpenAI


class _Sampling(BaseModel):
    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """As OpenAI: "temperature": null means the default (some clients send every field, unset ones as null)."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2, description="below 1e-5: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0, le=1)
    repetition_penalty: float = Field(default=1.0, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)  # OpenAI's range
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    ignore_eos: bool = False  # vLLM's extension: do not stop at end-of-text (or <|end|>): exactly max_tokens
    skip_special_tokens: bool = True  # vLLM's extension: False returns control tokens as text
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Sampling):
    # One prompt per request: a string, a one-element list of strings, or token ids.
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | list[Annotated[int, Field(ge=0)]]
    logprobs: int | None = Field(default=None, ge=0, le=20)  # the legacy API: top-n alternatives per token


class Message(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- errors -------------------------------------------------------------------------------------------


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    # pydantic names the union branch it tried ("str", "list[str]", ...): not a field, so left out
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and (isinstance(p, int) or p.isidentifier())
           and p not in ("str", "int", "float", "bool")]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", where


DISCONNECTED = "scratchllm.disconnected"  # scope key: an asyncio.Event set when the client goes away


class DisconnectWatch:
    """Pure ASGI middleware: once a request's body has been read, one task waits on the server's receive()
    for http.disconnect and sets scope[DISCONNECTED]; the app's own later receive() calls wait for that
    event. (Starlette's request.is_disconnected() does not see the disconnect through an http middleware.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = scope[DISCONNECTED] = asyncio.Event()
        watcher: asyncio.Task | None = None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def app_receive() -> Any:
            nonlocal watcher
            if watcher is not None:  # the body is read: all that can come is the disconnect
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        try:
            await self.app(scope, app_receive, send)
        finally:
            if watcher is not None:
                watcher.cancel()


# --- the guard: body limit, body timeout, auth, one log line per response, 500s as OpenAI errors -----------


class _Guard:
    """Raw ASGI middleware around the whole app (outside routing, so a 413 never waits for routing or
    auth, and inside nothing that could swallow a 500 unlogged)."""

    def __init__(self, app: Any, cfg: ServeConfig) -> None:
        self.app, self.cfg = app, cfg

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, rid = time.perf_counter(), uuid.uuid4().hex[:12]
        method, path = scope["method"], scope["path"]
        status: list[int] = [0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def reply(err: APIError, close: bool = False) -> None:
            body = json.dumps(err.body()).encode()
            hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if close:  # the body was not read: the connection cannot carry another request
                hdrs.append((b"connection", b"close"))
            await send_logged({"type": "http.response.start", "status": err.status, "headers": hdrs})
            await send_logged({"type": "http.response.body", "body": body})

        try:
            has_body = method in ("POST", "PUT", "PATCH") or "content-length" in headers \
                or "transfer-encoding" in headers
            try:
                declared = int(headers.get("content-length", "0"))
            except ValueError:
                declared = 0  # h11 already rejects malformed lengths; be safe
            if declared > self.cfg.max_body_bytes:
                return await reply(_too_large(self.cfg), close=True)
            if path.startswith("/v1") and self.cfg.api_key:
                if headers.get("authorization", "") != f"Bearer {self.cfg.api_key}":
                    return await reply(APIError(401, "invalid or missing API key", "authentication_error",
                                                code="invalid_api_key"), close=has_body)
            if method == "POST":
                body = await self._read_body(receive)
                if isinstance(body, APIError):
                    return await reply(body, close=True)
                if body is None:  # the client went away mid-body: nobody to answer
                    status[0] = 499
                    return
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    return await reply(APIError(400, "the request body is not valid UTF-8"))
                receive = _replay(body, receive)
            await self.app(scope, receive, send_logged)
        except Exception as e:  # noqa: BLE001 - a bug: log it once, answer in OpenAI's shape if still possible
            log.error(json.dumps({"event": "error", "id": rid, "path": path, "error": f"{type(e).__name__}: {e}"}),
                      exc_info=True)
            if not status[0]:
                await reply(_internal(e))
            elif status[0] < 500:
                status[0] = 500  # the response was cut short
        finally:
            log.info(json.dumps({"event": "request", "id": rid, "method": method, "path": path,
                                 "status": status[0] or 499, "ms": round(1000 * (time.perf_counter() - start), 1)}))

    async def _read_body(self, receive: Any) -> bytes | APIError | None:
        """The whole body, within max_body_bytes and body_timeout_s; None if the client disconnected."""
        chunks, size = [], 0
        deadline = time.monotonic() + self.cfg.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return APIError(408, f"the request body was not received within {self.cfg.body_timeout_s:g} s",
                                code="request_timeout")
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.cfg.max_body_bytes:
                return _too_large(self.cfg)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _internal(e: Exception) -> APIError:
    return APIError(500, f"internal error ({type(e).__name__}); the server log has the details", "server_error",
                    code="internal_error")


def _too_large(cfg: ServeConfig) -> APIError:
    return APIError(413, f"the request body is larger than max_body_bytes={cfg.max_body_bytes}",
                    code="request_too_large")


def _replay(body: bytes, receive: Any) -> Any:
    """A receive() that hands the app the body already read, then waits on the client (disconnects)."""
    sent = [False]

    async def replay() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- the app ------------------------------------------------------------------------------------------

_ERRORS = {
    400: "invalid request: malformed JSON or UTF-8, a wrong field, a prompt that does not fit the context",
    401: "missing or wrong API key (when the server has one)",
    404: "unknown model",
    408: "the request body was not received within body_timeout_s",
    413: "the request body is larger than max_body_bytes",
    429: "the queue is full (max_pending requests); retry later",
    500: "an internal error (a bug); the server log has the traceback",
    503: "the model is still loading",
    504: "the request did not finish within timeout_s",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": _ERRORS[c]} for c in (*codes, 500)}


def create_app(cfg: ServeConfig, model: Any = None, tokenizer: Any = None, compiled: bool = False) -> Any:
    """The ASGI app (FastAPI inside the guard). With model/tokenizer None they are loaded from cfg at
    startup (then /ready turns 200); serve() loads them before binding the port instead. compiled: the
    cfg.compile warm-up was already done (serve() does it before binding, so its errors are exit 2 too).

    The routes are module-level functions (the router below); they reach the config and the engine
    through request.app.state (cfg; engine: None while loading)."""

    async def lifespan(app: FastAPI):  # noqa: ANN202
        m, t = model, tokenizer
        if m is None:
            m, t = await asyncio.to_thread(load_for_inference, cfg.model, cfg.tokenizer or None, cfg.device)
        if cfg.compile and not compiled:
            seconds = await asyncio.to_thread(warm_up, m)
            log.info(json.dumps({"event": "compiled", "seconds": round(seconds, 2)}))
        engine = Engine(m, t, max_slots=cfg.max_batch, prefill_chunk=cfg.prefill_chunk, compile=cfg.compile)
        app.state.engine = BackgroundEngine(engine, cfg.max_pending)
        log.info(json.dumps({"event": "ready", "model": cfg.model_name, "params": m.num_params()}))
        yield
        app.state.engine.close()

    # No /docs or /redoc: Swagger UI and ReDoc load their scripts from a CDN (blank offline) and no
    # installed package ships the assets; the OpenAPI document itself is at /openapi.json.
    app = FastAPI(title="scratchllm", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.cfg, app.state.engine = cfg, None
    add_chat_page(app, cfg.model_name, cfg.api_key, lambda: app.state.engine)  # the web page at /
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Starlette's outermost middleware answers with this, then re-raises: the guard logs the traceback.
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(DisconnectWatch)  # after the http middleware: outermost, it sees the server's receive
    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    guarded = _Guard(app, cfg)
    guarded.fastapi = app  # type: ignore[attr-defined]  # for callers that need the FastAPI object
    return guarded


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    return APIError(400, message, param=param).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return APIError(exc.status_code, str(exc.detail), type_).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _internal(exc).response()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, less the 422 it adds to every body route: this server answers 400 instead."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                          description="OpenAI-compatible API; status codes and limits: docs/serve.md")
        for ops in doc.get("paths", {}).values():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


# --- routes -------------------------------------------------------------------------------------------

router = APIRouter()
_GENERATION_ERRORS = _responses(400, 401, 404, 408, 413, 429, 503, 504)


def _config(request: Request) -> ServeConfig:
    return request.app.state.cfg


def _engine(request: Request) -> BackgroundEngine:
    """The loaded engine, or 503 while the model is still loading."""
    engine = request.app.state.engine
    if engine is None:
        raise APIError(503, "the model is still loading", "server_error", code="not_ready")
    return engine


@router.get("/health", responses=_responses())
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "the model is still loading"}, **_responses()})
async def ready(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    if engine is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ready", "pending": engine.pending})


@router.get("/metrics", responses=_responses())
async def metrics(request: Request) -> PlainTextResponse:
    text = _engine(request).engine.metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/models", responses=_responses(401))
async def models(request: Request) -> dict[str, Any]:
    card = {"id": _config(request).model_name, "object": "model", "created": 0, "owned_by": "scratchllm"}
    return {"object": "list", "data": [card]}


@router.post("/v1/completions", responses=_GENERATION_ERRORS)
async def completions(req: CompletionRequest, request: Request) -> Any:
    engine = _engine(request)
    tok = engine.tokenizer
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], str):
        p = p[0]  # the schema allows exactly one
    if isinstance(p, str):
        prompt = await asyncio.to_thread(_encode, lambda: tok.encode(p), "prompt")  # long prompts: off the loop
    else:
        vocab = engine.model.cfg.vocab_size
        if any(not 0 <= i < vocab for i in p):
            raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", param="prompt")
        prompt = list(p)
    if not prompt:
        prompt = [tok.bos_id] if BOS in tok.special_tokens else []
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    params = _prepare(_config(request), engine, req, prompt, 16, [])
    return await _respond(request, engine, req, prompt, params, chat=False)


@router.post("/v1/chat/completions", responses=_GENERATION_ERRORS)
async def chat_completions(req: ChatRequest, request: Request) -> Any:
    engine = _engine(request)
    tok = engine.tokenizer
    messages = [m.model_dump() for m in req.messages]
    try:
        prompt, _ = await asyncio.to_thread(_encode, lambda: encode_chat(tok, messages, True), "messages")
        end = tok.token_id(END)
    except ScratchError as e:
        raise APIError(400, e.message, param="messages") from None
    params = _prepare(_config(request), engine, req, prompt, None, [end])
    return await _respond(request, engine, req, prompt, params, chat=True)


def _prepare(cfg: ServeConfig, engine: BackgroundEngine, req: _Sampling, prompt: list[int],
             default_max: int | None, extra_stop: list[int]) -> SamplingParams:
    """The request's SamplingParams, or the APIError (404 model, 400 context or range) that rejects it."""
    if req.model != cfg.model_name:
        shown = req.model if len(req.model) <= 64 else req.model[:64] + "..."  # never echo a huge name
        raise APIError(404, f"the model {shown!r} does not exist; this server serves {cfg.model_name!r}",
                       "not_found_error", "model", "model_not_found")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
    ctx = engine.model.cfg.context_length
    if len(prompt) >= ctx:
        raise APIError(400, f"the prompt has {len(prompt)} tokens; the model's context window is {ctx}",
                       param="messages" if extra_stop else "prompt", code="context_length_exceeded")
    room = ctx - len(prompt)
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None:
        max_tokens = min(room, default_max or room)
    if max_tokens > room:
        raise APIError(400, f"max_tokens={max_tokens} + {len(prompt)} prompt tokens exceed the model's context "
                            f"window of {ctx} tokens", param="max_tokens", code="context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(
        max_new_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
        min_p=req.min_p, repetition_penalty=req.repetition_penalty, frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty, stop=stop, stop_token_ids=[] if req.ignore_eos else extra_stop,
        ignore_eos=req.ignore_eos, seed=req.seed, skip_special_tokens=req.skip_special_tokens,
        logprobs=_top_logprobs(req))
    try:
        params.validate()  # the schema's ranges already hold; this keeps the two from drifting apart
    except ScratchError as e:
        raise APIError(400, e.message) from None
    return params


def _submit(cfg: ServeConfig, engine: BackgroundEngine, prompt: list[int], params: SamplingParams, n: int,
            out: asyncio.Queue) -> list[Any]:
    """n jobs (choice i seeded with seed + i) reporting to one queue as (i, item), all or none: 429 if the
    engine cannot take them all."""
    jobs: list[Any] = []
    try:
        for i in range(n):
            p = params if params.seed is None or i == 0 else replace(params, seed=params.seed + i)
            jobs.append(engine.submit(prompt, p, cfg.timeout_s, out, i))
    except QueueFull:
        for j in jobs:
            j.cancel()
        raise APIError(429, f"the server is busy ({cfg.max_pending} requests pending); retry later",
                       "rate_limit_error", code="queue_full") from None
    except ScratchError as e:
        raise APIError(400, e.message) from None
    return jobs


def _error_body(e: Exception) -> APIError:
    """The APIError for an exception a request's generation ended with."""
    if isinstance(e, RequestTimeout):
        return APIError(504, str(e), "timeout_error", code="timeout")
    if isinstance(e, RequestCancelled):  # the client went away: nobody reads this
        return APIError(499, str(e), code="client_closed_request")
    if isinstance(e, ScratchError):
        return APIError(400, e.message)
    log.error(json.dumps({"event": "error", "error": f"{type(e).__name__}: {e}"}),
              exc_info=(type(e), e, e.__traceback__))
    return _internal(e)


@dataclass
class _Reply:
    """What one completion request's response is made of (shared by the streaming and the whole form)."""

    request: Request
    tok: Any
    prompt: list[int]
    jobs: list[Any]
    queue: asyncio.Queue  # every choice's (i, Delta | Exception | None), in engine order
    chat: bool
    want_logprobs: bool
    include_usage: bool
    head: dict[str, Any]  # id, object, created, model

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": completion_tokens,
                "total_tokens": len(self.prompt) + completion_tokens}

    def chunk(self, i: int, text: str | None, finish: str | None, lp: Any, first: bool = False) -> str:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": lp}
        else:
            choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": lp}
        out = {**self.head, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None  # as OpenAI: null on every chunk but the last
        return _sse(out)


async def _respond(request: Request, engine: BackgroundEngine, req: _Sampling, prompt: list[int],
                   params: SamplingParams, chat: bool) -> Any:
    cfg = _config(request)
    queue: asyncio.Queue = asyncio.Queue()
    jobs = _submit(cfg, engine, prompt, params, req.n, queue)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": cfg.model_name}
    reply = _Reply(request, engine.tokenizer, prompt, jobs, queue, chat,
                   want_logprobs=(req.logprobs is True) if chat else (req.logprobs is not None),
                   include_usage=bool(req.stream_options and req.stream_options.include_usage), head=head)
    if req.stream:
        return StreamingResponse(_events(reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _whole(reply)


async def _events(r: _Reply) -> Any:
    """The server-sent events of a streaming reply: each engine step's text of every choice in one write."""
    held: list[list[Any]] = [[] for _ in r.jobs]  # tokens not yet sent (their logprobs go with the text)

    def flush(i: int, parts: list[str]) -> list[str]:
        lp = _logprobs(r.tok, held[i], r.chat) if r.want_logprobs and held[i] else None
        held[i] = []
        return [r.chunk(i, "".join(parts), None, lp)] if parts or lp is not None else []
    try:
        if r.chat:
            for i in range(len(r.jobs)):
                yield r.chunk(i, None, None, None, first=True)
        live, n_tokens = len(r.jobs), 0
        while live:
            items = [await r.queue.get()]
            while not r.queue.empty():  # behind the engine: merge what has piled up into one chunk
                items.append(r.queue.get_nowait())
            texts: dict[int, list[str]] = {}
            out: list[str] = []
            for i, d in items:
                if d is None:
                    live -= 1
                elif isinstance(d, Exception):  # text that came before the error goes first
                    out += flush(i, texts.pop(i, []))
                    out.append(_sse(_error_body(d).body()))
                else:
                    if d.token_id is not None:
                        held[i].append(d)
                        n_tokens += 1
                    if d.text:
                        texts.setdefault(i, []).append(d.text)
                    if d.finish_reason or (d.text and r.want_logprobs):
                        out += flush(i, texts.pop(i, []))
                    if d.finish_reason:
                        out.append(r.chunk(i, None, d.finish_reason, None))
            for i, parts in texts.items():
                out += flush(i, parts)
            if out:
                yield "".join(out)
        if r.include_usage:
            yield _sse({**r.head, "choices": [], "usage": r.usage(n_tokens)})
    finally:  # also when the client disconnects (this generator is closed): stop generating
        for j in r.jobs:
            j.cancel()
    yield "data: [DONE]\n\n"


async def _whole(r: _Reply) -> dict[str, Any]:
    """The non-streaming reply; a client that goes away meanwhile frees its slots too."""
    async def collect() -> list[tuple[str, str, list[Any]]]:
        parts: list[list[str]] = [[] for _ in r.jobs]
        toks: list[list[Any]] = [[] for _ in r.jobs]
        finish = ["length"] * len(r.jobs)
        live = len(r.jobs)
        while live:
            i, d = await r.queue.get()
            if d is None:
                live -= 1
            elif isinstance(d, Exception):
                raise d
            else:
                parts[i].append(d.text)
                if d.token_id is not None:
                    toks[i].append(d)
                finish[i] = d.finish_reason or finish[i]
        return [("".join(p), f, t) for p, f, t in zip(parts, finish, toks)]

    async def watch() -> None:
        gone = r.request.scope.get(DISCONNECTED)
        if gone is None:
            return
        await gone.wait()
        for j in r.jobs:
            j.cancel()

    watcher = asyncio.create_task(watch())
    try:
        results = await collect()
    except Exception as e:  # noqa: BLE001 - mapped to an OpenAI error body
        raise _error_body(e) from None
    finally:
        watcher.cancel()
        for j in r.jobs:
            j.cancel()
    choices = []
    for i, (text, finish, toks) in enumerate(results):
        lp = _logprobs(r.tok, toks, r.chat) if r.want_logprobs else None
        if r.chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish, "logprobs": lp})
        else:
            choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": lp})
    obj = "chat.completion" if r.chat else "text_completion"
    return {**r.head, "object": obj, "choices": choices, "usage": r.usage(sum(len(t) for _, _, t in results))}


def _encode(fn: Any, param: str) -> Any:
    """Run a tokenizer call; text JSON can carry but UTF-8 cannot (lone surrogates like "\\ud800") -> 400."""
    try:
        return fn()
    except UnicodeEncodeError:
        raise APIError(400, f"{param} contains invalid Unicode (a lone surrogate)", param=param) from None


def _top_logprobs(req: _Sampling) -> int:
    """How many alternatives per token the request asks for (completions: logprobs=n; chat: top_logprobs)."""
    if isinstance(req, ChatRequest):
        return (req.top_logprobs or 0) if req.logprobs else 0
    return getattr(req, "logprobs", None) or 0


def _token_text(tok: Any, token: int) -> str:
    return tok.id_to_bytes(token).decode("utf-8", errors="replace")


def _logprobs(tok: Any, ds: list[Any], chat: bool) -> dict[str, Any]:
    """OpenAI's logprobs object for the tokens of Deltas ds: chat's {"content": [...]}, or the legacy
    completions form {"tokens", "token_logprobs", "top_logprobs", "text_offset"}."""
    if chat:
        def entry(t: int, lp: float) -> dict[str, Any]:
            return {"token": _token_text(tok, t), "logprob": lp, "bytes": list(tok.id_to_bytes(t))}

        return {"content": [{**entry(d.token_id, d.logprob),
                             "top_logprobs": [entry(t, lp) for t, lp in d.top_logprobs or []]} for d in ds]}
    texts = [_token_text(tok, d.token_id) for d in ds]
    offsets, at = [], 0
    for t in texts:
        offsets.append(at)
        at += len(t)
    return {"tokens": texts, "token_logprobs": [d.logprob for d in ds],
            "top_logprobs": [{_token_text(tok, t): lp for t, lp in d.top_logprobs or []} for d in ds],
            "text_offset": offsets}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# --- running it ---------------------------------------------------------------------------------------


def _protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing connections that do not complete a request's headers in time.

    uvicorn only times out idle keep-alive connections; one sending its headers byte by byte (or
    nothing at all) is otherwise held forever. The timer starts when the connection opens and again
    when each response completes; it is harmless once a request's headers are in (the body has
    body_timeout_s, generation timeout_s).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _expire(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def build_server(cfg: ServeConfig, app: Any) -> Any:
    """A uvicorn.Server for app with this config's timeouts; announces its URL once it listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
                log.info(json.dumps({"event": "listening", "url": self.url}))
                print(f"scratchllm serve: {cfg.model_name} at {self.url}/v1 (port {port}; health {self.url}/health, "
                      f"API document {self.url}/openapi.json); Ctrl-C stops", file=sys.stderr, flush=True)

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5,
                            http=_protocol(cfg.header_timeout_s), lifespan="on")
    return Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a ScratchError (port taken, no permission, bad host)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise ScratchError(f"serve: cannot resolve host {host!r}: {e}", "use host=127.0.0.1 or host=0.0.0.0") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ScratchError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}",
                           "choose another port=... (0 picks a free one), or stop what holds this one") from None
    return sock


def serve(cfg: ServeConfig) -> None:
    """Check the config, load the model, bind the port, then serve until interrupted (JSON logs on stderr).

    Every user error (a bad setting, a damaged model, a missing tokenizer, mismatched vocabularies, a
    device that is not there, a port in use) is a ScratchError before the port opens.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # small models decode faster on fewer threads (per-op overhead)
    model, tokenizer = load_for_inference(cfg.model, cfg.tokenizer or None, cfg.device)
    if cfg.compile:
        log.info(json.dumps({"event": "compiled", "seconds": round(warm_up(model), 2)}))
    sock = bind(cfg.host, cfg.port)
    try:
        build_server(cfg, create_app(cfg, model, tokenizer, compiled=True)).run(sockets=[sock])
    finally:
        sock.close()
