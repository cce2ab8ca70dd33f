"""Loading what the inspect commands look at: a model directory or training checkpoint, and its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (config.json + model.safetensors), a checkpoint, or a training run (its latest checkpoint)."""
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


def load_model(path: str | Path) -> Any:
    """The model in eval mode on the CPU, its weights in fp32 (inspection wants exact numbers, not speed)."""
    from scratchllm.model.checkpoint import load_pretrained

    model_dir = resolve_model_dir(path)
    if (model_dir / "quantization.json").is_file():
        raise ScratchError(f"{model_dir} is a quantized model; inspect needs the full-precision weights",
                           "pass the model directory that was quantized")
    return load_pretrained(model_dir).float().eval()


def find_tokenizer(model_path: str | Path, tokenizer_path: str | Path | None) -> Path:
    if tokenizer_path is not None:
        return Path(tokenizer_path)
    model_dir = resolve_model_dir(model_path)
    for c in (model_dir, Path(model_path), model_dir.parent, model_dir.parent.parent):
        if any(c.glob("tokenizer*.json")):
            return c
    raise ScratchError(f"no tokenizer found next to the model in {model_dir}",
                       "pass --tokenizer DIR (the directory written by 'scratchllm tokenizer train')")


def load_tokenizer(path: str | Path) -> Any:
    from scratchllm.tokenizer import Tokenizer

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
