"""Sampling: per-request parameters, logits processors, the draw itself, and stop/detokenize logic.

    logits of the last position -> penalties -> temperature -> top-k/top-p/min-p -> sample (or argmax)

Rows of one batch may carry different parameters (continuous batching mixes requests): sample_rows
groups the rows that share their processing, so a batch of like requests costs a few batched ops.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import EOS


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
    logprobs: int = 0  # also report the top-n alternatives' log-probabilities at each step (0: only the chosen)

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
            (self.logprobs >= 0, f"logprobs must be >= 0, got {self.logprobs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ScratchError(f"sampling: {message}", "see SamplingParams in scratchllm.infer.sampling")


@dataclass
class Completion:
    """One generated continuation. tokens include a final stop token (useful for RL: the model learns
    to stop); text, when a tokenizer was given, excludes stop tokens and stop strings."""

    tokens: list[int]
    text: str | None
    finish_reason: str  # "stop" (stop token or string) | "length" (max_new_tokens reached)
    logprobs: list[float] = field(default_factory=list)  # log-probability of each token under the model
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per token, when params.logprobs
    prompt_tokens: int = 0


@dataclass
class Delta:
    """One streaming step: the sampled token (None on a final flush) and the text that became final."""

    token_id: int | None
    text: str
    finish_reason: str | None = None
    logprob: float | None = None  # of token_id under the model (raw logits, before penalties and temperature)
    top_logprobs: list[tuple[int, float]] | None = None  # the params.logprobs most likely tokens at this step


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
    if params.temperature != 1.0:  # dividing by 1 changes nothing: skip the op
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


def sample(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator | None] | None = None
           ) -> torch.Tensor:
    """Next token per row of processed logits (B, V) float: argmax at temperature ~0, else a draw
    (row i from generators[i] when given and not None, else torch's global random state)."""
    if params.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, params).softmax(-1)
    if generators is None or all(g is None for g in generators):
        return torch.multinomial(probs, 1).squeeze(-1)
    if len(generators) == 1:  # batch 1: multinomial itself is the cheaper call
        return torch.multinomial(probs, 1, generator=generators[0]).view(1)
    return draw(probs, generators)


def draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of probs (B, V), row i from generators[i] (None: torch's global random state).

    Exactly what torch.multinomial(probs[i], 1, generator=generators[i]) returns row by row (on CPU it
    is argmax(p / q) with q ~ Exp(1) drawn from the generator, the Gumbel-max trick), but with only the
    exponential draw per row: the division, the argmax and the validity check run once for the batch.
    multinomial's own per-call checks cost more than the draw at a small vocabulary, once per row."""
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")
    q = torch.empty_like(probs)
    for i, g in enumerate(generators):
        q[i].exponential_(1, generator=g)
    return (probs / q).argmax(-1)


def _processing_key(p: SamplingParams) -> tuple:
    return (0,) if p.greedy else (p.temperature, p.top_k, p.top_p, p.min_p)


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
                ) -> torch.Tensor:
    """Next token per row of logits (B, V) (penalties already applied), each row with its own params.

    Rows that share temperature/top-k/top-p/min-p are processed as one batch; each row's draw uses its
    own generator, so a seeded row samples the same whatever else is in the batch.
    """
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(_processing_key(p), []).append(i)
    if len(groups) == 1:  # the common case (and always at batch 1): no gather/scatter of rows
        return sample(logits, params[0], generators)
    out = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
    for rows in groups.values():
        idx = torch.tensor(rows, device=logits.device)
        out[idx] = sample(logits[idx], params[rows[0]], [generators[i] for i in rows])
    return out


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
        if tokenizer is not None and not params.ignore_eos and EOS in tokenizer.special_tokens:
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


