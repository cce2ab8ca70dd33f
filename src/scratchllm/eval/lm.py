"""One interface over the models we evaluate: ours (``Transformer``) and any Hugging Face causal LM.

A ``LanguageModel`` only has to provide ``logits(ids)`` and a tokenizer; log-likelihood scoring,
rolling (sliding-window) perplexity and a simple generation loop are built on top of that here, so
every backend is scored by exactly the same code.

Tokenization conventions follow lm-evaluation-harness, so our numbers can be checked against it:

* ``loglikelihood(context, continuation)``: trailing whitespace of the context moves to the
  continuation; ``context + continuation`` is encoded whole and the continuation tokens are the ones
  after ``len(encode(context))``; too-long inputs are truncated from the left to ``max_length + 1``.
  An empty context is replaced by the prefix token (BOS, else EOS).
* ``loglikelihood_rolling(text)``: the text's tokens are predicted in windows of ``max_length``
  tokens, the first conditioned on the prefix token; with ``stride < max_length`` every later window
  predicts only ``stride`` new tokens and keeps ``max_length - stride`` tokens of extra context.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from scratchllm.errors import ScratchError
from scratchllm.infer.engine import Engine
from scratchllm.infer.load import load_for_inference
from scratchllm.infer.sampling import SamplingParams, filter_logits
from scratchllm.model.checkpoint import check_vocab
from scratchllm.model.hf import import_hf
from scratchllm.model.paths import require_tokenizer, resolve_model_dir
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import BOS, END, EOS, encode_chat


@dataclass(frozen=True)
class GenerateRequest:
    """The arguments of one ``LanguageModel.generate`` call (for ``generate_batch``)."""

    prompt: str
    max_tokens: int = 256
    stop: Sequence[str] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    chat: bool = False


@dataclass(frozen=True)
class Score:
    """Log-probability of a continuation, whether greedy decoding would produce it, its token count."""

    logprob: float
    is_greedy: bool
    n_tokens: int


class LanguageModel:
    """Base class: subclasses set ``name``, ``max_length`` and implement the five methods below.

    ``logits`` gets right-padded token ids (B, T) and returns (B, T, vocab); positions after a row's
    true length are ignored, which is valid for causal models without an attention mask.
    """

    name: str = "model"
    max_length: int = 2048
    vocab_size: int = 0  # size of the output distribution
    info: dict[str, Any] = {}

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    @property
    def prefix_id(self) -> int:
        """The token that conditions the first token of a text (BOS, else EOS), as in lm-eval."""
        raise NotImplementedError

    @property
    def eos_id(self) -> int | None:
        raise NotImplementedError

    def prompt_ids(self, prompt: str, chat: bool = False) -> tuple[list[int], set[int]]:
        """The prompt's token ids and the ids that end a reply (EOS, plus end of turn with ``chat``)."""
        if chat:
            ids, ends = self.chat_prompt(prompt)
        else:
            ids, ends = self.encode(prompt) or [self.prefix_id], set()
        return ids, ends | ({self.eos_id} if self.eos_id is not None else set())

    def chat_prompt(self, prompt: str) -> tuple[list[int], set[int]]:
        """``prompt`` as one user turn in the model's chat template, ending in the generation prompt,
        and the token ids that end the assistant's reply. Only chat-tuned models implement it."""
        raise ScratchError(f"{self.name} has no chat template", "drop --chat for a base model")

    # --- scoring -------------------------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, split exactly as lm-eval does (see the module docstring)."""
        if not context:
            cont = self.encode(continuation)
            if cont and cont[0] == self.prefix_id:
                return cont[:1], cont[1:]
            return [self.prefix_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], batch_size: int = 16, progress: bool = False
    ) -> list[Score]:
        """log P(continuation | context) for each (context, continuation) pair."""
        pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        units = []
        for context, continuation in requests:
            if (context, continuation) not in pairs:
                pairs[context, continuation] = self.encode_pair(context, continuation)
            ctx, cont = pairs[context, continuation]
            if not cont or len(cont) > self.max_length:
                raise ScratchError(
                    f"continuation {continuation[:40]!r} encodes to {len(cont)} tokens "
                    f"(must be 1..{self.max_length}, the model's max length)",
                    "every answer choice must be non-empty text that fits in the context window",
                )
            units.append(((ctx + cont)[-(self.max_length + 1):][:-1], cont))
        return self.score_tokens(units, batch_size, progress)

    def loglikelihood_rolling(
        self, texts: Sequence[str], stride: int | None = None, batch_size: int = 16, progress: bool = False
    ) -> list[Score]:
        """log P(text) of whole texts with a sliding window; ``stride`` defaults to ``max_length``."""
        units: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            for window in rolling_windows(self.encode(text), self.prefix_id, self.max_length, stride):
                units.append(window)
                owner.append(i)
        scores = self.score_tokens(units, batch_size, progress)
        total = [0.0] * len(texts)
        count = [0] * len(texts)
        for i, s in zip(owner, scores, strict=True):
            total[i] += s.logprob
            count[i] += s.n_tokens
        return [Score(total[i], False, count[i]) for i in range(len(texts))]

    @torch.inference_mode()
    def score_tokens(
        self, units: Sequence[tuple[list[int], list[int]]], batch_size: int = 16, progress: bool = False
    ) -> list[Score]:
        """Score ``(input_ids, targets)`` units: the last ``len(targets)`` logits of the input predict them.

        Inputs are de-duplicated, and an input that is a prefix of another is read off the longer
        one's logits (one forward pass serves every single-token answer of a multiple-choice
        question, as in lm-eval, and more generally any shared prefix). The remaining sequences run
        longest first, right-padded in batches; log-softmax is taken only at the target positions.
        """
        for inp, tgt in units:
            if not inp or not tgt or len(tgt) > len(inp) or len(inp) > self.max_length:
                raise ValueError(f"bad scoring unit: {len(inp)} input and {len(tgt)} target tokens")
        host = _prefix_hosts([tuple(inp) for inp, _ in units])
        by_host: dict[tuple[int, ...], list[int]] = {}
        for u, (inp, _) in enumerate(units):
            by_host.setdefault(host[tuple(inp)], []).append(u)
        seqs = sorted(by_host, key=lambda s: (-len(s), s))
        results: list[Score | None] = [None] * len(units)
        bar = _progress(len(units), progress, "scoring")
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            width = len(chunk[0])
            batch = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, seq in enumerate(chunk):
                batch[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            logits = self.logits(batch)
            rows, cols, targets, members = [], [], [], []
            for b, seq in enumerate(chunk):
                for u in by_host[seq]:
                    inp, tgt = units[u]
                    first = len(inp) - len(tgt)
                    rows += [b] * len(tgt)
                    cols += range(first, len(inp))
                    targets += tgt
                    members.append(u)
            dev = logits.device
            picked = logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)].float()  # (N, vocab)
            tgt_t = torch.tensor(targets, device=dev)
            logprobs = torch.log_softmax(picked, dim=-1).gather(1, tgt_t[:, None])[:, 0]
            greedy = (picked.argmax(dim=-1) == tgt_t).cpu()
            logprobs = logprobs.double().cpu()
            offset = 0
            for u in members:
                n = len(units[u][1])
                results[u] = Score(
                    float(logprobs[offset:offset + n].sum()), bool(greedy[offset:offset + n].all()), n
                )
                offset += n
            bar.update(len(members))
        bar.close()
        return results  # type: ignore[return-value]

    # --- generation ------------------------------------------------------------------------------------

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[str]]:
        """``generate`` for each request; backends that batch (ScratchLM: one engine run) override it."""
        return [self.generate(**vars(r)) for r in requests]

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int = 0,
        chat: bool = False,
    ) -> list[str]:
        """``n`` completions of ``prompt`` (greedy when temperature is 0), cut at the first stop string.

        ``chat``: the prompt is sent as a user turn in the model's chat template and the reply ends
        at the template's end-of-turn token. A plain loop without a KV cache: every step re-runs the
        sequence, left-cropped to the context window (so prompt + output may exceed it).
        """
        prompt_ids, end_ids = self.prompt_ids(prompt, chat)
        gen = torch.Generator().manual_seed(seed)
        out: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n
        active = list(range(n))
        for _ in range(max_tokens):
            if not active:
                break
            window = self.max_length
            batch = torch.tensor([(prompt_ids + out[i])[-window:] for i in active], dtype=torch.long)
            last = self.logits(batch)[:, -1, :].float().cpu()
            nxt = sample_next(last, temperature, top_p, gen).tolist()
            still = []
            for i, tok in zip(active, nxt, strict=True):
                if tok in end_ids:
                    continue
                out[i].append(tok)
                texts[i] = self.decode(out[i])
                if not any(s in texts[i] for s in stop):
                    still.append(i)
            active = still
        return [cut_at_stop(t, stop) for t in texts]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """Greedy (temperature 0) or temperature + nucleus (top-p) sampling of one token per row, with the
    inference engine's processors (scratchllm.infer.sampling)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, SamplingParams(temperature=temperature, top_p=top_p)).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def cut_at_stop(text: str, stop: Iterable[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


def rolling_windows(
    tokens: list[int], prefix_id: int, max_length: int, stride: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, targets)`` windows that predict every token of ``tokens`` exactly once.

    The first window predicts up to ``max_length`` tokens after the prefix token; later windows are
    right-aligned ``max_length``-token inputs predicting the next ``stride`` tokens. With
    ``stride == max_length`` this is lm-eval's ``get_rolling_token_windows(..., context_len=1)``.
    """
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ScratchError(f"stride must be between 1 and the model's max length {max_length}, got {stride}")
    seq = [prefix_id, *tokens]  # seq[p] is predicted from seq[:p]
    windows = []
    start = 1
    end = min(len(seq), 1 + max_length)
    while start < len(seq):
        lo = max(0, end - 1 - max_length)
        windows.append((seq[lo:end - 1], seq[start:end]))
        start, end = end, min(len(seq), end + stride)
    return windows


