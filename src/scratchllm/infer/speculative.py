"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k tokens,
the target model checks all of them in one forward pass.

    draft:  k cheap forwards, one token each  -> d_1..d_k with draft distributions p_1..p_k
    target: one forward over [last, d_1..d_k]  -> target distributions q_1..q_{k+1}
    accept d_i with probability min(1, q_i(d_i) / p_i(d_i)); at the first rejection emit a token drawn
    from normalise(max(0, q_i - p_i)) and stop; if all k are accepted emit a bonus token from q_{k+1}.

This rule makes every emitted token exactly target-distributed, whatever the draft. With temperature 0
the distributions are one-hot, so it reduces to "accept while the draft's token is the target's argmax":
the output equals the target's own greedy output. Rolling back rejected tokens costs nothing: later
writes overwrite their cache positions and attention never reads past the newest one.

One request at a time (batch 1): the draft/verify rounds of different requests accept different
numbers of tokens, and on a CPU a continuous batch already keeps the cores busy, so the engine's
batching and speculation are not combined (the CLI's --draft and benchmarks/inference.py use this).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.cache import KVCache
from scratchllm.infer.engine import check_request
from scratchllm.infer.sampling import Completion, Delta, SamplingParams, StopChecker, filter_logits


def _probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Sampling distribution(s) from logits (..., V): one-hot argmax at temperature 0."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return filter_logits(logits, params).softmax(-1)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def accept_reject(
    draft_tokens: list[int], draft_probs: torch.Tensor, target_probs: torch.Tensor, generator: torch.Generator | None
) -> list[int]:
    """The tokens to emit: the accepted prefix of draft_tokens plus one token from the target.

    draft_probs (k, V) are the distributions the draft tokens were drawn from; target_probs (k+1, V).
    """
    for i, d in enumerate(draft_tokens):
        q, p = float(target_probs[i, d]), float(draft_probs[i, d])
        u = float(torch.rand((), generator=generator))
        if q >= p or u < q / p:  # q >= p: always accept (also covers the one-hot greedy case)
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp(min=0)
        if residual.sum() <= 0:  # only possible through rounding: fall back to the target itself
            residual = target_probs[i]
        return draft_tokens[:i] + [_draw(residual / residual.sum(), generator)]
    return draft_tokens + [_draw(target_probs[-1], generator)]


@torch.inference_mode()
def speculative_steps(
    target: Any, draft: Any, prompt: list[int], params: SamplingParams, k: int = 4
) -> Iterator[list[int]]:
    """Yield lists of newly emitted tokens (1..k+1 per round) until max_new_tokens; close to stop early."""
    check_request(target, prompt, params)
    check_request(draft, prompt, params)
    if k < 1:
        raise ScratchError(f"speculative decoding: k must be at least 1, got {k}", "use e.g. k=4")
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ScratchError(
            f"speculative decoding: draft vocab_size={draft.cfg.vocab_size} differs from the target's "
            f"{target.cfg.vocab_size}", "use a draft model trained with the same tokenizer")
    if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        raise ScratchError("speculative decoding does not apply repetition/frequency/presence penalties",
                           "drop the penalties or generate without a draft model")
    device = target.tok_emb.weight.device
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    L, total = len(prompt), len(prompt) + params.max_new_tokens
    modes = (target.training, draft.training)
    target.eval(), draft.eval()
    caches = {id(target): KVCache.for_model(target, 1, total), id(draft): KVCache.for_model(draft, 1, total)}
    slot = torch.zeros(1, dtype=torch.long, device=device)

    def forward(model: Any, tokens: list[int], start: int) -> torch.Tensor:
        x = torch.tensor([tokens], device=device)
        pos = torch.arange(start, start + len(tokens), device=device)[None]
        return model(x, input_pos=pos, cache=caches[id(model)].view(slot, pos))[0]

    try:
        seq = list(prompt)
        first = _draw(_probs(forward(target, seq, 0)[-1], params), gen)
        seq.append(first)
        yield [first]
        draft_len = 0  # positions of seq held in the draft's cache
        while len(seq) < total:
            kk = min(k, total - len(seq) - 1)  # room for the k drafts and the bonus token
            if kk == 0:
                tok = _draw(_probs(forward(target, seq[-1:], len(seq) - 1)[-1], params), gen)
                seq.append(tok)
                yield [tok]
                continue
            drafts, dprobs = [], []
            logits = forward(draft, seq[draft_len:], draft_len)[-1]
            for i in range(kk):
                p = _probs(logits, params)
                d = _draw(p, gen)
                drafts.append(d)
                dprobs.append(p)
                if i + 1 < kk:
                    logits = forward(draft, [d], len(seq) + i)[-1]
            draft_len = len(seq) + kk - 1  # the draft has seen seq and d_1..d_{k-1}
            tprobs = _probs(forward(target, seq[-1:] + drafts, len(seq) - 1), params)
            new = accept_reject(drafts, torch.stack(dprobs), tprobs, gen)
            draft_len = min(draft_len, len(seq) + len(new) - 1)  # drop draft slots of rejected tokens
            seq += new
            yield new
    finally:
        target.train(modes[0]), draft.train(modes[1])


def speculative_stream(
    target: Any, draft: Any, prompt: list[int], params: SamplingParams, tokenizer: Any = None, k: int = 4
) -> Iterator[Delta]:
    """Like generate.stream, with a draft model; the last Delta carries finish_reason."""
    yield from stream_deltas(speculative_steps(target, draft, prompt, params, k), StopChecker(params, tokenizer))


def speculative_generate(
    target: Any, draft: Any, prompt: list[int], params: SamplingParams, tokenizer: Any = None, k: int = 4
) -> Completion:
    """One prompt's Completion via speculative decoding (see the module docstring)."""
    deltas = list(speculative_stream(target, draft, prompt, params, tokenizer, k))
    tokens = [d.token_id for d in deltas if d.token_id is not None]
    text = "".join(d.text for d in deltas) if tokenizer is not None else None
    return Completion(tokens, text, deltas[-1].finish_reason or "length")


def stream_deltas(steps: Iterator[Any], checker: StopChecker) -> Iterator[Delta]:
    """Deltas for the tokens a decoding loop yields (each step an iterable of ints); closes the loop when done."""
    try:
        for new in steps:
            for t in new:
                t = int(t)
                text = checker.push(t)
                if checker.finish_reason:
                    yield Delta(t, text, checker.finish_reason)
                    return
                yield Delta(t, text)
        yield Delta(None, checker.flush(), "length")
    finally:
        steps.close()
