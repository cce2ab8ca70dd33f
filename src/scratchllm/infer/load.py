"""The one way to load a model directory (plain or quantized) and its tokenizer, for every command.

``scratchllm.model.paths`` decides *where* the model and its tokenizer are (a model directory, a
fine-tuning run, a training run's latest checkpoint); this module loads them: ``load_model`` for the
model alone (generate's draft, eval, alignment, export, inspect, the pipeline), ``load_for_inference``
for the model and its checked tokenizer (generate, chat, serve, eval). It sits in the inference layer
because a quantized directory needs the INT8/INT4 modules of ``infer/quantize.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.quantize import QUANT_FILE, load_quantized
from scratchllm.model.checkpoint import check_vocab, load_pretrained
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


def load_model(path: str | Path, device: str = "cpu", *, full_precision_for: str | None = None) -> Any:
    """The model the user named by ``path``, in eval mode on ``device``.

    ``path`` is anything :func:`resolve_model_dir` accepts; the directory may be plain or quantized
    (``scratchllm quantize``). ``full_precision_for`` names a use that needs the float weights
    (``"alignment"``, ``"export"``, ``"inspect"``): a quantized directory is then refused with a fix.
    """
    check_device(device)
    model_dir = resolve_model_dir(path)
    if (model_dir / QUANT_FILE).is_file():
        if full_precision_for:
            raise ScratchError(f"{model_dir} is a quantized model; {full_precision_for} needs the full-precision "
                               "weights", "pass the model directory that was quantized")
        model = load_quantized(model_dir)
    else:
        model = load_pretrained(model_dir)
    return model.to(device).eval()


def load_for_inference(model_path: str | Path, tokenizer_path: str | Path | None = None,
                       device: str = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer), refused when their vocabularies differ. The tokenizer defaults to
    the one found with the model (:func:`scratchllm.model.paths.find_tokenizer`)."""
    model_dir = resolve_model_dir(model_path)
    model = load_model(model_dir, device)
    if tokenizer_path is None:
        tokenizer_path = require_tokenizer(model_path, model_dir)
    tokenizer = Tokenizer.load(tokenizer_path)
    check_vocab(model.cfg.vocab_size, tokenizer.vocab_size, f"the model in {model_dir}",
                f"the tokenizer in {tokenizer_path}")
    return model, tokenizer


__all__ = ["check_device", "load_for_inference", "load_model", "resolve_model_dir"]
