"""LoRA (Hu et al. 2021), written from scratch: y = W x + (alpha / r) * B A dropout(x).

``apply_lora`` wraps every linear layer whose name matches a pattern in a ``LoRALinear`` holding
the frozen base layer (an ``nn.Linear``, or an ``NF4Linear`` for QLoRA) and two small trainable
matrices: A (r x in, Kaiming-uniform like PEFT) and B (out x r, zeros, so training starts from
the base model exactly). Everything else is frozen.

Adapters are saved two ways:

* ours: ``adapter.safetensors`` (our module names) + ``adapter.json`` (rank, alpha, targets, the
  base model's config and fingerprint, so loading onto another base model fails clearly);
* PEFT: ``adapter_model.safetensors`` (Hugging Face Llama module names under
  ``base_model.model.``) + ``adapter_config.json``: ``peft.PeftModel.from_pretrained`` loads it on
  the model exported with ``scratchllm export hf``. ``load_adapter`` reads both layouts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.config import from_dict, to_dict
from scratchllm.errors import ScratchError
from scratchllm.finetune.nf4 import NF4Linear
from scratchllm.io import atomic_write_text
from scratchllm.model.checkpoint import read_json, read_safetensors, write_safetensors
from scratchllm.model.hf import from_hf_name, to_hf_name
from scratchllm.model.model import Transformer

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    r: int = 8  # rank of the update B A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input
    # Module name patterns: a name matches if it equals the pattern, ends with "." + pattern, or
    # fully matches it as a regular expression (e.g. "layers\.[01]\.attn\.q_proj").
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))

    def validate(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ScratchError(f"lora: r must be >= 1 and alpha > 0, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ScratchError("lora.target_modules is empty", f"e.g. {ALL_LINEAR}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def matches(name: str, patterns: list[str]) -> bool:
    """PEFT-style target matching: exact name, ``.``-suffix, or full regular-expression match."""
    for p in patterns:
        if name == p or name.endswith("." + p):
            return True
        try:
            if re.fullmatch(p, name):
                return True
        except re.error:
            continue
    return False


def matching_linears(model: nn.Module, patterns: list[str]) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(name, parent, attribute, layer) of each linear layer (nn.Linear or NF4Linear) matching ``patterns``."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | NF4Linear) and matches(name, patterns):
            parent_name, _, attr = name.rpartition(".")
            found.append((name, model.get_submodule(parent_name), attr, module))
    return iter(found)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) B A, shaped like the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def _fold(self, sign: float) -> None:
        if not isinstance(self.base, nn.Linear):
            raise ScratchError("cannot merge LoRA into a 4-bit (NF4) base layer in place",
                               "use merged_state_dict / export the merged model, which dequantizes first")
        with torch.no_grad():
            self.base.weight += sign * self.delta_weight().to(self.base.weight.dtype)

    def merge(self) -> None:
        if not self.merged:
            self._fold(1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._fold(-1.0)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap matching linear layers with LoRA and freeze everything else; returns the wrapped names."""
    cfg.validate()
    if lora_layers(model):
        raise ScratchError("the model already has LoRA adapters", "apply LoRA once per model")
    tied = {id(p) for n, p in model.named_parameters() if "emb" in n}
    targets = list(matching_linears(model, cfg.target_modules))
    if not targets:
        names = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ScratchError(f"lora.target_modules {cfg.target_modules} match no linear layer of the model",
                           f"the model's linear layers are named: {', '.join(names)}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, parent, attr, layer in targets:
        if isinstance(layer, nn.Linear) and id(layer.weight) in tied:
            raise ScratchError(f"LoRA on {name!r}, which shares its weight with the embedding, is not supported",
                               "leave lm_head out of lora.target_modules (or train with tie_embeddings=false)")
        lora = LoRALinear(layer, cfg.r, cfg.alpha, cfg.dropout).to(_device_of(layer))
        setattr(parent, attr, lora)
        wrapped.append(name)
    return wrapped


def _device_of(module: nn.Module) -> torch.device:
    t = next(iter(module.parameters()), None)
    if t is None:
        t = next(iter(module.buffers()))
    return t.device


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (forward then costs nothing extra)."""
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo merge_lora (subtract the updates again)."""
    for m in lora_layers(model).values():
        m.unmerge()


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; NF4 buffers count as their number of weights."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))
    return trainable, total


# --- merged export ------------------------------------------------------------------------------


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict: adapters folded in, NF4 layers dequantized, wrapper names removed."""
    out: dict[str, torch.Tensor] = {}
    special: dict[str, nn.Module] = {
        n: m for n, m in model.named_modules() if isinstance(m, LoRALinear | NF4Linear)
    }
    for name, module in special.items():
        if isinstance(module, LoRALinear):
            base = module.base
            w = base.dequantized_weight() if isinstance(base, NF4Linear) else base.weight.detach()
            out[f"{name}.weight"] = w if module.merged else w + module.delta_weight().detach().to(w.dtype)
        elif not any(name.startswith(s + ".") for s in special):  # a bare NF4 layer (not inside a LoRA)
            out[f"{name}.weight"] = module.dequantized_weight()
    for key, value in model.state_dict().items():
        if not any(key.startswith(s + ".") for s in special):
            out[key] = value.detach()
    return out


def merged_model(model: Transformer) -> Transformer:
    """A new plain ``Transformer`` with the adapters merged (and NF4 weights dequantized)."""
    plain = Transformer(model.cfg)
    state = merged_state_dict(model)
    plain.load_state_dict(state, strict=True)
    return plain.to(model.tok_emb.weight.device)


# --- saving and loading adapters -----------------------------------------------------------------


def base_fingerprint(model: nn.Module) -> str:
    """A short hash of the base model's token embedding (never adapted or quantized): tells base models apart."""
    w = model.get_submodule("tok_emb").weight.detach().float().cpu().contiguous()
    h = hashlib.sha256(str(tuple(w.shape)).encode())
    h.update(w.numpy().tobytes())
    return h.hexdigest()[:16]


def _adapter_config(model: Transformer) -> LoraConfig:
    layers = lora_layers(model)
    if not layers:
        raise ScratchError("the model has no LoRA adapters to save", "call apply_lora first")
    ranks = {(m.r, m.alpha) for m in layers.values()}
    if len(ranks) != 1:
        raise ScratchError("adapters with different ranks/alphas per layer cannot be saved in one config")
    (r, alpha), first = ranks.pop(), next(iter(layers.values()))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return LoraConfig(r=r, alpha=alpha, dropout=dropout, target_modules=sorted(layers))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{part}.weight": getattr(m, part).weight.detach()
            for n, m in lora_layers(model).items() for part in ("lora_A", "lora_B")}


