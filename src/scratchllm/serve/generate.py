"""Text generation with a static KV cache: sampling, stop conditions, batching with left padding, streaming.

    prompts -> left-pad to one length -> prefill (one forward over the prompts, fills the cache)
            -> repeat: logits of the last position -> penalties -> temperature -> top-k/top-p/min-p -> sample
                       -> feed the sampled token back (one position per step, attention reads the cache)

Every row of a batch computes exactly what it would alone (padding is masked out and positions start
at each row's first real token), so batching changes speed, not results. A seeded row i uses its own
generator seeded with ``seed + i``: row 0 of a batch samples what the same prompt samples alone.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchllm.errors import ScratchError


GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM): logits / 1e-45 overflow float32
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # signed 64-bit; torch's generators take seed + row up to 2**64 - 1
REPETITION_PENALTY_RANGE = (0.01, 100.0)  # logits are divided or multiplied by it: keep them finite in float32
PENALTY_RANGE = (-100.0, 100.0)  # frequency/presence: finite logits (the server keeps OpenAI's [-2, 2])


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop. Defaults: plain sampling at temperature 1."""

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 (anything below GREEDY_BELOW): greedy (argmax)
    top_k: int = 0  # 0: off; else keep the k most likely tokens
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    min_p: float = 0.0  # keep tokens with probability >= min_p * (probability of the most likely token)
    repetition_penalty: float = 1.0  # CTRL/HF: divide positive (multiply negative) logits of seen tokens
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency_penalty * count in the generated text
    presence_penalty: float = 0.0  # OpenAI: logit -= presence_penalty if generated at least once
    stop: list[str] = field(default_factory=list)  # stop strings (need a tokenizer); not part of the text
    stop_token_ids: list[int] = field(default_factory=list)  # also stop at the tokenizer's <|eos|> unless ignore_eos
    ignore_eos: bool = False
    skip_special_tokens: bool = True  # as vLLM and HF decode: control tokens (<|end|>, ...) are not text
    seed: int | None = None  # None: torch's global random state

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def validate(self) -> None:
        """Every value within the range the sampling maths can take (NaN fails every comparison)."""
        lo, hi = REPETITION_PENALTY_RANGE
        plo, phi = PENALTY_RANGE
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}"),
            (0 <= self.temperature < float("inf"), f"temperature must be finite and >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 turns it off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (lo <= self.repetition_penalty <= hi,
             f"repetition_penalty must be in [{lo}, {hi}], got {self.repetition_penalty}"),
            (plo <= self.frequency_penalty <= phi,
             f"frequency_penalty must be in [{plo}, {phi}], got {self.frequency_penalty}"),
            (plo <= self.presence_penalty <= phi,
             f"presence_penalty must be in [{plo}, {phi}], got {self.presence_penalty}"),
            (self.seed is None or SEED_MIN <= self.seed <= SEED_MAX,
             f"seed must be a signed 64-bit integer ({SEED_MIN}..{SEED_MAX}), got {self.seed}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ScratchError(f"sampling: {message}", "see SamplingParams in scratchllm.serve.generate")


@dataclass
class Completion:
    """One generated continuation. tokens include a final stop token (useful for RL: the model learns
    to stop); text, when a tokenizer was given, excludes stop tokens and stop strings."""

    tokens: list[int]
    text: str | None
    finish_reason: str  # "stop" (stop token or string) | "length" (max_new_tokens reached)


@dataclass
class Delta:
    """One streaming step: the sampled token (None on a final flush) and the text that became final."""

    token_id: int | None
    text: str
    finish_reason: str | None = None


# --- logits processing ---------------------------------------------------------------------------


def apply_penalties(logits: torch.Tensor, seen: torch.Tensor | None, counts: torch.Tensor | None,
                    params: SamplingParams) -> torch.Tensor:
    """Repetition penalty over prompt + generated tokens (seen, bool (B, V)); frequency/presence
    penalties over generated tokens only (counts, (B, V)), as OpenAI and vLLM define them."""
    if seen is not None and params.repetition_penalty != 1.0:
        p = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    if counts is not None and (params.frequency_penalty or params.presence_penalty):
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).float()
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p (the order Hugging Face applies them); removed tokens get -inf."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - params.top_p
        drop[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if params.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Next token per row of processed logits (B, V) float: argmax at temperature ~0, else a draw."""
    if params.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, params).softmax(-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])


# --- the decoding loop ---------------------------------------------------------------------------


def _check_prompts(model: Any, prompts: list[list[int]], params: SamplingParams) -> None:
    params.validate()
    if not prompts:
        raise ScratchError("generate: no prompts given", "pass a list of token-id lists")
    ctx, vocab = model.cfg.context_length, model.cfg.vocab_size
    for i, p in enumerate(prompts):
        if not p:
            raise ScratchError(f"generate: prompt {i} is empty", "start prompts with at least one token, e.g. <|bos|>")
        if min(p) < 0 or max(p) >= vocab:
            raise ScratchError(f"generate: prompt {i} has token ids outside the vocabulary (0..{vocab - 1})",
                               "encode prompts with the model's tokenizer")
    longest = max(len(p) for p in prompts)
    if longest + params.max_new_tokens > ctx:
        raise ScratchError(
            f"generate: prompt of {longest} tokens + max_new_tokens={params.max_new_tokens} exceeds the model's "
            f"context_length={ctx}",
            "shorten the prompt or lower max_new_tokens",
        )


def _generators(params: SamplingParams, n: int, device: torch.device) -> list[torch.Generator] | None:
    if params.seed is None or params.greedy:
        return None
    return [torch.Generator(device=device).manual_seed(params.seed + i) for i in range(n)]


@torch.inference_mode()
def decode_steps(model: Any, prompts: list[list[int]], params: SamplingParams,
                 compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield the sampled tokens (B,) step by step, up to max_new_tokens steps; close it to stop early.

    The KV cache lives for the duration of the iteration and is dropped afterwards (also on close or error).
    compile=True decodes with the torch.compile'd step of scratchllm.serve.compile (static cache of
    context_length slots; the first call per model shape and batch size compiles, which takes seconds).
    """
    _check_prompts(model, prompts, params)
    device = model.tok_emb.weight.device
    B, L = len(prompts), max(len(p) for p in prompts)
    pads = [L - len(p) for p in prompts]
    idx = torch.tensor([[0] * n + p for n, p in zip(pads, prompts)], device=device)
    pad = torch.tensor(pads, device=device) if any(pads) else None
    V = model.cfg.vocab_size
    seen = counts = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, p] = True
    if params.frequency_penalty or params.presence_penalty:
        counts = torch.zeros(B, V, device=device)
    generators = _generators(params, B, device)
    was_training = model.training
    model.eval()
    if compile:
        from scratchllm.serve.compile import decode_step

        model.setup_cache(B, model.cfg.context_length, device=device, static=True)
    else:
        model.setup_cache(B, L + params.max_new_tokens, device=device)
    try:
        logits = model(idx, input_pos=torch.arange(L, device=device), pad=pad)[:, -1]  # prefill: always eager
        for step in range(params.max_new_tokens):
            logits = apply_penalties(logits.float(), seen, counts, params)
            tok = sample(logits, params, generators)
            if seen is not None:
                seen[torch.arange(B), tok] = True
            if counts is not None:
                counts[torch.arange(B), tok] += 1
            yield tok
            if step + 1 < params.max_new_tokens:
                pos = torch.tensor([L + step], device=device)
                if compile:
                    logits = decode_step(model, tok[:, None], pos, pad)[:, -1]
                else:
                    logits = model(tok[:, None], input_pos=pos, pad=pad)[:, -1]
    finally:
        model.clear_cache()
        model.train(was_training)