def _prefix_hosts(keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Map each sequence to the longest sequence it is a prefix of (itself if none).

    In lexicographic order, a sequence that is a prefix of any other is directly followed by one of
    its extensions, so one backwards pass finds every host.
    """
    host: dict[tuple[int, ...], tuple[int, ...]] = {}
    nxt: tuple[int, ...] | None = None
    for s in sorted(set(keys), reverse=True):
        host[s] = host[nxt] if nxt is not None and nxt[: len(s)] == s else s
        nxt = s
    return host


def _progress(total: int, enabled: bool, desc: str):
    return tqdm(total=total, disable=not enabled, desc=desc, unit="req", leave=False)


# --- backends ---------------------------------------------------------------------------------------


class ScratchLM(LanguageModel):
    """Our ``Transformer`` with our BPE ``Tokenizer``."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "scratchllm", device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tok = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.max_length = model.cfg.context_length
        self.vocab_size = model.cfg.vocab_size
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ScratchError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.cfg.vocab_size}",
                "pass the tokenizer the model was trained with (--tokenizer)",
            )
        specials = tokenizer.special_tokens
        self._prefix = specials.get(BOS, specials.get(EOS))
        if self._prefix is None:
            raise ScratchError("the tokenizer has neither <|bos|> nor <|eos|>", "use a tokenizer with special tokens")
        self._eos = specials.get(EOS)
        self._special_ids = set(specials.values())
        self.info = {"backend": "scratchllm", "parameters": model.num_params(), "max_length": self.max_length}

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids.to(self.device))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        # generated text without control tokens, as transformers' skip_special_tokens=True
        return self.tok.decode([i for i in ids if i not in self._special_ids])

    @property
    def prefix_id(self) -> int:
        return self._prefix

    @property
    def eos_id(self) -> int | None:
        return self._eos

    def generate(self, prompt: str, max_tokens: int = 256, stop: Sequence[str] = (), temperature: float = 0.0,
                 top_p: float = 1.0, n: int = 1, seed: int = 0, chat: bool = False) -> list[str]:
        return self.generate_batch([GenerateRequest(prompt, max_tokens, stop, temperature, top_p, n, seed, chat)])[0]

    def generate_batch(self, requests: Sequence[GenerateRequest], max_batch: int = 64) -> list[list[str]]:
        """All requests' samples on one continuous-batching engine (scratchllm.infer; up to max_batch
        sequences at once; sample i of a request is seeded with its seed + i). A prompt that does not
        fit the context window with its max_tokens goes through the base class's sliding-window loop
        (no KV cache: every new token sees the last max_length tokens, as transformers' models do there)."""
        out: list[list[str] | None] = [None] * len(requests)
        rows: list[tuple[int, list[int], SamplingParams, set[int]]] = []
        for i, r in enumerate(requests):
            ids, ends = self.prompt_ids(r.prompt, r.chat)
            if len(ids) + r.max_tokens > self.max_length:
                out[i] = super().generate(**vars(r))
                continue
            for j in range(r.n):
                params = SamplingParams(max_new_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                                        stop=list(r.stop), stop_token_ids=sorted(ends), seed=r.seed + j)
                rows.append((i, ids, params, ends))
        if rows:
            longest = max(len(ids) + p.max_new_tokens for _, ids, p, _ in rows)
            engine = Engine(self.model, self.tok, max_slots=min(len(rows), max_batch), max_len=longest)
            done = engine.generate([ids for _, ids, _, _ in rows], [p for _, _, p, _ in rows])
            for (i, _, _, ends), c in zip(rows, done, strict=True):
                text = cut_at_stop(self.decode([t for t in c.tokens if t not in ends]), requests[i].stop)
                out[i] = (out[i] or []) + [text]
        return out  # type: ignore[return-value]

    def chat_prompt(self, prompt: str) -> tuple[list[int], set[int]]:
        if END not in self.tok.special_tokens:
            raise ScratchError(f"the tokenizer of {self.name} has no chat tokens", "drop --chat for a base model")
        ids, _ = encode_chat(self.tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        return ids, {self.tok.special_tokens[END]}


class TransformersLM(LanguageModel):
    """Any ``transformers`` causal LM directory, loaded with AutoModelForCausalLM / AutoTokenizer."""

    def __init__(self, directory: str | Path, device: str = "cpu", dtype: str = "float32",
                 max_length: int | None = None) -> None:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ScratchError(
                f"{directory} is a Hugging Face model directory, and evaluating it needs the transformers package",
                "pip install transformers (or install scratchllm with the [test] extra)",
            ) from None
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = Path(directory)
        try:
            self.tok = AutoTokenizer.from_pretrained(directory)
            self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype)).eval().to(device)
        except (OSError, ValueError, KeyError) as e:
            raise ScratchError(f"transformers could not load {directory}: {e}",
                               "check that the directory holds a complete model and tokenizer") from None
        self.name = directory.name
        self.device = torch.device(device)
        self.max_length = max_length or _hf_max_length(self.model.config, self.tok)
        self.vocab_size = int(self.model.config.vocab_size)
        self.info = {"backend": "transformers", "parameters": sum(p.numel() for p in self.model.parameters()),
                     "max_length": self.max_length, "model_type": getattr(self.model.config, "model_type", None)}

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids.to(self.device)).logits

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)  # the tokenizer's own default for special tokens, as lm-eval

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    @property
    def prefix_id(self) -> int:
        return self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id

    @property
    def eos_id(self) -> int | None:
        return self.tok.eos_token_id

    def chat_prompt(self, prompt: str) -> tuple[list[int], set[int]]:
        if not getattr(self.tok, "chat_template", None):
            raise ScratchError(f"the tokenizer of {self.name} has no chat_template", "drop --chat for a base model")
        ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=True)
        if not isinstance(ids, list):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
        # the reply ends at the generation config's eos ids (chat models often list their end-of-turn there)
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        # our exported chat models end a turn with <|end|>, which their generation config does not list
        end_turn = self.tok.convert_tokens_to_ids(END) if END in self.tok.get_vocab() else None
        return list(ids), ends | ({end_turn} if end_turn is not None else set())


