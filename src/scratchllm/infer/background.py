"""The engine on a thread of its own, fed from an asyncio server.

    event loop: submit(prompt, params) -> Job (its Deltas arrive on an asyncio queue as (index, item))
    engine thread: add new jobs to the engine, step it while it has work, sleep when it has none

Generation never runs on the web server's event loop, so health checks and new requests stay
responsive while a batch decodes. Cancelling a job (client gone) frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from scratchllm.infer.engine import Engine, Request
from scratchllm.infer.sampling import Delta, SamplingParams


class QueueFull(Exception):
    """The engine already holds max_pending requests (waiting or running)."""


@dataclass(eq=False)
class Job:
    prompt: list[int]
    params: SamplingParams
    deadline: float  # time.monotonic() after which the request is dropped
    loop: asyncio.AbstractEventLoop
    # (index, Delta | Exception), then (index, None). Jobs may share one queue (the n choices of a request),
    # so their consumer wakes once per engine step for all of them, not once per job.
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    index: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Any) -> None:
        _deliver(self.loop, [(self, item)])

    def cancel(self) -> None:
        self.cancelled.set()


class BackgroundEngine:
    """Runs engine.step() on a worker thread; submit() from the event loop."""

    def __init__(self, engine: Engine, max_pending: int = 64) -> None:
        self.engine, self.max_pending = engine, max_pending
        self._inbox: list[Job] = []
        self._pending = 0
        self._closed = False
        self._cv = threading.Condition()
        self._outbox: list[tuple[Job, Any]] = []  # this step's items, handed to the event loop(s) in one call
        self._thread = threading.Thread(target=self._work, name="scratchllm-engine", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def model(self) -> Any:
        return self.engine.model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def submit(self, prompt: list[int], params: SamplingParams, timeout_s: float,
               out: asyncio.Queue | None = None, index: int = 0) -> Job:
        """Queue a request (raises QueueFull when max_pending are waiting or running; ScratchError when
        the request cannot run at all). out: the queue its items go to, tagged with index (default: its own)."""
        self.engine.check(prompt, params)
        with self._cv:
            if self._pending >= self.max_pending:
                raise QueueFull
            self._pending += 1
            job = Job(prompt, params, time.monotonic() + timeout_s, asyncio.get_running_loop(),
                      asyncio.Queue() if out is None else out, index)
            self._inbox.append(job)
            self._cv.notify()
        return job

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _done(self, job: Job) -> None:
        with self._cv:
            self._pending -= 1

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._inbox and not self.engine.has_work and not self._closed:
                    self._cv.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
            for job in inbox:
                self._add(job)
            try:
                self.engine.step()
            except Exception as e:  # noqa: BLE001 - a bug in the step fails its requests; the server goes on
                self.engine.cancel_all(e)
            self._flush()
        self.engine.cancel_all(RuntimeError("the server is shutting down"))
        self._flush()

    def _flush(self) -> None:
        """Hand this step's items to their event loops: one wake-up per loop per step, not one per token."""
        by_loop: dict[Any, list[tuple[Job, Any]]] = {}
        for job, item in self._outbox:
            by_loop.setdefault(job.loop, []).append((job, item))
        self._outbox = []
        for loop, items in by_loop.items():
            _deliver(loop, items)

    def _add(self, job: Job) -> None:
        def on_delta(req: Request, delta: Delta | None) -> None:
            if delta is not None:
                self._outbox.append((job, delta))
                return
            if req.error is not None:
                self._outbox.append((job, req.error))
            self._done(job)
            self._outbox.append((job, None))

        try:
            self.engine.add(job.prompt, job.params, job.deadline, on_delta, job.cancelled)
        except Exception as e:  # noqa: BLE001 - reported to its request
            self._done(job)
            job.emit(e)
            job.emit(None)


def _deliver(loop: asyncio.AbstractEventLoop, items: list[tuple[Job, Any]]) -> None:
    def put() -> None:
        for job, item in items:
            job.out.put_nowait((job.index, item))

    try:
        loop.call_soon_threadsafe(put)
    except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
        for job, _ in items:
            job.cancelled.set()


async def deltas(job: Job) -> Any:
    """Async iterator over the Deltas of a job with a queue of its own; raises the job's error. Cancels the
    job if the consumer stops."""
    try:
        while (item := (await job.out.get())[1]) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        job.cancelled.set()
