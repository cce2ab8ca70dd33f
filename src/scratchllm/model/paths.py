"""Where the model and its tokenizer are, for every command that takes ``--model`` (one resolver).

Users pass whatever directory they have at hand; every command accepts the same ones:

* a model directory: ``config.json`` + weights (``save_pretrained``, ``quantize``, ``export hf``,
  ``import hf``, or one training checkpoint ``step_N``);
* a fine-tuning or alignment run's ``out_dir``: its final model is in ``out_dir/model``;
* a training run's ``out_dir`` or its ``checkpoints/``: the latest checkpoint.

The tokenizer is looked for in the same places for everyone (see :func:`find_tokenizer`). This module
sits in the model layer and imports no stage: the checkpoint layout (``latest`` naming a ``step_N``
folder) is the one ``scratchllm.train.checkpoint`` writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scratchllm.errors import ScratchError

_STEP = re.compile(r"step_(\d+)")
_TOKENIZER_FILES = ("scratchllm_tokenizer.json", "tokenizer.json")


def _latest_step(root: Path) -> Path | None:
    """The checkpoint ``root/latest`` names, else the highest complete ``step_N`` (None if none)."""
    try:
        name = (root / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _STEP.fullmatch(name) and (root / name / "config.json").is_file():
        return root / name
    steps = [p for p in root.glob("step_*") if _STEP.fullmatch(p.name) and (p / "config.json").is_file()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory meant by ``path`` (a model, a fine-tuning run or a training run directory)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ScratchError(f"model directory not found: {path}",
                           "pass a model directory, a fine-tuning run's out_dir or a training run's out_dir")
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():  # finetune / align out_dir: the final model
        return path / "model"
    for root in (path / "checkpoints", path):
        if root.is_dir() and (latest := _latest_step(root)) is not None:
            return latest
    raise ScratchError(
        f"{path} holds no model: no config.json in it or in {path / 'model'}, and no checkpoints",
        "pass a model directory (config.json + model.safetensors), a fine-tuning run's out_dir, "
        "or the out_dir of 'scratchllm train'",
    )


def find_tokenizer(path: str | Path, model_dir: Path | None = None) -> Path | None:
    """The tokenizer that goes with the model the user named as ``path`` (None if none is found).

    In order: inside the model directory (fine-tuning, alignment, quantize and export save it there),
    the directory the user named and its ``tokenizer/``, the run folder's ``tokenizer/`` (the pipeline's
    layout), and for a training checkpoint the ``data.tokenizer`` its run was configured with."""
    path = Path(path).expanduser()
    model_dir = model_dir if model_dir is not None else resolve_model_dir(path)
    candidates = [model_dir, path, path / "tokenizer", model_dir / "tokenizer", path.parent / "tokenizer"]
    if _STEP.fullmatch(model_dir.name) and len(model_dir.parents) > 2:
        candidates.append(model_dir.parents[2] / "tokenizer")  # run/pretrain/checkpoints/step_N -> run/tokenizer
    for c in candidates:
        if any((c / f).is_file() for f in _TOKENIZER_FILES):
            return c
    try:  # a training checkpoint records its run's config, with the tokenizer the data was made with
        state = json.loads((model_dir / "state.json").read_text(encoding="utf-8"))
        configured = Path(state["config"]["data"]["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return configured if any((configured / f).is_file() for f in _TOKENIZER_FILES) else None


def require_tokenizer(path: str | Path, model_dir: Path | None = None) -> Path:
    """:func:`find_tokenizer`, or a ScratchError that says where it looked."""
    found = find_tokenizer(path, model_dir)
    if found is None:
        raise ScratchError(f"no tokenizer found for the model {path} (looked in the model directory, "
                           "next to it, and in the training run's config)",
                           "pass --tokenizer DIR (the directory written by 'scratchllm tokenizer train')")
    return found
