"""Loading what the inspect commands look at: a model directory or training checkpoint, and its tokenizer.

Where they are is decided by scratchllm.model.paths, the one resolver every command uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.infer.load import load_model as load_any
from scratchllm.model.paths import require_tokenizer
from scratchllm.tokenizer import Tokenizer


def load_model(path: str | Path) -> Any:
    """The model in eval mode on the CPU, its weights in fp32 (inspection wants exact numbers, not speed)."""
    return load_any(path, full_precision_for="inspect").float()


def find_tokenizer(model_path: str | Path, tokenizer_path: str | Path | None) -> Path:
    """The tokenizer given, else the one every command finds for this model (scratchllm.model.paths)."""
    return Path(tokenizer_path) if tokenizer_path is not None else require_tokenizer(model_path)


def load_tokenizer(path: str | Path) -> Any:
    return Tokenizer.load(path)


def load_model_and_tokenizer(model_path: str | Path, tokenizer_path: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer), refusing a tokenizer whose ids the model has no embedding for."""
    model = load_model(model_path)
    tok = load_tokenizer(find_tokenizer(model_path, tokenizer_path))
    check_match(model, tok)
    return model, tok


def check_match(model: Any, tok: Any) -> None:
    if tok.vocab_size > model.cfg.vocab_size:
        raise ScratchError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's embedding only {model.cfg.vocab_size}: "
            "they do not belong together",
            "pass the tokenizer the model was trained with (--tokenizer), or the model trained with this tokenizer",
        )
