"""The inference engine: continuous batching over a pool of KV-cache slots. Every generation in the
project goes through it (the server, generate/chat, eval, GRPO rollouts, SFT accuracy, samples).

    add(prompt, params) -> waiting (first come, first served)
    step():  drop cancelled / timed-out requests (their slots free at once)
             admit waiting requests into free slots (reusing a cached prefix when one matches)
             decode: one forward over every running request, one new token each
             prefill: up to prefill_chunk prompt tokens of newly admitted requests (long prompts take
                      several steps, so they never stall the running streams for long); a request whose
                      prompt is done samples its first token and decodes with the others from the next step
             each request: its own penalties, sampling parameters, seed, stop tokens and strings

Rows of a batch never see each other (each attends to its own slot, at its own positions), so a
request's greedy output is the same alone or in a busy batch, and a seeded request samples the same.

Prefix caching: a slot keeps the tokens whose keys/values it holds after its request finishes; a new
request whose prompt starts with the same tokens (a chat system prompt, the n samples of one prompt)
takes that slot or copies the shared part from it, and prefills only the rest.

Not thread-safe: one thread calls add/step (scratchllm.infer.background runs one for the server);
cancel() may be called from any thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.cache import KVCache
from scratchllm.infer.metrics import EngineMetrics
from scratchllm.infer.sampling import (
    Completion,
    Delta,
    SamplingParams,
    StopChecker,
    apply_penalties,
    sample_rows,
)


class RequestTimeout(Exception):
    """The request passed its deadline (waiting or generating)."""


class RequestCancelled(Exception):
    """The request was cancelled (its client went away)."""


@dataclass(eq=False)
class Request:
    """One sequence being generated. The engine fills tokens/logprobs/finish_reason as it goes."""

    prompt: list[int]
    params: SamplingParams
    checker: StopChecker
    id: int = 0
    deadline: float | None = None  # time.monotonic() after which the request is dropped with RequestTimeout
    # Called on the engine's thread with every Delta, then with None once the request is over (finished,
    # or failed: see error). Must be quick: the whole batch waits for it.
    on_delta: Callable[[Request, Delta | None], None] | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # (V,) bool: prompt + generated tokens (repetition penalty)
    counts: torch.Tensor | None = None  # (V,) generated-token counts (frequency/presence penalties)
    slot: int | None = None
    cached: int = 0  # tokens of seq whose keys/values are in the slot
    seq: list[int] = field(default_factory=list)  # prompt + generated tokens
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None
    arrival: float = 0.0
    last_token_time: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def cancel(self) -> None:
        """Stop generating (any thread): the engine frees the slot at its next step."""
        self.cancelled.set()

    def completion(self) -> Completion:
        text = self.checker.text if self.checker.tokenizer is not None else None
        return Completion(self.tokens, text, self.finish_reason or "length", self.logprobs, self.top_logprobs,
                          len(self.prompt))


class Engine:
    """Continuous batching over max_slots KV-cache slots of max_len positions (default: the context length).

    compile=True decodes with the torch.compile'd step (scratchllm.infer.compile): the running batch is
    padded to the next power of two, so each of those sizes compiles once. autocast: a context-manager
    factory wrapped around every forward (bf16 under the Trainer).
    """

    def __init__(self, model: Any, tokenizer: Any = None, max_slots: int = 16, max_len: int | None = None,
                 prefill_chunk: int = 256, compile: bool = False, prefix_caching: bool = True,
                 autocast: Callable[[], Any] | None = None) -> None:
        ctx = model.cfg.context_length
        max_len = max_len or ctx
        if not 1 <= max_len <= ctx:
            raise ScratchError(f"engine: max_len={max_len} does not fit the model's context_length={ctx}",
                               "shorten the prompt or the number of new tokens")
        if max_slots < 1 or prefill_chunk < 1:
            raise ScratchError("engine: max_slots and prefill_chunk must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_slots, self.max_len, self.prefill_chunk = max_slots, max_len, prefill_chunk
        self.compile, self.prefix_caching = compile, prefix_caching
        self.autocast = autocast or contextlib.nullcontext
        self.device = model.tok_emb.weight.device
        self.cache = KVCache.for_model(model, max_slots, max_len)
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.running: list[Request] = []
        self.free: deque[int] = deque(range(max_slots))  # least recently used first
        self.slot_tokens: dict[int, list[int]] = {}  # free slot -> the tokens its keys/values belong to
        self.metrics = EngineMetrics()
        self._ids = count()
        self._positions: dict[int, torch.Tensor] = {}  # position -> tensor([[position]]) (decode steps)
        self._all_slots = torch.arange(max_slots, device=self.device)

    # --- requests -----------------------------------------------------------------------------------

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        """Raise ScratchError if the request cannot run (bad parameters, bad ids, does not fit a slot)."""
        check_request(self.model, prompt, params, self.max_len)

    def add(self, prompt: list[int], params: SamplingParams, deadline: float | None = None,
            on_delta: Callable[[Request, Delta | None], None] | None = None,
            cancelled: threading.Event | None = None) -> Request:
        """Queue a request (validated now: ScratchError if it cannot run). cancelled: an event another
        thread sets to cancel it (default: a new one, see Request.cancel)."""
        self.check(prompt, params)
        req = Request(list(prompt), params, StopChecker(params, self.tokenizer), next(self._ids), deadline, on_delta)
        if cancelled is not None:
            req.cancelled = cancelled
        req.seq = list(prompt)
        req.arrival = time.monotonic()
        if params.seed is not None and not params.greedy:
            req.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        V = self.model.cfg.vocab_size
        if params.repetition_penalty != 1.0:
            req.seen = torch.zeros(V, dtype=torch.bool, device=self.device)
            req.seen[torch.tensor(prompt, device=self.device)] = True
        if params.frequency_penalty or params.presence_penalty:
            req.counts = torch.zeros(V, device=self.device)
        self.waiting.append(req)
        return req

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    @property
    def n_running(self) -> int:
        return len(self.prefilling) + len(self.running)

    # --- the step -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, Delta]]:
        """One scheduling step; returns the Deltas it produced (also passed to each request's on_delta)."""
        events: list[tuple[Request, Delta]] = []
        self._reap()
        self._admit()
        decoding = list(self.running)  # requests admitted this step join at the next one
        if decoding:
            self._decode(decoding, events)
        if self.prefilling:
            self._prefill(events)
        self.metrics.running, self.metrics.waiting = self.n_running, len(self.waiting)
        return events

    def _reap(self) -> None:
        now = time.monotonic()
        for queue in (self.waiting, self.prefilling, self.running):
            for req in [r for r in queue if r.cancelled.is_set() or (r.deadline is not None and now > r.deadline)]:
                if req.cancelled.is_set():
                    self._fail(req, RequestCancelled("the request was cancelled"))
                else:
                    where = "waiting in the queue" if req.slot is None else "during generation"
                    self._fail(req, RequestTimeout(f"the request timed out {where}"))

    def _admit(self) -> None:
        while self.waiting and self.free:
            req = self.waiting.popleft()
            req.slot, req.cached = self._take_slot(req.prompt)
            self.prefilling.append(req)

    def _take_slot(self, prompt: list[int]) -> tuple[int, int]:
        """A free slot for prompt and how many of its tokens are already cached there (prefix caching)."""
        shared, best, best_free = 0, None, False
        if self.prefix_caching:
            limit = len(prompt) - 1  # prefill at least one token: its logits give the first new token
            candidates = [(s, self.slot_tokens.get(s, []), True) for s in self.free]
            candidates += [(r.slot, r.seq[: r.cached], False) for r in (*self.prefilling, *self.running)]
            for slot, tokens, free in candidates:
                n = _common_prefix(prompt, tokens, limit)
                if n and (n, free) > (shared, best_free):
                    shared, best, best_free = n, slot, free
        if best is not None and best_free:  # a free slot already holds the prefix: take it as it is
            self.free.remove(best)
            slot = best
        else:  # the least recently used free slot (copying the prefix from a busy one, if any)
            slot = self.free.popleft()
            if best is not None:
                self.cache.copy_prefix(best, slot, shared)
        self.slot_tokens.pop(slot, None)
        if shared:
            self.metrics.prefix_hit_tokens += shared
        return slot, shared

    def _release(self, req: Request) -> None:
        for queue in (self.prefilling, self.running):
            if req in queue:
                queue.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)
        if req.slot is not None:
            self.slot_tokens[req.slot] = req.seq[: req.cached]
            self.free.append(req.slot)
            req.slot = None

    def _fail(self, req: Request, error: BaseException) -> None:
        if req.done:
            return
        req.error = error
        self._release(req)
        self.metrics.finished(req, error=error)
        if req.on_delta is not None:
            with contextlib.suppress(Exception):  # the request is over either way
                req.on_delta(req, None)

    def cancel_all(self, error: BaseException) -> None:
        for req in [*self.waiting, *self.prefilling, *self.running]:
            self._fail(req, error)

    # --- forwards -----------------------------------------------------------------------------------

    def _forward(self, reqs: list[Request], chunks: list[list[int]]) -> torch.Tensor:
        """Logits (B, V) at each row's last new token; chunk i goes into reqs[i]'s slot after its cached tokens."""
        B, T = len(reqs), max(len(c) for c in chunks)
        starts = [r.cached for r in reqs]
        if T == 1 and self.compile:
            return self._compiled_decode(reqs, [c[0] for c in chunks], starts)
        slot_list = [r.slot for r in reqs]
        lo, hi = min(slot_list), max(slot_list) + 1
        if T == 1 and hi - lo == B and len(set(starts)) == 1 and slot_list == sorted(slot_list):
            return self._decode_aligned(reqs, [c[0] for c in chunks], starts[0], lo)
        if T == 1 and B < hi - lo <= 2 * B and slot_list == sorted(slot_list):
            return self._decode_span(reqs, [c[0] for c in chunks], starts, lo, hi)
        idx = torch.tensor([c + [0] * (T - len(c)) for c in chunks], device=self.device)
        offs = torch.arange(T, device=self.device)
        positions = (torch.tensor(starts, device=self.device)[:, None] + offs).clamp(max=self.max_len - 1)
        lengths = torch.tensor([len(c) for c in chunks], device=self.device)
        valid = offs[None, :] < lengths[:, None] if any(len(c) < T for c in chunks) else None
        slots = torch.tensor(slot_list, device=self.device)
        first = slot_list[0] if slot_list == list(range(slot_list[0], slot_list[0] + B)) else None
        same = valid is None and len(set(starts)) == 1 and starts[0] + T <= self.max_len
        view = self.cache.view(slots, positions, valid, first_slot=first, start=starts[0] if same else None,
                               length=min(self.max_len, max(starts) + T))
        with self.autocast():
            logits = self.model(idx, input_pos=positions, cache=view)
        return logits[torch.arange(B, device=self.device), lengths - 1].float()

    def _decode_aligned(self, reqs: list[Request], tokens: list[int], start: int, lo: int) -> torch.Tensor:
        """Decode rows in consecutive slots lo, lo+1, ... all at position start (always so at batch 1): the
        cache is read and written as slices and no mask is needed, so the step builds one small tensor
        (per-step Python and tensor set-up is most of the cost of a small model's decode step)."""
        B = len(reqs)
        idx = torch.tensor(tokens, device=self.device).view(B, 1)
        positions = self._position(start).expand(B, 1)
        view = self.cache.view(self._slot_range(lo, B), positions, first_slot=lo, start=start, length=start + 1)
        with self.autocast():
            logits = self.model(idx, input_pos=positions, cache=view)
        return logits[:, -1].float()

    def _position(self, p: int) -> torch.Tensor:
        """The (1, 1) tensor [[p]], made once per position (each decode step needs one)."""
        t = self._positions.get(p)
        if t is None:
            t = self._positions[p] = torch.tensor([[p]], device=self.device)
        return t

    def _slot_range(self, lo: int, n: int) -> torch.Tensor:
        return self._all_slots[lo : lo + n]

    def _decode_span(self, reqs: list[Request], tokens: list[int], starts: list[int], lo: int, hi: int
                     ) -> torch.Tensor:
        """Decode rows whose slots lie in lo..hi-1 with a few gaps (requests that finished): one row per slot
        of the range, gaps as padding (they write the scratch slot), so keys are read as a slice of the
        cache rather than gathered; the gaps' wasted compute is cheaper than the copy."""
        row = {r.slot: i for i, r in enumerate(reqs)}
        span = range(lo, hi)
        idx = torch.tensor([[tokens[row[s]] if s in row else 0] for s in span], device=self.device)
        positions = torch.tensor([[starts[row[s]] if s in row else 0] for s in span], device=self.device)
        valid = torch.tensor([[s in row] for s in span], device=self.device)
        view = self.cache.view(torch.arange(lo, hi, device=self.device), positions, valid, first_slot=lo,
                               length=max(starts) + 1)
        with self.autocast():
            logits = self.model(idx, input_pos=positions, cache=view)
        return logits[torch.tensor([r.slot - lo for r in reqs], device=self.device), -1].float()

    def _compiled_decode(self, reqs: list[Request], tokens: list[int], starts: list[int]) -> torch.Tensor:
        from scratchllm.infer.compile import decode_step  # lazy: compile.py imports Engine from here

        B = len(reqs)
        width = 1 << (B - 1).bit_length()  # bucket: padding rows write the scratch slot
        pad = width - B
        idx = torch.tensor([tokens + [0] * pad], device=self.device).T
        positions = torch.tensor([starts + [0] * pad], device=self.device).T
        slots = torch.tensor([r.slot for r in reqs] + [self.cache.scratch] * pad, device=self.device)
        valid = (torch.arange(width, device=self.device) < B)[:, None]
        with self.autocast():
            logits = decode_step(self.model, idx, positions, self.cache.k, self.cache.v, slots, valid,
                                 self.cache.scratch)
        return logits[:B, -1].float()

    def _safe_forward(self, reqs: list[Request], chunks: list[list[int]]) -> tuple[list[Request], torch.Tensor | None]:
        """The batch's logits; if the batched forward fails, each row alone, failing only the rows that fail."""
        try:
            return reqs, self._forward(reqs, chunks)
        except Exception:  # noqa: BLE001 - isolate the failing request(s) below
            ok, rows = [], []
            for r, c in zip(reqs, chunks):
                try:
                    rows.append(self._forward([r], [c]))
                    ok.append(r)
                except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                    self._fail(r, e)
            return ok, (torch.cat(rows) if rows else None)

    def _decode(self, reqs: list[Request], events: list) -> None:
        reqs, logits = self._safe_forward(reqs, [[r.seq[-1]] for r in reqs])
        for r in reqs:
            r.cached += 1
        if logits is not None:
            self._sample_and_emit(reqs, logits, events)

    def _prefill(self, events: list) -> None:
        budget, reqs, chunks = self.prefill_chunk, [], []
        for r in self.prefilling:
            if budget <= 0:
                break
            n = min(len(r.prompt) - r.cached, budget)
            reqs.append(r)
            chunks.append(r.prompt[r.cached : r.cached + n])
            budget -= n
        reqs, logits = self._safe_forward(reqs, chunks)
        if logits is None:
            return
        done, rows = [], []
        for i, (r, c) in enumerate(zip(reqs, chunks)):
            r.cached += len(c)
            if r.cached == len(r.prompt):
                done.append(r)
                rows.append(i)
        for r in done:
            self.prefilling.remove(r)
            self.running.append(r)
        if done:
            self._sample_and_emit(done, logits[rows], events)

    # --- sampling and output ------------------------------------------------------------------------

    def _sample_and_emit(self, reqs: list[Request], logits: torch.Tensor, events: list) -> None:
        logprobs = logits.log_softmax(-1)  # of the model itself (OpenAI's and vLLM's default)
        processed = logits
        if any(r.seen is not None or r.counts is not None for r in reqs):
            processed = logits.clone()
            for i, r in enumerate(reqs):
                if r.seen is not None or r.counts is not None:
                    seen = None if r.seen is None else r.seen[None]
                    counts = None if r.counts is None else r.counts[None]
                    processed[i] = apply_penalties(logits[i : i + 1], seen, counts, r.params)[0]
        sampled = sample_rows(processed, [r.params for r in reqs], [r.generator for r in reqs])
        tokens, chosen = sampled.tolist(), logprobs.gather(1, sampled[:, None])[:, 0].tolist()
        k = max(r.params.logprobs for r in reqs)
        top = logprobs.topk(min(k, logprobs.size(-1)), dim=-1) if k else None
        now = time.monotonic()
        for i, (r, tok) in enumerate(zip(reqs, tokens)):
            alts = None
            if r.params.logprobs and top is not None:
                n = r.params.logprobs
                alts = list(zip(top.indices[i, :n].tolist(), top.values[i, :n].tolist()))
            try:
                self._emit(r, tok, chosen[i], alts, now, events)
            except Exception as e:  # noqa: BLE001 - e.g. a failing callback: this request fails, not the batch
                self._fail(r, e)

    def _emit(self, r: Request, tok: int, logprob: float, alts: list | None, now: float, events: list) -> None:
        self.metrics.token(r, now)
        r.last_token_time = now
        r.seq.append(tok)
        r.tokens.append(tok)
        r.logprobs.append(logprob)
        if alts is not None:
            r.top_logprobs.append(alts)
        if r.seen is not None:
            r.seen[tok] = True
        if r.counts is not None:
            r.counts[tok] += 1
        text = r.checker.push(tok)
        out = [Delta(tok, text, r.checker.finish_reason, logprob, alts)]
        if r.checker.finish_reason is None and len(r.tokens) >= r.params.max_new_tokens:
            out.append(Delta(None, r.checker.flush(), "length"))
        finish = out[-1].finish_reason
        if finish is not None:
            r.finish_reason = finish
            self._release(r)
            self.metrics.finished(r)
        for d in out:
            events.append((r, d))
            if r.on_delta is not None:
                r.on_delta(r, d)
        if finish is not None and r.on_delta is not None:
            r.on_delta(r, None)

    # --- one-shot helpers ---------------------------------------------------------------------------

    def run(self, reqs: list[Request]) -> None:
        """Step until every request in reqs is done."""
        while not all(r.done for r in reqs):
            self.step()

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        """Completions of prompts, batched (the API for RL rollouts and evaluation).

        One SamplingParams for all: a seeded row i uses seed + i, so row 0 samples what that prompt
        samples alone. A list: one per prompt, as given. A failed request raises its error.
        """
        if isinstance(params, SamplingParams):
            params = [params if params.seed is None else _with_seed(params, params.seed + i)
                      for i in range(len(prompts))]
        if len(params) != len(prompts):
            raise ScratchError(f"generate: {len(prompts)} prompts but {len(params)} sampling parameters")
        for p, sp in zip(prompts, params):
            self.check(p, sp)
        # Repeated prompts (RL rollouts' group of samples per prompt): the first copy of each prompt is
        # prefilled first, then the repeats are admitted and copy its keys/values (prefix caching),
        # prefilling one token instead of the whole prompt. Admitted together, none would find a copy.
        seen: set[tuple[int, ...]] = set()
        first: list[int] = []
        repeats: list[int] = []
        for i, p in enumerate(prompts):
            (repeats if tuple(p) in seen else first).append(i)
            seen.add(tuple(p))
        if not self.prefix_caching:
            first, repeats = list(range(len(prompts))), []
        with _eval_mode(self.model):
            by_index = {i: self.add(prompts[i], params[i]) for i in first}
            if repeats:
                while any(not r.done and (r.slot is None or r in self.prefilling) for r in by_index.values()):
                    self.step()
                by_index.update({i: self.add(prompts[i], params[i]) for i in repeats})
            reqs = [by_index[i] for i in range(len(prompts))]
            self.run(reqs)
        for r in reqs:
            if r.error is not None:
                raise r.error
        return [r.completion() for r in reqs]

    def stream(self, prompt: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Deltas of one request as they come (the engine steps while the caller iterates); closing the
        iterator cancels the request."""
        req = self.add(prompt, params)
        try:
            with _eval_mode(self.model):
                while not req.done:
                    for r, d in self.step():
                        if r is req:
                            yield d
            if req.error is not None:
                raise req.error
        finally:
            if not req.done:
                req.cancel()
                self._reap()


def check_request(model: Any, prompt: list[int], params: SamplingParams, max_len: int | None = None) -> None:
    """ScratchError unless prompt + params can run on model in max_len positions (default: its context)."""
    params.validate()
    vocab, ctx = model.cfg.vocab_size, model.cfg.context_length
    max_len = max_len or ctx
    if not prompt:
        raise ScratchError("generate: the prompt is empty", "start prompts with at least one token, e.g. <|bos|>")
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise ScratchError(f"generate: the prompt has token ids outside the vocabulary (0..{vocab - 1})",
                           "encode prompts with the model's tokenizer")
    if len(prompt) + params.max_new_tokens > max_len:
        raise ScratchError(
            f"generate: prompt of {len(prompt)} tokens + max_new_tokens={params.max_new_tokens} exceeds "
            f"{max_len} tokens (the model's context_length is {ctx})", "shorten the prompt or lower max_new_tokens")


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y or n >= limit:
            break
        n += 1
    return n


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    return replace(params, seed=seed)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
