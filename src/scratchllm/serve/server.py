"""An OpenAI-compatible HTTP server: FastAPI + uvicorn.

    GET  /                      the web chat page (chat_page.py; no auth to load it, its API calls carry the key)
    GET  /health                liveness: the process answers (no auth)
    GET  /ready                 readiness: 200 once the model is loaded, else 503 (no auth)
    GET  /metrics               Prometheus text: running/waiting requests, tokens, latency histograms
    GET  /v1/models             the one model served
    POST /v1/completions        text completion; stream=true sends server-sent events
    POST /v1/chat/completions   chat (the fine-tuning chat template); stream=true as well

Every error is a 4xx/5xx with OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: bad
JSON, wrong fields, prompts that do not fit the context -> 400, wrong API key -> 401, unknown model ->
404, queue full -> 429, timeout -> 504. Generation runs on the continuous-batching engine
(scratchllm.infer.engine) on a thread of its own (scratchllm.infer.background); a client that goes
away, streaming or not, frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchllm.errors import ScratchError
from scratchllm.infer.background import BackgroundEngine, QueueFull, deltas
from scratchllm.infer.engine import Engine, RequestCancelled, RequestTimeout
from scratchllm.infer.sampling import SamplingParams

log = logging.getLogger("scratchllm.serve")


@dataclass
class ServeConfig:
    """Server settings. Preset: configs/serve/default.toml."""

    model: str = ""  # model directory (or training run directory)
    tokenizer: str = ""  # tokenizer directory/file; "" = look inside the model directory
    model_name: str = "scratchllm"  # the id clients pass as "model"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""  # "" = no auth; else clients must send "Authorization: Bearer <api_key>"
    max_pending: int = 64  # requests queued or running before 429
    max_batch: int = 32  # KV-cache slots: requests decoded together (memory: max_batch x context_length)
    prefill_chunk: int = 256  # prompt tokens prefilled per engine step (longer prompts take several steps)
    timeout_s: float = 120.0  # per request, from arrival (queue wait included)
    device: str = "cpu"
    threads: int = 0  # torch CPU threads for generation; 0 = torch's default (one per core)
    compile: bool = False  # torch.compile the decode step (compiled at startup, before /ready turns 200)


# --- request bodies (pydantic validates types and ranges; extra fields are ignored, as OpenAI does) ------


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    skip_special_tokens: bool = True  # vLLM's extension: False returns control tokens as text
    ignore_eos: bool = False  # vLLM's extension: do not stop at <|eos|> (benchmarks: every request runs max_tokens)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=20)  # the legacy API: top-n alternatives per token


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


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
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
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


# --- the app ------------------------------------------------------------------------------------------


def create_app(cfg: ServeConfig, model: Any = None, tokenizer: Any = None) -> FastAPI:
    """The FastAPI app. With model/tokenizer None they are loaded from cfg at startup (then /ready turns 200)."""
    state: dict[str, Any] = {"engine": None}

    async def lifespan(app: FastAPI):  # noqa: ANN202

        m, t = model, tokenizer
        if m is None:
            from scratchllm.infer.load import load_for_inference

            m, t = await asyncio.to_thread(load_for_inference, cfg.model, cfg.tokenizer or None, cfg.device)
        if cfg.compile:
            from scratchllm.infer.compile import warm_up

            seconds = await asyncio.to_thread(warm_up, m)
            log.info(json.dumps({"event": "compiled", "seconds": round(seconds, 2)}))
        engine = Engine(m, t, max_slots=cfg.max_batch, prefill_chunk=cfg.prefill_chunk, compile=cfg.compile)
        state["engine"] = BackgroundEngine(engine, cfg.max_pending)
        log.info(json.dumps({"event": "ready", "model": cfg.model_name, "params": m.num_params()}))
        yield
        state["engine"].close()

    app = FastAPI(title="scratchllm", lifespan=lifespan)
    from scratchllm.serve.chat_page import add_chat_page

    add_chat_page(app, cfg.model_name, cfg.api_key, lambda: state["engine"])  # the web page at /

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type_).response()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        """Auth for /v1, undecodable bodies -> 400, one structured log line per request."""
        start = time.perf_counter()
        rid = uuid.uuid4().hex[:12]
        if request.url.path.startswith("/v1") and cfg.api_key:
            if request.headers.get("authorization", "") != f"Bearer {cfg.api_key}":
                response = APIError(401, "invalid or missing API key", "authentication_error",
                                    code="invalid_api_key").response()
                _log(rid, request, response.status_code, start)
                return response
        if request.method == "POST":
            body = await request.body()
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                response = APIError(400, "the request body is not valid UTF-8").response()
                _log(rid, request, response.status_code, start)
                return response
        request.state.rid = rid
        response = await call_next(request)
        _log(rid, request, response.status_code, start)
        return response

    app.add_middleware(DisconnectWatch)  # after the http middleware: outermost, it sees the server's receive

    def engine() -> BackgroundEngine:
        if state["engine"] is None:
            raise APIError(503, "the model is still loading", "server_error", code="not_ready")
        return state["engine"]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state["engine"] is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "pending": state["engine"].pending})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = engine().engine.metrics.render()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "scratchllm"}
        return {"object": "list", "data": [card]}

    def prepare(req: _Sampling, prompt: list[int], default_max: int | None, extra_stop: list[int]
                ) -> SamplingParams:
        if req.model != cfg.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {cfg.model_name!r}",
                           "not_found_error", "model", "model_not_found")
        ctx = engine().engine.model.cfg.context_length
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
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", param="stop")
        return SamplingParams(
            max_new_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
            min_p=req.min_p, repetition_penalty=req.repetition_penalty, frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty, stop=stop, stop_token_ids=extra_stop, seed=req.seed,
            skip_special_tokens=req.skip_special_tokens, ignore_eos=req.ignore_eos, logprobs=_top_logprobs(req))

    def submit(prompt: list[int], params: SamplingParams, n: int) -> list[Any]:
        """n jobs (choice i seeded with seed + i), all or none: 429 if the engine cannot take them all."""
        jobs: list[Any] = []
        try:
            for i in range(n):
                p = params if params.seed is None or i == 0 else replace(params, seed=params.seed + i)
                jobs.append(engine().submit(prompt, p, cfg.timeout_s))
        except QueueFull:
            for j in jobs:
                j.cancel()
            raise APIError(429, f"the server is busy ({cfg.max_pending} requests pending); retry later",
                           "rate_limit_error", code="queue_full") from None
        except ScratchError as e:
            raise APIError(400, e.message) from None
        return jobs

    def error_body(e: Exception) -> APIError:
        if isinstance(e, RequestTimeout):
            return APIError(504, str(e), "timeout_error", code="timeout")
        if isinstance(e, RequestCancelled):  # the client went away: nobody reads this
            return APIError(499, str(e), code="client_closed_request")
        if isinstance(e, ScratchError):
            return APIError(400, e.message)
        log.error(json.dumps({"event": "generation_error", "error": repr(e)}))
        return APIError(500, "generation failed", "server_error")

    async def respond(request: Request, req: _Sampling, prompt: list[int], params: SamplingParams,
                      chat: bool) -> Any:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        jobs = submit(prompt, params, req.n)
        tok = engine().engine.tokenizer
        want_logprobs = (req.logprobs is True) if chat else (req.logprobs is not None)
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": cfg.model_name}

        def choice_chunk(i: int, text: str | None, finish: str | None, lp: Any, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": lp}
            else:
                choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": lp}
            return _sse({**head, "choices": [choice]})

        if req.stream:
            async def events() -> Any:
                queue: asyncio.Queue = asyncio.Queue()

                async def pump(i: int, job: Any) -> None:  # one task per choice, merged into one stream
                    try:
                        async for d in deltas(job):
                            await queue.put((i, d))
                    except Exception as e:  # noqa: BLE001 - sent to the client as an error event
                        await queue.put((i, e))
                    await queue.put((i, None))

                tasks = [asyncio.create_task(pump(i, j)) for i, j in enumerate(jobs)]
                held: list[list[Any]] = [[] for _ in jobs]  # tokens not yet sent (their logprobs go with the text)

                def flush(i: int, parts: list[str]) -> list[str]:
                    lp = _logprobs(tok, held[i], chat) if want_logprobs and held[i] else None
                    held[i] = []
                    return [choice_chunk(i, "".join(parts), None, lp)] if parts or lp is not None else []
                try:
                    if chat:
                        for i in range(len(jobs)):
                            yield choice_chunk(i, None, None, None, first=True)
                    live = len(jobs)
                    while live:
                        items = [await queue.get()]
                        while not queue.empty():  # behind the engine: merge what has piled up into one chunk
                            items.append(queue.get_nowait())
                        texts: dict[int, list[str]] = {}
                        out: list[str] = []
                        for i, d in items:
                            if d is None:
                                live -= 1
                            elif isinstance(d, Exception):
                                out.append(_sse(error_body(d).body()))
                            else:
                                if d.token_id is not None:
                                    held[i].append(d)
                                if d.text:
                                    texts.setdefault(i, []).append(d.text)
                                if d.finish_reason or (d.text and want_logprobs):
                                    out += flush(i, texts.pop(i, []))
                                if d.finish_reason:
                                    out.append(choice_chunk(i, None, d.finish_reason, None))
                        for i, parts in texts.items():
                            out += flush(i, parts)
                        if out:
                            yield "".join(out)
                finally:  # also when the client disconnects (this generator is closed): stop generating
                    for j in jobs:
                        j.cancel()
                    for t in tasks:
                        t.cancel()
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def collect(job: Any) -> tuple[str, str, list[Any]]:
            parts, toks, finish = [], [], "length"
            async for d in deltas(job):
                parts.append(d.text)
                if d.token_id is not None:
                    toks.append(d)
                finish = d.finish_reason or finish
            return "".join(parts), finish, toks

        async def watch() -> None:  # a non-streaming client that goes away frees its slots too
            gone = request.scope.get(DISCONNECTED)
            if gone is None:
                return
            await gone.wait()
            for j in jobs:
                j.cancel()

        watcher = asyncio.create_task(watch())
        try:
            results = await asyncio.gather(*(collect(j) for j in jobs))
        except Exception as e:  # noqa: BLE001 - mapped to an OpenAI error body
            raise error_body(e) from None
        finally:
            watcher.cancel()
            for j in jobs:
                j.cancel()
        n_tokens = sum(len(t) for _, _, t in results)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n_tokens, "total_tokens": len(prompt) + n_tokens}
        choices = []
        for i, (text, finish, toks) in enumerate(results):
            lp = _logprobs(tok, toks, chat) if want_logprobs else None
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish, "logprobs": lp})
            else:
                choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": lp})
        obj = "chat.completion" if chat else "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": cfg.model_name, "choices": choices,
                "usage": usage}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        tok = engine().engine.tokenizer
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            if len(p) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            p = p[0]
        if isinstance(p, str):
            prompt = _encode(lambda: tok.encode(p), "prompt")
        else:
            vocab = engine().engine.model.cfg.vocab_size
            if any(not 0 <= i < vocab for i in p):
                raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", param="prompt")
            prompt = list(p)
        if not prompt:
            prompt = [tok.bos_id] if "<|bos|>" in tok.special_tokens else []
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        return await respond(request, req, prompt, prepare(req, prompt, 16, []), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        from scratchllm.finetune.chat import END, encode_chat

        tok = engine().engine.tokenizer
        try:
            prompt, _ = _encode(lambda: encode_chat(tok, [m.model_dump() for m in req.messages], True), "messages")
            end = tok.token_id(END)
        except ScratchError as e:
            raise APIError(400, e.message, param="messages") from None
        return await respond(request, req, prompt, prepare(req, prompt, None, [end]), chat=True)

    return app


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


def _log(rid: str, request: Request, status: int, start: float) -> None:
    log.info(json.dumps({"event": "request", "id": rid, "method": request.method, "path": request.url.path,
                         "status": status, "ms": round(1000 * (time.perf_counter() - start), 1)}))


def serve(cfg: ServeConfig) -> None:
    """Run the server until interrupted (uvicorn; logs are JSON lines on stderr)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)  # small models decode faster on fewer threads (per-op overhead)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
