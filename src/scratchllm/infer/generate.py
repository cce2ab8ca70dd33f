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


__all__ = ["Completion", "Delta", "SamplingParams", "complete", "engine_for", "generate", "stream"]
