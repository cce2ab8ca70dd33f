"""Tensor parallelism over the mesh's "tp" dimension, applied to an unchanged ``Transformer``.

Megatron's split, with PyTorch's ``parallelize_module`` (as torchtitan does):

* attention: q/k/v column-wise (each rank computes whole heads: n_heads/tp query and n_kv_heads/tp
  key/value heads), o row-wise; MLP: gate/up column-wise, down row-wise. One all-reduce-sized
  exchange per sub-layer in forward and one in backward, none inside attention or the SwiGLU.
* sequence parallelism: between sub-layers the residual stream is split over the sequence, so
  the RMSNorms (and their activations) cost 1/tp; the row-wise outputs reduce-scatter into it and
  the next column-wise inputs all-gather from it (same bytes as the plain all-reduce).
* embedding split over the vocabulary (row-wise), head split over the vocabulary (column-wise)
  and its logits left sharded: the cross-entropy runs on the shards (``loss_parallel``), so the
  full (tokens x vocab) logits never exist on one rank. A tied head shares the embedding's shard.

Parameter names do not change (they become DTensors), so checkpoints gather to the usual format.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def apply_tp(model: nn.Module, tp_mesh) -> None:
    """Shard ``model`` (a Transformer) in place over ``tp_mesh``; forward then returns vocab-sharded logits."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    tp = tp_mesh.size()
    tied = model.cfg.tie_embeddings
    plan = {}
    if getattr(model, "tok_emb", None) is not None:
        plan["tok_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if getattr(model, "norm", None) is not None:
        plan["norm"] = SequenceParallel()
        plan["lm_head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)
    parallelize_module(model, tp_mesh, plan)
    for block in _blocks(model):
        parallelize_module(block, tp_mesh, {
            "attn_norm": SequenceParallel(),
            # x arrives split over the sequence; attention needs all of it (rope, mask, cache pass through)
            "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                       desired_input_layouts=(Replicate(), None, None, None)),
            "attn.q_proj": ColwiseParallel(),
            "attn.k_proj": ColwiseParallel(),
            "attn.v_proj": ColwiseParallel(),
            "attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
        })
        # The attention code reshapes by head counts: this rank now holds 1/tp of the heads.
        block.attn.n_heads //= tp
        block.attn.n_kv_heads //= tp
    if hasattr(model, "seq_shards"):  # a pipeline stage: its input hidden states are sequence shards
        model.seq_shards = tp
    if tied and getattr(model, "tok_emb", None) is not None and getattr(model, "lm_head", None) is not None:
        # parallelize_module distributed the shared tensor twice: share one Shard(0) DTensor again
        # (row-wise embedding and column-wise head both split the (vocab, d_model) weight on dim 0).
        model.lm_head.weight = model.tok_emb.weight


def _blocks(model: nn.Module):
    layers = model.layers
    return layers.values() if isinstance(layers, nn.ModuleDict) else list(layers)


def loss_parallel_context(enabled: bool) -> contextlib.AbstractContextManager:
    """Cross-entropy over vocab-sharded logits; must enclose both the loss's forward and its backward."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


def to_local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's value as a plain tensor (a replicated loss or gathered logits); others unchanged."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