def save_adapter(model: Transformer, directory: str | Path) -> Path:
    """Write our adapter.safetensors + adapter.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = _adapter_config(model)
    meta = {"format": "scratchllm-lora", "lora": asdict(cfg), "base_model": to_dict(model.cfg),
            "base_fingerprint": base_fingerprint(model)}
    write_safetensors(directory / ADAPTER_WEIGHTS, adapter_state_dict(model))
    atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(meta, indent=2) + "\n")
    return directory


def save_peft_adapter(model: Transformer, directory: str | Path, base_model_name: str = "") -> Path:
    """Write a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, HF names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = _adapter_config(model)
    tensors = {PEFT_PREFIX + to_hf_name(k): v for k, v in adapter_state_dict(model).items()}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name or None,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(to_hf_name(f"{t}.weight").removesuffix(".weight") for t in cfg.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    # PEFT ignores safetensors metadata; we keep the base model's identity there.
    write_safetensors(directory / PEFT_WEIGHTS, tensors, metadata={"base_fingerprint": base_fingerprint(model),
                                                                     "format": "pt"})
    atomic_write_text(directory / PEFT_CONFIG, json.dumps(config, indent=2) + "\n")
    return directory


def _read_adapter(directory: Path) -> tuple[LoraConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, tensors under our names, identity info) from either adapter layout."""
    if (directory / ADAPTER_CONFIG).is_file():
        meta = read_json(directory / ADAPTER_CONFIG)
        if meta.get("format") != "scratchllm-lora":
            raise ScratchError(f"{directory / ADAPTER_CONFIG} is not a scratchllm LoRA adapter config")

        cfg = from_dict(LoraConfig, meta["lora"], "lora")
        return cfg, read_safetensors(directory / ADAPTER_WEIGHTS), meta
    if (directory / PEFT_CONFIG).is_file():
        meta = read_json(directory / PEFT_CONFIG)
        if meta.get("peft_type") != "LORA":
            raise ScratchError(f"{directory / PEFT_CONFIG}: peft_type {meta.get('peft_type')!r} is not LORA",
                               "only LoRA adapters can be loaded")
        unsupported = [k for k in ("use_dora", "use_rslora", "fan_in_fan_out") if meta.get(k)]
        if meta.get("rank_pattern") or meta.get("alpha_pattern"):
            unsupported.append("rank_pattern/alpha_pattern")
        if unsupported or meta.get("bias", "none") != "none" or meta.get("modules_to_save"):
            raise ScratchError(f"{directory / PEFT_CONFIG}: unsupported PEFT options "
                               f"({', '.join(unsupported) or 'bias/modules_to_save'})",
                               "only plain LoRA (no DoRA/rsLoRA/bias/modules_to_save) is supported")
        tensors = {}
        path = directory / PEFT_WEIGHTS
        from safetensors import safe_open

        raw = read_safetensors(path)
        with safe_open(str(path), "pt") as f:
            info = dict(f.metadata() or {})
        for key, value in raw.items():
            hf = key.removeprefix(PEFT_PREFIX).replace(".default.", ".")
            module, _, part = hf.rpartition(".lora_")
            ours = from_hf_name(f"{module}.weight")
            if ours is None:
                raise ScratchError(f"{path}: tensor {key!r} is not on a Llama module we know",
                                   "the adapter was made for a different architecture")
            tensors[f"{ours.removesuffix('.weight')}.lora_{part}"] = value
        targets = sorted({k.rpartition(".lora_")[0] for k in tensors})
        cfg = LoraConfig(r=int(meta["r"]), alpha=float(meta["lora_alpha"]), dropout=float(meta.get("lora_dropout", 0.0)),
                         target_modules=targets)
        return cfg, tensors, info
    raise ScratchError(f"no LoRA adapter in {directory}",
                       f"expected {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} or {PEFT_CONFIG} + {PEFT_WEIGHTS}")


def load_adapter(model: Transformer, directory: str | Path) -> list[str]:
    """Add the adapter in ``directory`` (ours or PEFT layout) to ``model``; returns the adapted modules.

    Refuses an adapter made for another base model (different config, fingerprint or shapes).
    """
    directory = Path(directory)
    cfg, tensors, meta = _read_adapter(directory)
    base = meta.get("base_model")
    if isinstance(base, dict):
        ours = to_dict(model.cfg)
        diff = [k for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
                if base.get(k) != ours.get(k)]
        if diff:
            raise ScratchError(
                f"adapter {directory} was trained on a different base model ({diff[0]}: adapter "
                f"{base.get(diff[0])}, this model {ours.get(diff[0])})",
                "load it onto the base model it was fine-tuned from")
    fp = meta.get("base_fingerprint")
    if fp and fp != base_fingerprint(model):
        raise ScratchError(f"adapter {directory} was trained on a different base model (fingerprint {fp}, "
                           f"this model {base_fingerprint(model)})",
                           "load it onto the base model it was fine-tuned from")
    existing = lora_layers(model)
    names = existing if existing else apply_lora(model, cfg)
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ScratchError(
            f"adapter {directory} does not fit this model "
            f"({'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]})",
            "load it onto the base model it was fine-tuned from, with the same target modules")
    for key, want in expected.items():
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise ScratchError(
                f"adapter {directory}: {key} has shape {tuple(tensors[key].shape)}, the model needs "
                f"{tuple(want.shape)}: it was trained on a different base model",
                "load it onto the base model it was fine-tuned from")
    with torch.no_grad():
        for key, want in expected.items():
            want.copy_(tensors[key].to(want.dtype))
    return list(names)
