"""Loading a model (plain or quantized) and its tokenizer for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.quantize import load_model
from scratchllm.model.checkpoint import check_vocab
from scratchllm.model.paths import require_tokenizer, resolve_model_dir
from scratchllm.tokenizer import Tokenizer


def check_device(device: str) -> str:
    """The device string, if torch can place a model there; else a ScratchError (not a traceback mid-load)."""
    hint = "use device=cpu" + (f" or cuda:0..cuda:{torch.cuda.device_count() - 1}" if torch.cuda.is_available() else "")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ScratchError(f"unknown device {device!r}", hint) from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ScratchError(f"device {device!r}: no CUDA GPU is available to this torch", hint)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ScratchError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here", hint)
        return device
    if dev.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ScratchError(f"device {device!r} is not available here", hint)


def load_for_inference(model_path: str | Path, tokenizer_path: str | Path | None = None,
                       device: str = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer). The tokenizer defaults to one saved inside the model directory."""
    check_device(device)
    model_dir = resolve_model_dir(model_path)
    model = load_model(model_dir, map_location=device).eval()
    if tokenizer_path is None:
        tokenizer_path = require_tokenizer(model_path, model_dir)
    tokenizer = Tokenizer.load(tokenizer_path)
    check_vocab(model.cfg.vocab_size, tokenizer.vocab_size, f"the model in {model_dir}",
                f"the tokenizer in {tokenizer_path}")
    return model, tokenizer


__all__ = ["check_device", "load_for_inference", "resolve_model_dir"]