class StopChecker:
    """Per-sequence stop logic and incremental detokenization.

    Text is decoded with an incremental UTF-8 decoder (a character split across tokens appears once
    complete) and the last len(longest stop string) - 1 characters are held back, since they could
    be the start of a stop string, so streamed text never has to be taken back.
    """

    def __init__(self, params: SamplingParams, tokenizer: Any = None) -> None:
        if params.stop and tokenizer is None:
            raise ScratchError("generate: stop strings need a tokenizer", "pass tokenizer=... or use stop_token_ids")
        self.tokenizer = tokenizer
        self.stop_ids = set(params.stop_token_ids)
        if tokenizer is not None and not params.ignore_eos and "<|eos|>" in tokenizer.special_tokens:
            self.stop_ids.add(tokenizer.eos_id)
        self.stops = list(params.stop)
        self.hidden = set(tokenizer.special_tokens.values()) if tokenizer is not None and params.skip_special_tokens \
            else set()
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0  # characters of text already handed out
        self.tokens: list[int] = []
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        """Add a generated token; return the text that became final. Sets finish_reason on a stop."""
        self.tokens.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return self.flush()
        if self.tokenizer is None or token in self.hidden:
            return ""
        start = max(0, len(self.text) - self.hold)  # a stop string can only end in the new text
        self.text += self.decoder.decode(self.tokenizer.id_to_bytes(token))
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.finish_reason = "stop"
            return self.flush(final=False)
        out = self.text[self.sent : max(self.sent, len(self.text) - self.hold)]
        self.sent += len(out)
        return out

    def flush(self, final: bool = True) -> str:
        """Everything not yet handed out (at the end of generation)."""
        if self.tokenizer is not None and final:
            self.text += self.decoder.decode(b"", final=True)
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


def complete(model: Any, prompts: list[list[int]], params: SamplingParams, tokenizer: Any = None,
             compile: bool = False) -> list[Completion]:
    """Generate a continuation of each prompt (a batch, left-padded); see Completion. compile: see decode_steps."""
    checkers = [StopChecker(params, tokenizer) for _ in prompts]
    steps = decode_steps(model, prompts, params, compile)
    for tok in steps:
        for c, t in zip(checkers, tok.tolist()):
            if c.finish_reason is None:
                c.push(t)
        if all(c.finish_reason for c in checkers):
            steps.close()
            break
    out = []
    for c in checkers:
        if c.finish_reason is None:
            c.flush()
        text = c.text if tokenizer is not None else None
        out.append(Completion(c.tokens, text, c.finish_reason or "length"))
    return out


def generate(model: Any, prompts: list[list[int]], params: SamplingParams, tokenizer: Any = None,
             compile: bool = False) -> list[list[int]]:
    """New token ids per prompt (batched, KV cache), ending with the stop token when one was sampled.

    With a tokenizer, its <|eos|> stops generation too (unless params.ignore_eos) and stop strings work.
    compile=True: the torch.compile'd decode step (see decode_steps).
    """
    return [c.tokens for c in complete(model, prompts, params, tokenizer, compile)]


def stream(model: Any, prompt: list[int], params: SamplingParams, tokenizer: Any = None,
           compile: bool = False) -> Iterator[Delta]:
    """Generate for one prompt, yielding a Delta per sampled token; the last one carries finish_reason."""
    yield from stream_deltas(decode_steps(model, [prompt], params, compile), StopChecker(params, tokenizer))


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
