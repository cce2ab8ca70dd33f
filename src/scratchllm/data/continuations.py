"""Synthetic documents sampled from a trained checkpoint: a prompt plus the model's continuation.

The model-free generators are ``corpus/synthetic.py``; this half needs the model and the inference
engine, so it belongs to the data stage (``data prepare``'s ``kind = "model"`` sources).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from scratchllm.corpus.embedded import Document, embedded_documents
from scratchllm.errors import ScratchError
from scratchllm.infer.generate import sample
from scratchllm.model.model import Transformer


def default_prompts(n: int = 64, chars: int = 200) -> list[str]:
    """Openings of embedded prose documents, cut at a word boundary."""
    out = []
    for doc in embedded_documents(["prose"]):
        text = doc.text[:chars]
        out.append(text[: text.rfind(" ")] if " " in text else text)
        if len(out) == n:
            break
    return out


def model_documents(
    checkpoint: str | Path,
    tokenizer,
    prompts: Sequence[str],
    count: int,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
    domain: str = "synthetic",
) -> Iterator[Document]:
    """Prompt + sampled continuation, ``count`` times (prompts are cycled)."""
    if not Path(checkpoint).exists():
        raise ScratchError(f"model checkpoint not found: {checkpoint}", "train a model first, or fix 'checkpoint'")
    model = Transformer.from_pretrained(checkpoint)
    model.eval()
    prompts = list(prompts) or default_prompts()
    chunk = 64  # continuations sampled as one engine batch; documents are yielded chunk by chunk
    for start in range(0, count, chunk):
        texts = [prompts[i % len(prompts)] for i in range(start, min(count, start + chunk))]
        ids = [tokenizer.encode(t) or [tokenizer.eos_id] for t in texts]
        news = sample(model, ids, max_new_tokens, temperature, top_k, seed + start, stop_id=tokenizer.eos_id)
        for i, (prompt, new) in enumerate(zip(texts, news), start):
            yield Document(prompt + tokenizer.decode(new), domain, f"model:{Path(checkpoint).name}#{i}")
