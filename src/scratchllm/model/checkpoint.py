"""Model directories: ``config.json`` (our ModelConfig) + ``model.safetensors`` (the weights).

safetensors instead of pickle: loading cannot execute code, and the header lists every tensor's
name, dtype and shape, so a mismatch is reported by name before anything is copied.

A directory may also hold ``checksums.json`` (training checkpoints do: {file name: sha256}). Every
file read here is then checked against it, so a flipped or truncated file is refused by whatever
loads it - generate, chat, serve, eval, export, fine-tuning, alignment, the pipeline - not only
by ``train --resume``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from scratchllm.config import from_dict, to_dict
from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_bytes, atomic_write_text
from scratchllm.model.model import ModelConfig, Transformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKSUMS_FILE = "checksums.json"
QUANT_FILE = "quantization.json"  # marks a quantized model directory (scratchllm.infer.quantize writes it)


def save_pretrained(model: Transformer, directory: str | Path) -> None:
    directory = Path(directory)
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as tok_emb.weight; safetensors refuses aliases
    write_safetensors(directory / WEIGHTS_FILE, state)
    atomic_write_text(directory / CONFIG_FILE, json.dumps(to_dict(model.cfg), indent=2) + "\n")


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> Transformer:
    directory = Path(directory)
    if not directory.is_dir():
        raise ScratchError(f"model directory not found: {directory}", "pass a directory written by save_pretrained")
    cfg = read_config(directory / CONFIG_FILE)
    weights_path = directory / WEIGHTS_FILE
    state = read_safetensors(weights_path)
    model = Transformer(cfg)
    load_checked(model, state, weights_path)
    return model.to(map_location)


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's state dict: parameters and persistent buffers, each storage counted once (a
    tied embedding and output head once). What a checkpoint holds and what inference reads; quantized
    (INT8/INT4, NF4) weights count at their stored size. Caches such as the RoPE tables are not weights
    and are left out. The one weight count, used by quantize, fine-tuning, the pipeline and the benchmarks."""
    unique = {(t.data_ptr(), t.numel(), t.dtype): t for t in model.state_dict().values() if t.numel()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def check_vocab(model_vocab: int, tokenizer_vocab: int, model_where: str = "the model",
                tokenizer_where: str = "the tokenizer") -> None:
    """Refuse a model and tokenizer whose vocabularies differ: the one check, at load time, for every stage.

    A larger tokenizer encodes ids the model has no embedding for; a larger model can sample ids the
    tokenizer cannot decode (the extra rows are untrained, so this happens). Both fail only later,
    mid-generation, so they are refused up front. Ints, not objects: the model layer imports no tokenizer.
    """
    if int(model_vocab) == int(tokenizer_vocab):
        return
    raise ScratchError(
        f"vocabulary mismatch: {model_where} has vocab_size={model_vocab} but {tokenizer_where} has "
        f"{tokenizer_vocab} tokens",
        f"use the tokenizer the model was trained with, or train the model with model.vocab_size={tokenizer_vocab}",
    )


def load_checked(model: Transformer, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Copy ``state`` into ``model`` after checking names and shapes (``path`` is named in errors)."""
    expected = model.state_dict()
    if model.cfg.tie_embeddings:
        del expected["lm_head.weight"]  # stored once, as tok_emb.weight
    check_state(expected, state, path)
    model.load_state_dict(state, strict=False)  # strict=False: the tied lm_head.weight is not in the file


def read_config(path: Path) -> ModelConfig:
    try:
        return from_dict(ModelConfig, read_json(path))
    except ScratchError as e:
        raise ScratchError(f"{path}: {e.message}", e.hint) from None


def check_state(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse missing, unexpected or mis-shaped tensors, naming the first offender and the file."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise ScratchError(
            f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)",
            "the weights do not belong to this config.json; save them again from the matching model",
        )
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise ScratchError(
            f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all)",
            "the weights do not belong to this config.json; save them again from the matching model",
        )
    for name, want in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(want.shape):
            raise ScratchError(
                f"{path}: tensor {name!r} has shape {tuple(got.shape)}, but the config needs {tuple(want.shape)}",
                "the weights and config.json disagree; check d_model, n_heads, n_kv_heads, d_ff, vocab_size",
            )


# --- file helpers shared with the Hugging Face import/export ------------------------------------------


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def check_listed(path: Path, data: bytes) -> None:
    """If ``path``'s directory has checksums.json naming ``path``, ``data`` (its bytes) must match."""
    path = Path(path)
    sums_path = path.parent / CHECKSUMS_FILE
    if not sums_path.exists():
        return
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise _corrupt(path.parent, f"{CHECKSUMS_FILE} is unreadable or corrupt") from None
    want = sums.get(path.name) if isinstance(sums, dict) else None
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise _corrupt(path.parent, f"{path.name} is truncated or corrupt (sha256 differs from {CHECKSUMS_FILE})")


def _corrupt(directory: Path, what: str) -> ScratchError:
    parent = directory.parent
    others = sorted(p.name for p in parent.iterdir() if p.is_dir() and p != directory
                    and (p / CHECKSUMS_FILE).exists()) if parent.is_dir() else []
    return ScratchError(
        f"{directory} is unusable: {what}",
        (f"use another checkpoint from {directory.parent} ({', '.join(others)})" if others
         else "restore the directory from a good copy or re-create it"),
    )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScratchError(f"weights file not found: {path}", "the directory must contain model.safetensors") from None
    check_listed(path, data)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ScratchError(
            f"{path} is not a valid safetensors file (truncated or corrupt: {e})",
            "re-create or re-download the file; an interrupted copy leaves a truncated file",
        ) from None


def read_json(path: Path) -> dict:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ScratchError(f"config file not found: {path}", "a model directory needs config.json") from None
    check_listed(path, raw)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchError(f"{path} is not valid JSON: {e}", "fix or re-create the file") from None
    if not isinstance(data, dict):
        raise ScratchError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
