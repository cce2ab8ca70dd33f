"""AdamW with two parameter groups: weight decay on matrices, none on norms/biases/embeddings.

Only parameters with ``requires_grad`` are handed to the optimizer, so freezing a model and
adding adapters (LoRA) trains just the adapters.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.train.config import OptimConfig

_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def param_kind(module: nn.Module, name: str, param: nn.Parameter) -> str:
    """"embedding", "norm", "bias" or "weight" for parameter ``name`` owned directly by ``module``."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower():
        return "norm"
    if name == "bias":
        return "bias"
    return "weight"


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """[{decayed params, weight_decay}, {exempt params, weight_decay 0}], each with a ``names`` list.

    A parameter shared by several modules (a head tied to the embedding) appears once, classified
    by the strictest owner: if any owner is exempt, it is exempt.
    """
    kinds: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    params: dict[int, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            kinds.setdefault(id(p), set()).add(param_kind(module, p_name, p))
            names.setdefault(id(p), f"{mod_name}.{p_name}" if mod_name else p_name)
            params[id(p)] = p
    decay, exempt = [], []
    for key, p in params.items():
        (exempt if kinds[key] & set(cfg.no_decay) else decay).append(key)
    groups = [
        {"params": [params[k] for k in decay], "weight_decay": cfg.weight_decay, "names": [names[k] for k in decay]},
        {"params": [params[k] for k in exempt], "weight_decay": 0.0, "names": [names[k] for k in exempt]},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    if not groups:
        from scratchllm.errors import ScratchError

        raise ScratchError("the model has no trainable parameters (all have requires_grad=False)",
                           "unfreeze some parameters, or add adapters before training")
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    for g in groups:
        del g["names"]  # not an AdamW option; param names come from the model when saving
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None,
        foreach=None if fused else True,
    )
