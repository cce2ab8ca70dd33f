"""One-call generation on a fresh engine (batched): complete / generate / stream.

Each call builds an Engine with one KV-cache slot per prompt, sized to the longest prompt plus
max_new_tokens (compile=True: the whole context, the shape the compiled step is built for), and runs
it to the end. Long-lived users (the server) keep one Engine and add requests to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.infer.engine import Engine, check_request
from scratchllm.infer.sampling import Completion, Delta, SamplingParams, StopChecker


def engine_for(model: Any, prompts: list[list[int]], params: SamplingParams, tokenizer: Any = None,
               compile: bool = False, autocast: Any = None) -> Engine:
    """An engine with one slot per prompt and just enough positions for these prompts."""
    if not prompts:
        raise ScratchError("generate: no prompts given", "pass a list of token-id lists")
    StopChecker(params, tokenizer)  # stop strings without a tokenizer: say so first
    for p in prompts:
        check_request(model, p, params)
    longest = max(len(p) for p in prompts) + params.max_new_tokens
    ctx = model.cfg.context_length
    return Engine(model, tokenizer, max_slots=len(prompts), max_len=ctx if compile else longest, compile=compile,
                  autocast=autocast)


def complete(model: Any, prompts: list[list[int]], params: SamplingParams, tokenizer: Any = None,
             compile: bool = False, autocast: Any = None) -> list[Completion]:
    """A Completion per prompt, generated as one continuous batch. A seeded row i uses seed + i.

    With a tokenizer, its <|eos|> stops generation too (unless params.ignore_eos) and stop strings work.
    """
    return engine_for(model, prompts, params, tokenizer, compile, autocast).generate(prompts, params)


def generate(model: Any, prompts: list[list[int]], params: SamplingParams, tokenizer: Any = None,
             compile: bool = False) -> list[list[int]]:
    """New token ids per prompt, ending with the stop token when one was sampled (see complete)."""
    return [c.tokens for c in complete(model, prompts, params, tokenizer, compile)]


def stream(model: Any, prompt: list[int], params: SamplingParams, tokenizer: Any = None,
           compile: bool = False) -> Iterator[Delta]:
    """Generate for one prompt, yielding a Delta per sampled token; the last one carries finish_reason."""
    yield from engine_for(model, [prompt], params, tokenizer, compile).stream(prompt, params)


def sample(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int, seed: int,
           stop_id: int | None = None, autocast=None, max_batch: int = 32) -> list[list[int]]:
    """Sampled continuations of prompts (temperature, then top-k; 0 = greedy), without the stop token.

    The one sampling call of the data and training stages (synthetic continuations, the Trainer's and
    the pipeline's samples), batched on the engine. Prompt i is seeded
    with seed + i. The engine's KV cache holds one context window: a prompt keeps its last
    context_length - 1 tokens and its continuation ends where the window does. ``autocast`` is a
    context-manager factory (bf16 under the Trainer).
    """
    ctx = model.cfg.context_length
    prompts = [p[-(ctx - 1):] for p in prompts]
    params = [SamplingParams(max_new_tokens=min(max_new_tokens, ctx - len(p)), temperature=temperature, top_k=top_k,
                             stop_token_ids=[] if stop_id is None else [stop_id], seed=seed + i)
              for i, p in enumerate(prompts)]
    longest = max(len(p) + sp.max_new_tokens for p, sp in zip(prompts, params))
    engine = Engine(model, max_slots=min(len(prompts), max_batch), max_len=longest, autocast=autocast)
    return [[t for t in c.tokens if t != stop_id] for c in engine.generate(prompts, params)]


__all__ = ["Completion", "Delta", "SamplingParams", "complete", "engine_for", "generate", "sample", "stream"]