def _hf_max_length(config: Any, tok: Any) -> int:
    """As lm-eval: the config's n_positions / max_position_embeddings / n_ctx, else the tokenizer's, else 2048."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    limit = getattr(tok, "model_max_length", None)
    return int(limit) if limit and limit < 1e12 else 2048


class EndpointLM(LanguageModel):
    """A model behind an OpenAI-compatible chat endpoint (e.g. ``scratchllm serve``): generation only.

    Each prompt is sent as one user message, so the server applies the model's chat template;
    generative, safety and judge tasks run, log-likelihood tasks cannot (the chat API has no
    scores for given text).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.name = f"{client.model}@{client.url.split('/')[2]}"
        self.info = {"backend": "openai-endpoint", "url": client.url, "served_model": client.model}

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        raise ScratchError(f"{self.name} is an endpoint: it generates text but gives no log-likelihoods",
                           "run perplexity, multiple-choice and code tasks on the model directory")

    def generate(self, prompt: str, max_tokens: int = 256, stop: Sequence[str] = (), temperature: float = 0.0,
                 top_p: float = 1.0, n: int = 1, seed: int = 0, chat: bool = False) -> list[str]:
        params: dict[str, Any] = {"top_p": top_p} if top_p < 1.0 else {}
        if stop:
            params["stop"] = list(stop)[:4]  # the OpenAI API takes at most four
        return [cut_at_stop(self.client.chat([{"role": "user", "content": prompt}], temperature=temperature,
                                             max_tokens=max_tokens, seed=seed + i, **params), stop)
                for i in range(n)]


