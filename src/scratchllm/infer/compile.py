"""A torch.compile'd single-token decode step (gpt-fast style), opt-in: ``Engine(..., compile=True)``.

    eager prefill (any prompt length) -> compiled decode step: one token per row, every position of
    the KV cache read (a static view: unused positions are masked) -> one graph for every position

Shapes are fixed (``dynamic=False``): the view always reads max_len positions, so one compilation
serves every prompt and output length; the engine pads its running batch to a power of two, so each
of those batch sizes compiles once. The graph is compiled whole (``fullgraph=True``).

Two rewrites of the traced graph before inductor sees it (rewrite_for_decode):
- a linear layer applied to a single row (batch-1 decode) becomes ``(x * W).sum(-1)`` (gemv), which
  inductor turns into one vectorised reduction streaming the weight rows. A one-row matmul is
  memory-bound; on the 2-core dev VM this read weights at 15-18 GB/s against 8 GB/s for the BLAS
  call behind ``F.linear`` (one thread, weights not in cache), about halving decode time on the 10m preset;
- attention of one query per row becomes plain reductions over the cache (attend_one), which inductor
  fuses, instead of a call to the CPU flash-attention kernel (any batch size).
Logits differ from eager by float rounding (summation order), so greedy tokens could in principle
differ at a near-tie; in the tests and benchmarks they are identical.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.infer.cache import CacheView
from scratchllm.infer.engine import Engine
from scratchllm.infer.sampling import SamplingParams


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for inputs of one row, as a reduction over the weight rows (see the module docstring)."""
    y = (x[..., None, :] * weight).sum(-1)
    return y if bias is None else y + bias


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention for one query per row (decoding, no dropout), as reductions.

    q (B, H, 1, hd); k, v (B, KV, S, hd) with H a multiple of KV; attn_mask a bool "may attend" mask
    broadcastable to (B, 1, 1, S). One query sees every key, so is_causal has nothing to hide.
    """
    B, H, _, hd = q.shape
    KV, S = k.size(1), k.size(2)
    qg = q.reshape(B, KV, H // KV, 1, hd)  # query heads grouped by the key/value head they share
    scores = (qg * k[:, :, None]).sum(-1) * (scale if scale is not None else hd**-0.5)  # (B, KV, G, S)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask.reshape(attn_mask.size(0), 1, 1, S), float("-inf"))
    probs = scores.softmax(-1)
    return (probs[..., None] * v[:, :, None]).sum(-2).reshape(B, H, 1, hd)


def _value(arg: Any) -> Any:
    return arg.meta.get("example_value") if isinstance(arg, torch.fx.Node) else None


def _one_row(arg: Any) -> bool:
    value = _value(arg)
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.numel() == value.size(-1)


def _one_query_attention(node: torch.fx.Node) -> bool:
    q, k = (_value(a) for a in node.args[:2])
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    mask = _value(mask) if mask is not None else None
    dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
    return (isinstance(q, torch.Tensor) and q.dim() == 4 and q.size(2) == 1 and isinstance(k, torch.Tensor)
            and k.dim() == 4 and q.size(1) % k.size(1) == 0 and dropout == 0.0
            and (mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.size(1) == mask.size(2) == 1)))


def rewrite_for_decode(gm: torch.fx.GraphModule) -> int:
    """Rewrite one-row F.linear calls (2-D weights) to gemv and one-query attention to attend_one in a
    dynamo graph; returns how many calls were rewritten."""
    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is F.linear and _one_row(node.args[0]):
            weight = _value(node.args[1])
            if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.is_floating_point():
                node.target, n = gemv, n + 1
        elif node.target is F.scaled_dot_product_attention and _one_query_attention(node):
            node.target, n = attend_one, n + 1
    gm.recompile()
    return n


def _backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    from torch._inductor.compile_fx import compile_fx

    rewrite_for_decode(gm)  # in the traced graph itself, so inductor's caches key on the rewritten code
    return compile_fx(gm, example_inputs, config_patches={"size_asserts": False})  # fewer per-call checks


def _forward(model: Any, idx: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slots: torch.Tensor, valid: torch.Tensor, scratch: int) -> torch.Tensor:
    return model(idx, input_pos=positions, cache=CacheView(k, v, slots, positions, valid, scratch, static=True))


# The model and the cache are arguments, not constants: weights and cache tensors are graph inputs, so
# models of the same shape share one compilation and a new KV cache needs none.
decode_step = torch.compile(_forward, backend=_backend, fullgraph=True, dynamic=False)


def warm_up(model: Any, batch_size: int = 1) -> float:
    """Compile the decode step now (not at the first request); returns the seconds it took."""
    t0 = time.perf_counter()
    Engine(model, max_slots=batch_size, compile=True).generate(
        [[0]] * batch_size, SamplingParams(max_new_tokens=2, temperature=0))
    return time.perf_counter() - t0
