"""Process groups, and what is applied *over* an unchanged model, in torchtitan's style.

Each ``apply_*`` function modifies or wraps a model built by ``Transformer(cfg)`` without touching
its code, and every one except ``apply_ddp`` keeps the parameter names, so checkpoints look the same
whatever was applied. Order, as in torchtitan: activation checkpointing, then compile, then
FSDP2 or DDP.

Launch with ``torchrun --nproc_per_node=N -m scratchllm train ...``: torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and ``init_distributed`` picks NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchllm.train.config import ac_every


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment; a single process needs none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def apply_ac(model: nn.Module, mode: str) -> int:
    """Activation checkpointing per block: "none", "full" or "every-N"; returns how many blocks.

    A checkpointed block keeps only its input for backward and recomputes its activations there,
    trading about one extra block forward for memory. The block's ``forward`` is replaced on the
    instance (not wrapped in another module), so parameter names and state dicts do not change.
    """
    every = ac_every(mode)
    if every == 0:
        return 0
    count = 0
    layers = model.layers.items() if isinstance(model.layers, nn.ModuleDict) else enumerate(model.layers)
    for i, block in layers:  # a pipeline stage's ModuleDict keeps the original layer indices
        if int(i) % every:
            continue
        original = block.forward

        def forward(*args, _original=original, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        count += 1
    return count


def apply_compile(model: nn.Module, scope: str = "model") -> None:
    """torch.compile in place (``Module.compile``: names unchanged): the whole model or each block.

    Per-block compilation (torchtitan) compiles one block's graph and reuses it for all of them,
    and composes with FSDP2's per-block hooks; whole-model compilation also fuses the head and loss.
    """
    if scope == "blocks":
        for block in (model.layers.values() if isinstance(model.layers, nn.ModuleDict) else model.layers):
            block.compile()
    else:
        model.compile()


def apply_ddp(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel (gradients all-reduced in buckets, overlapped with backward).

    Returns the wrapper; keep the unwrapped model for saving (its names have no "module." prefix).
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def apply_fsdp(model: nn.Module, param_dtype: torch.dtype | None = None, mesh=None) -> nn.Module:
    """FSDP2: shard every block, then the root (embedding, final norm, head), across all processes.

    Parameters become DTensors holding 1/world of each tensor; a block's full weights are
    all-gathered just before its forward and backward and freed after. ``param_dtype`` (bf16) makes
    the gathered copies and the compute bf16 while the sharded master weights and the gradient
    reduction stay fp32. ``mesh``: the data-parallel dimension of a DeviceMesh (default: all
    processes). Modifies ``model`` in place and returns it.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    blocks = list(model.layers.values() if isinstance(model.layers, nn.ModuleDict) else model.layers)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model

