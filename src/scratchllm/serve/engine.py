"""Loading a model for inference, and the Engine: one generation worker thread fed by a bounded queue.

The KV cache lives on the model, so one model generates one request at a time; requests wait in a
queue of bounded length (the server answers 429 when it is full). Generation runs on the worker
thread, never on the web server's event loop, so health checks stay responsive while it works.
Each job streams Deltas back to its asyncio consumer; cancelling a job (client gone, timeout) stops
its generation at the next token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.model.paths import require_tokenizer, resolve_model_dir
from scratchllm.serve.generate import Delta, SamplingParams, stream


def check_device(device: str) -> str:
    """The device string, if torch can place a model there; else a ScratchError (not a traceback mid-load)."""
    import torch

    hint = "use device=cpu" + (f" or cuda:0..cuda:{torch.cuda.device_count() - 1}" if torch.cuda.is_available() else "")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ScratchError(f"unknown device {device!r}", hint) from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ScratchError(f"device {device!r}: no CUDA GPU is available to this torch", hint)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ScratchError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here", hint)
        return device
    if dev.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ScratchError(f"device {device!r} is not available here", hint)


def load_for_inference(model_path: str | Path, tokenizer_path: str | Path | None = None,
                       device: str = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer). The tokenizer defaults to one saved inside the model directory."""
    from scratchllm.model.checkpoint import check_vocab
    from scratchllm.serve.quantize import load_model
    from scratchllm.tokenizer import Tokenizer

    check_device(device)
    model_dir = resolve_model_dir(model_path)
    model = load_model(model_dir, map_location=device).eval()
    if tokenizer_path is None:
        tokenizer_path = require_tokenizer(model_path, model_dir)
    tokenizer = Tokenizer.load(tokenizer_path)
    check_vocab(model.cfg.vocab_size, tokenizer.vocab_size, f"the model in {model_dir}",
                f"the tokenizer in {tokenizer_path}")
    return model, tokenizer


class QueueFull(Exception):
    """The engine already holds max_pending requests."""


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    deadline: float  # time.monotonic() after which the job is abandoned
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # Delta | Exception, then None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening; the worker must go on
            self.cancelled.set()


class JobTimeout(Exception):
    pass


class Engine:
    """One worker thread generating for queued jobs, in arrival order."""

    def __init__(self, model: Any, tokenizer: Any, max_pending: int = 64, compile: bool = False) -> None:
        self.model, self.tokenizer, self.max_pending = model, tokenizer, max_pending
        self.compile = compile  # decode with the torch.compile'd step (scratchllm.serve.compile)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # admitted and not finished
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="scratchllm-generate", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, prompt: list[int], params: SamplingParams, timeout_s: float) -> Job:
        """Queue a job (call from the event loop); raises QueueFull when max_pending jobs are waiting or running."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise QueueFull
            self._pending += 1
        job = Job(prompt, params, time.monotonic() + timeout_s, asyncio.get_running_loop())
        self._queue.put(job)
        return job

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - reported to the request; the worker must survive
                job.emit(e)
            finally:
                with self._lock:
                    self._pending -= 1
                job.emit(None)

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        if time.monotonic() > job.deadline:
            raise JobTimeout("the request timed out while waiting in the queue")
        steps = stream(self.model, job.prompt, job.params, self.tokenizer, compile=self.compile)
        try:
            for delta in steps:
                job.emit(delta)
                if job.cancelled.is_set():
                    return
                if time.monotonic() > job.deadline and delta.finish_reason is None:
                    raise JobTimeout("the request timed out during generation")
        finally:
            steps.close()


async def deltas(job: Job) -> Any:
    """Async iterator over a job's Deltas; raises the job's error. Cancels the job if the consumer stops."""
    try:
        while (item := await job.out.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        job.cancelled.set()


__all__ = ["Delta", "Engine", "Job", "JobTimeout", "QueueFull", "check_device", "deltas", "load_for_inference",
           "resolve_model_dir"]
