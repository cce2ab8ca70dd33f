from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from scratchllm.corpus.embedded import embedded_text  # noqa: E402
from scratchllm.eval.lm import LanguageModel, ScratchLM  # noqa: E402
from scratchllm.model.hf import export_hf  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.tokenizer import train_bpe  # noqa: E402

CONTEXT = 64  # short on purpose: perplexity documents span several windows


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe(embedded_text(max_bytes_per_domain=60_000).split("\n\n"), 512)


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=CONTEXT, d_model=64, n_layers=2,
                      n_heads=4, n_kv_heads=2, d_ff=128)
    return Transformer(cfg).eval()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tiny_model, tokenizer) -> dict[str, Path]:
    """{'ours': our format + tokenizer, 'hf': the same model exported to HF Llama format}."""
    root = tmp_path_factory.mktemp("models")
    ours = root / "ours"
    tiny_model.save_pretrained(ours)
    tokenizer.save_pretrained(ours)
    hf = export_hf(tiny_model, root / "hf", tokenizer)
    return {"ours": ours, "hf": hf}


@pytest.fixture(scope="session")
def lm(tiny_model, tokenizer) -> ScratchLM:
    return ScratchLM(tiny_model, tokenizer)


class ScriptedLM(LanguageModel):
    """Generation from a function of the prompt; a character-level 'tokenizer'. For pipeline tests."""

    name = "scripted"
    max_length = 4096
    vocab_size = 256

    def __init__(self, reply) -> None:
        self.reply = reply
        self.prompts: list[str] = []
        self.max_tokens: list[int] = []

    def encode(self, text: str) -> list[int]:
        return [min(ord(c), 255) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    @property
    def prefix_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int | None:
        return None

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, 256)

    def generate(self, prompt, max_tokens=256, stop=(), temperature=0.0, top_p=1.0, n=1, seed=0, chat=False):
        self.prompts.append(f"<chat>{prompt}" if chat else prompt)
        self.max_tokens.append(max_tokens)
        return [self.reply(prompt, i) for i in range(n)]


@pytest.fixture
def scripted():
    return ScriptedLM
