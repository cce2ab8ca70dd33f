"""Weight-only quantization as a model transform (gpt-fast style): swap nn.Linear for a linear that
stores integer weights and dequantizes them on the fly; activations stay in floating point.

    int8: per output channel, symmetric:   q = round(w / s), s = max|w_row| / 127,      w ~ q * s
    int4: per group of group_size inputs, affine:  q = round(w / s) + z in 0..15,      w ~ (q - z) * s
          (the range [min, max] of each group is widened to include 0, so z is an integer in 0..15;
           two 4-bit values are packed per byte)

The attention and MLP projections are quantized (almost all the compute and, for deep models, the
memory); embeddings, norms and a tied output head stay in floating point (a tied head shares the
embedding table, which is a lookup). Saved with ``save_quantized``: config.json + model.safetensors
(integer tensors) + quantization.json; ``scratchllm.infer.load.load_model`` reads plain and quantized
directories alike.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchError
from scratchllm.infer.config import QuantizeConfig
from scratchllm.io import atomic_write_text
from scratchllm.model.checkpoint import (
    CONFIG_FILE,
    QUANT_FILE,
    WEIGHTS_FILE,
    load_checked,
    load_pretrained,
    read_config,
    read_json,
    read_safetensors,
    save_pretrained,
    state_dict_bytes,
)
from scratchllm.model.model import Transformer
from scratchllm.model.paths import find_tokenizer, resolve_model_dir
from scratchllm.stage import StageResult

MODES = ("int8", "int4")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (q int8 (out, in), scale fp32 (out,))."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.clamp(torch.round(w / scale[:, None]), -128, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise affine int4: (q uint8 (out, in/2) packed, scale fp32 (out, in/g), zero uint8 (out, in/g))."""
    out_f, in_f = w.shape
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)  # include 0: the zero point is then an integer
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    zero = torch.clamp(torch.round(-lo / scale), 0, 15)
    q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, 15).to(torch.uint8).reshape(out_f, in_f)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed, scale, zero.to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(out, in/2) packed bytes -> (out, in) values 0..15."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling the output instead of the weight is the same product and touches out_features numbers only.
        return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        self.register_buffer("zero", torch.zeros(out_features, groups, dtype=torch.uint8))

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        q = unpack_int4(self.weight).reshape(self.out_features, -1, self.group_size).to(dtype)
        w = (q - self.zero[..., None].to(dtype)) * self.scale[..., None].to(dtype)
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype))


def _targets(model: Transformer) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for every linear we quantize."""
    out = []
    for block in model.layers:
        for parent in (block.attn, block.mlp):
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    out.append((parent, name, child))
    if not model.cfg.tie_embeddings:
        out.append((model, "lm_head", model.lm_head))
    return out


def quantize(model: Transformer, mode: str = "int8", group_size: int = 64, *, compute: bool = True) -> Transformer:
    """Replace the model's linears in place with Int8Linear / Int4Linear; returns the model.

    compute=False builds empty quantized modules (the shape, for loading saved weights).
    """
    if mode not in MODES:
        raise ScratchError(f"unknown quantization mode {mode!r}", f"use one of: {', '.join(MODES)}")
    targets = _targets(model)
    if mode == "int4":
        bad = [f for _, _, lin in targets for f in [lin.in_features] if f % group_size or group_size % 2]
        if group_size < 2 or bad:
            raise ScratchError(
                f"int4 group_size={group_size} must be even and divide every linear's input size "
                f"(found {sorted(set(bad))[:3]})", "use a group size such as 32, 64 or 128 that divides d_model and d_ff")
    for parent, name, lin in targets:
        w = lin.weight.detach()
        if mode == "int8":
            new = Int8Linear(lin.in_features, lin.out_features)
            if compute:
                new.weight, new.scale = quantize_int8(w)
        else:
            new = Int4Linear(lin.in_features, lin.out_features, group_size)
            if compute:
                new.weight, new.scale, new.zero = quantize_int4(w, group_size)
        setattr(parent, name, new.to(w.device))
    model.quantization = {"mode": mode, "group_size": group_size if mode == "int4" else None}
    return model


def save_quantized(model: Transformer, directory: str | Path) -> None:
    """config.json + model.safetensors (integer weights) + quantization.json."""
    info = getattr(model, "quantization", None)
    if info is None:
        raise ScratchError("save_quantized: the model is not quantized", "call quantize(model, 'int8'|'int4') first")
    save_pretrained(model, directory)
    atomic_write_text(Path(directory) / QUANT_FILE, json.dumps(info) + "\n")


def load_quantized(directory: str | Path, map_location: str | torch.device = "cpu") -> Transformer:
    """A directory written by save_quantized (``scratchllm.infer.load.load_model`` loads plain and quantized
    directories alike, and is what commands use)."""
    directory = Path(directory)
    info = read_json(directory / QUANT_FILE)
    model = Transformer(read_config(directory / CONFIG_FILE))
    quantize(model, info.get("mode", "?"), info.get("group_size") or 64, compute=False)
    load_checked(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
    return model.to(map_location)



def run(cfg: QuantizeConfig) -> StageResult:
    """Quantize ``cfg.model`` into ``cfg.out_dir`` with its tokenizer (a self-contained model directory).

    The one body of ``scratchllm quantize`` and the pipeline's quantize stage. Metrics: the weight bytes
    before and after (:func:`scratchllm.model.checkpoint.state_dict_bytes`)."""
    if not cfg.model or cfg.out_dir is None:
        raise ScratchError("quantize needs a model and an out_dir", "pass model=DIR out_dir=DIR (or --model, --out)")
    src = resolve_model_dir(cfg.model)
    if (src / QUANT_FILE).is_file():
        raise ScratchError(f"{src} is already quantized", "quantize the original full-precision model")
    model = load_pretrained(src)
    before = state_dict_bytes(model)
    quantize(model, cfg.mode, cfg.group_size)
    out = Path(cfg.out_dir)
    save_quantized(model, out)
    tok = Path(cfg.tokenizer) if cfg.tokenizer else find_tokenizer(cfg.model, src)
    files = ([tok] if tok.is_file() else [*tok.glob("tokenizer*.json"), *tok.glob("scratchllm_tokenizer.json")]
             ) if tok else []
    for f in files:
        shutil.copy2(f, out / f.name)  # keep the model directory self-contained
    metrics = {"source": str(src), "mode": cfg.mode, "group_size": cfg.group_size if cfg.mode == "int4" else None,
               "dense_weight_bytes": before, "quantized_weight_bytes": state_dict_bytes(model),
               "tokenizer": str(tok) if files else None}
    return StageResult(outputs={"model": out}, metrics=metrics)
