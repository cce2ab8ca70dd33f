"""Optimizers: AdamW (default), or Muon for the hidden matrices with AdamW for everything else.

AdamW has two parameter groups: weight decay on matrices, none on norms/biases/embeddings.
Muon (``optim.name = "muon"``) sends every 2-D hidden weight (attention and MLP projections) to
Muon and keeps AdamW, at its own learning rate, for the token/position embeddings, an untied output
head, norm gains and biases - the split of modded-nanogpt's records and nanochat.

Only parameters with ``requires_grad`` are handed to the optimizer, so freezing a model and
adding adapters (LoRA) trains just the adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from scratchllm.errors import ScratchError
from scratchllm.train.config import OptimConfig

_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)

# The quintic Newton-Schulz coefficients of Keller Jordan's Muon and the modded-nanogpt records:
# chosen to maximise the slope at 0, so 5 iterations push every singular value into about [0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
HEAD_NAMES = ("lm_head",)  # an untied output head is a 2-D Linear but belongs with AdamW


def param_kind(module: nn.Module, name: str, param: nn.Parameter) -> str:
    """"embedding", "norm", "bias" or "weight" for parameter ``name`` owned directly by ``module``."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower():
        return "norm"
    if name == "bias":
        return "bias"
    return "weight"


def _classify(model: nn.Module) -> tuple[dict[int, nn.Parameter], dict[int, set[str]], dict[int, str]]:
    kinds: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    params: dict[int, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            kind = param_kind(module, p_name, p)
            if kind == "weight" and mod_name.rpartition(".")[2] in HEAD_NAMES:
                kind = "head"
            kinds.setdefault(id(p), set()).add(kind)
            names.setdefault(id(p), f"{mod_name}.{p_name}" if mod_name else p_name)
            params[id(p)] = p
    return params, kinds, names


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups [{decayed params, weight_decay}, {exempt params, weight_decay 0}], each with ``names``;
    with ``cfg.name == "muon"`` a first group {2-D hidden weights, use_muon=True} comes before them.

    A parameter shared by several modules (a head tied to the embedding) appears once, classified
    by the strictest owner: if any owner is exempt, it is exempt (and a tied head is an embedding).
    """
    params, kinds, names = _classify(model)
    muon, decay, exempt = [], [], []
    for key, p in params.items():
        if cfg.name == "muon" and kinds[key] == {"weight"} and p.ndim == 2:
            muon.append(key)
        elif kinds[key] & set(cfg.no_decay):
            exempt.append(key)
        else:
            decay.append(key)
    groups = [
        {"params": [params[k] for k in decay], "weight_decay": cfg.weight_decay, "names": [names[k] for k in decay]},
        {"params": [params[k] for k in exempt], "weight_decay": 0.0, "names": [names[k] for k in exempt]},
    ]
    if cfg.name == "muon":
        for g in groups:
            g["use_muon"] = False
        groups.insert(0, {"params": [params[k] for k in muon], "names": [names[k] for k in muon], "use_muon": True,
                          "lr": cfg.muon_lr, "weight_decay": cfg.muon_weight_decay})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ScratchError("the model has no trainable parameters (all have requires_grad=False)",
                           "unfreeze some parameters, or add adapters before training")
    for g in groups:
        del g["names"]  # not an optimizer option; param names come from the model when saving
    if cfg.name == "muon":
        return Muon(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, momentum=cfg.muon_momentum,
                    nesterov=cfg.muon_nesterov, ns_steps=cfg.muon_ns_steps, lr_scale=cfg.muon_lr_scale,
                    ns_dtype=cfg.muon_ns_dtype)
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None,
        foreach=None if fused else True,
    )


# --- Muon -------------------------------------------------------------------------------------------


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients: Iterable[float] = NS_COEFFICIENTS,
                  eps: float = NS_EPS, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors: ~ U V^T for g = U S V^T; for a
    stack g of shape (n, rows, cols), each of the n matrices on its own (one batched matmul per
    product instead of n).

    Quintic iteration X <- a X + (b A + c A^2) X with A = X X^T, after scaling X to Frobenius norm
    1 (so every singular value is <= 1). It works on the wide orientation (rows <= columns), where
    X X^T is the smaller Gram matrix, and in bf16 as the records do: the iteration is
    self-correcting, so low precision costs nothing measurable.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    # addmm for one matrix (the same kernels as torch.optim.Muon), baddbmm for a stack: on CPU both
    # give bit-identical results per matrix (tests/train/test_muon.py checks it).
    mm = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        poly = mm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = mm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.mT if tall else x


def newton_schulz_many(updates: list[torch.Tensor], steps: int = 5,
                       coefficients: Iterable[float] = NS_COEFFICIENTS, eps: float = NS_EPS,
                       dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """newton_schulz of each matrix, batched: matrices of one shape are stacked and orthogonalised
    together (the records' trick; a model has only a few distinct shapes: q/o, k/v, the MLP's)."""
    out: list[torch.Tensor | None] = [None] * len(updates)
    buckets: dict[tuple, list[int]] = {}
    for i, u in enumerate(updates):
        buckets.setdefault((tuple(u.shape), u.dtype, u.device), []).append(i)
    for idx in buckets.values():
        if len(idx) == 1:
            out[idx[0]] = newton_schulz(updates[idx[0]], steps, coefficients, eps, dtype)
            continue
        ortho = newton_schulz(torch.stack([updates[i] for i in idx]), steps, coefficients, eps, dtype)
        for i, o in zip(idx, ortho.unbind(0), strict=True):
            out[i] = o
    return out  # type: ignore[return-value]


def muon_lr(lr: float, shape: torch.Size, scale: str) -> float:
    """Shape-dependent step size: "original" sqrt(max(1, rows/cols)) (Keller Jordan's Muon: the same
    per-element update size for tall and wide matrices), or "match_rms_adamw" 0.2 sqrt(max(rows, cols))
    (Moonshot's: an update RMS like AdamW's, so AdamW's lr and weight decay carry over)."""
    rows, cols = shape[0], shape[1]
    if scale == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself, or this process's shard of an FSDP2 DTensor (a view: in-place ops write through)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _local_grad(p: torch.Tensor) -> torch.Tensor:
    """This process's part of p's gradient, laid out like p. Under tensor parallelism a replicated
    parameter used on sequence shards (the norms) gets a Partial gradient - per-rank partial sums -
    that must be reduced first (torch's own optimizers do it implicitly through DTensor ops)."""
    g = p.grad
    if hasattr(g, "to_local"):
        if tuple(g.placements) != tuple(p.placements):
            g = g.redistribute(p.device_mesh, p.placements)
        return g.to_local()
    return g


def _full(update: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole matrix of ``update`` (this process's shard of the DTensor ``like``): an all-gather."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(update, like.device_mesh, like.placements, shape=like.shape,
                              stride=like.stride(), run_check=False).full_tensor()


def _shard_of(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of the replicated ``full``, laid out as the DTensor ``like`` (no communication)."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    replicated = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, like.placements).to_local()


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True``, AdamW for the others, in one optimizer (one state dict).

    Muon, per 2-D parameter W with gradient G (the settings of torch.optim.Muon and Keller Jordan's Muon):
        B <- momentum * B + (1 - momentum) * G                      (momentum buffer, EMA form)
        U <- G + momentum * (B - G)  if nesterov  else  B           (Nesterov look-ahead)
        W <- W * (1 - lr * weight_decay) - muon_lr(lr, shape) * NewtonSchulz(U)
    AdamW groups: the textbook AdamW (bias-corrected moments, decoupled weight decay), equal to
    torch.optim.AdamW's.

    Parameters sharded by FSDP2 (DTensors): every elementwise update runs on this process's shard;
    for the orthogonalisation each process all-gathers the whole update matrix, runs Newton-Schulz
    on it (the same computation on every process) and keeps its own rows. DDP needs nothing: its
    parameters and (all-reduced) gradients are whole and equal on every process.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, lr_scale: str = "original",
                 ns_dtype: str = "bf16") -> None:
        defaults = {"ns_dtype": ns_dtype, "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "momentum": momentum,
                    "nesterov": nesterov, "ns_steps": ns_steps, "ns_coefficients": ns_coefficients,
                    "lr_scale": lr_scale, "use_muon": False}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D parameters only")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        # Elementwise parts on this process's shards, one foreach call per op (not one kernel per parameter).
        grads = [_local_grad(p) for p in params]
        bufs = [_local(self.state[p]["momentum_buffer"]) for p in params]
        weights = [_local(p) for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - mom)
        updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs
        fulls = [_full(u, p) if hasattr(p, "device_mesh") else u for u, p in zip(updates, params, strict=True)]
        dtype = torch.float32 if group["ns_dtype"] == "fp32" else torch.bfloat16
        orthos = newton_schulz_many(fulls, group["ns_steps"], group["ns_coefficients"], dtype=dtype)
        if wd:
            torch._foreach_mul_(weights, 1 - lr * wd)
        for p, w, ortho in zip(params, weights, orthos, strict=True):
            if hasattr(p, "device_mesh"):
                ortho = _shard_of(ortho, p)
            w.add_(ortho.to(w.dtype), alpha=-muon_lr(lr, p.shape, group["lr_scale"]))

    def _adamw_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
        # Every parameter of a group starts together, so one step count serves the group (bias correction).
        steps = {float(self.state[p]["step"]) for p in params}
        for step in steps:
            ps = [p for p in params if float(self.state[p]["step"]) == step]
            g = [_local_grad(p) for p in ps]
            w = [_local(p) for p in ps]
            m = [_local(self.state[p]["exp_avg"]) for p in ps]
            v = [_local(self.state[p]["exp_avg_sq"]) for p in ps]
            torch._foreach_lerp_(m, g, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            if wd:
                torch._foreach_mul_(w, 1 - lr * wd)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1 - beta2**step))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(w, m, denom, value=-lr / (1 - beta1**step))