# --- loading ----------------------------------------------------------------------------------------


def model_kind(directory: str | Path) -> str:
    """``"scratchllm"`` or ``"hf"`` from ``config.json``; a clear error for anything else."""
    directory = Path(directory)
    if not directory.exists():
        raise ScratchError(f"model directory not found: {directory}", "check the --model path")
    if not directory.is_dir():
        raise ScratchError(f"{directory} is not a model directory (it is a file)",
                           "pass the directory holding config.json and the weights")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ScratchError(
            f"{directory} is not a model directory: it has no config.json",
            "pass a directory written by scratchllm (config.json + model.safetensors) or a Hugging Face model directory",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchError(f"{config_path} is not valid JSON: {e}", "fix or re-create the model directory") from None
    if isinstance(config, dict) and "model_type" in config:
        return "hf"
    if isinstance(config, dict) and "d_model" in config and "vocab_size" in config:
        return "scratchllm"
    raise ScratchError(
        f"{directory} is not a model directory: config.json has neither 'model_type' (Hugging Face) "
        "nor scratchllm model fields (d_model, vocab_size)",
        "pass a directory written by 'scratchllm model init', training, or a Hugging Face export",
    )


def load_lm(
    directory: str | Path,
    tokenizer: str | Path | None = None,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "float32",
    name: str | None = None,
) -> LanguageModel:
    """Load ours or a Hugging Face model behind the ``LanguageModel`` interface.

    ``backend``: ``auto`` (ours for our directories, transformers for HF ones), ``scratchllm``
    (also imports a HF Llama directory into our Transformer, no transformers needed) or ``hf``.
    Our directories (plain or quantized) load through ``scratchllm.infer.load``, the loader every
    command uses. ``name`` labels the results (default: the model directory's name).
    """
    given = Path(directory)
    directory = resolve_model_dir(given) if given.is_dir() else given  # a run directory -> its model
    kind = model_kind(directory)
    if backend not in ("auto", "scratchllm", "hf"):
        raise ScratchError(f"unknown backend {backend!r}", "use auto, scratchllm or hf")
    if kind == "hf" and backend in ("auto", "hf"):
        if tokenizer is not None:
            raise ScratchError("--tokenizer is only for scratchllm model directories",
                               "a Hugging Face directory brings its own tokenizer")
        return TransformersLM(directory, device=device, dtype=dtype)
    if kind == "scratchllm" and backend == "hf":
        raise ScratchError(f"{directory} is a scratchllm directory, not a Hugging Face one",
                           "use --backend auto, or export it with 'scratchllm export hf'")
    if kind == "scratchllm":
        model, tok = load_for_inference(given, tokenizer, device)
        return ScratchLM(model, tok, name=name or directory.name, device=device)

    model = import_hf(directory)
    tok_path = Path(tokenizer) if tokenizer is not None else require_tokenizer(given, directory)
    tok = Tokenizer.load(tok_path)
    check_vocab(model.cfg.vocab_size, tok.vocab_size, f"the model in {directory}", f"the tokenizer in {tok_path}")
    return ScratchLM(model, tok, name=name or directory.name, device=device)


def perplexity(logprob: float, count: int) -> float:
    return math.exp(-logprob / count) if count else float("nan")
