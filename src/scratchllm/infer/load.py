"""Loading a model (plain or quantized) and its tokenizer for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a training run directory (its latest checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        raise ScratchError(f"model directory not found: {path}",
                           "pass a directory with config.json + model.safetensors, or a training run directory")
    if (path / "config.json").is_file():
        return path
    from scratchllm.train.checkpoint import latest_checkpoint

    for root in (path / "checkpoints", path):
        if root.is_dir() and (ckpt := latest_checkpoint(root)) is not None:
            return ckpt
    raise ScratchError(f"{path} holds neither a model (config.json) nor training checkpoints",
                       "pass a model directory or the out_dir of 'scratchllm train'")


def load_for_inference(model_path: str | Path, tokenizer_path: str | Path | None = None,
                       device: str = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer). The tokenizer defaults to one saved inside the model directory."""
    from scratchllm.infer.quantize import load_model
    from scratchllm.tokenizer import Tokenizer

    model_dir = resolve_model_dir(model_path)
    model = load_model(model_dir, map_location=device).eval()
    if tokenizer_path is None:
        candidates = [model_dir, Path(model_path)]
        tokenizer_path = next((c for c in candidates if any(c.glob("tokenizer*.json"))), None)
        if tokenizer_path is None:
            raise ScratchError(f"no tokenizer found next to the model in {model_dir}",
                               "pass --tokenizer DIR (the directory written by 'scratchllm tokenizer train')")
    tokenizer = Tokenizer.load(tokenizer_path)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ScratchError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.cfg.vocab_size}",
                           "pass the tokenizer the model was trained with")
    return model, tokenizer
