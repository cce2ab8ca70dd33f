"""The device mesh: how ``train.tp`` x ``train.pp`` x data parallel split the processes.

Mesh dimensions are ("pp", "dp", "tp"), outermost first as in torchtitan: tensor-parallel peers
are neighbouring ranks (on one node, where links are fastest), pipeline stages the furthest apart.
Data parallelism takes what is left: ``dp = world_size / (tp * pp)``. Every check runs before any
model is built, so a bad layout fails at once, naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.train.parallel import Dist, apply_ac, apply_compile, apply_fsdp
from scratchllm.train.pp import Pipeline, RankModel, build_stages
from scratchllm.train.tp import apply_tp


@dataclass
class Layout:
    """This process's place in the mesh; a single process (or plain DDP/FSDP2) has tp = pp = 1."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int = 0
    mesh: Any = None  # torch DeviceMesh over ("pp", "dp", "tp"), or None without tp/pp

    @property
    def nd(self) -> bool:
        """True when tensor or pipeline parallelism is on (the mesh code paths are needed)."""
        return self.tp > 1 or self.pp > 1

    def submesh(self, name: str) -> Any:
        return self.mesh[name] if self.mesh is not None else None

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def check_layout(train: Any, model: Any, world_size: int) -> tuple[int, int, int]:
    """(tp, pp, dp) for ``train`` (a TrainSection) and ``model`` (a ModelConfig); ScratchError if they do not fit."""
    tp, pp = train.tp, train.pp
    if tp < 1 or pp < 1:
        raise ScratchError(f"train.tp and train.pp must be >= 1, got tp={tp}, pp={pp}")
    if world_size % (tp * pp):
        raise ScratchError(
            f"train.tp={tp} x train.pp={pp} = {tp * pp} does not divide the {world_size} processes",
            "launch a multiple of tp*pp processes (torchrun --nproc_per_node ... --nnodes ...), or change tp/pp",
        )
    dp = world_size // (tp * pp)
    if tp > 1:
        for key in ("n_heads", "n_kv_heads"):
            if getattr(model, key) % tp:
                raise ScratchError(
                    f"train.tp={tp} does not divide model.{key}={getattr(model, key)}",
                    "each tensor-parallel rank holds whole attention heads: pick tp dividing n_heads and n_kv_heads",
                )
        if model.d_ff % tp:
            raise ScratchError(f"train.tp={tp} does not divide model.d_ff={model.d_ff}", "pick tp dividing d_ff")
        if model.pos_emb != "rope":
            raise ScratchError(f"train.tp needs model.pos_emb=\"rope\", got {model.pos_emb!r}",
                               "sequence parallelism shards the sequence, which absolute position tables do not")
        if model.dropout:
            raise ScratchError("train.tp needs model.dropout=0 (dropout masks are not coordinated across ranks)")
        if getattr(train, "compile", False):
            # Seen with torch 2.13: per-block compile fails in DTensor's redistribute backward, whole-model
            # compile on the vocab-sharded logits' tangent (tests/train/test_mesh.py tried both).
            raise ScratchError(
                f"train.compile=true with train.tp={tp}: torch.compile over tensor-parallel DTensors fails in "
                "backward with this torch version",
                "set train.compile=false for tp runs (compile works with pp and FSDP2)",
            )
    if pp > 1:
        if model.n_layers < pp * train.pp_stages_per_rank:
            raise ScratchError(
                f"train.pp={pp} x {train.pp_stages_per_rank} stages per rank needs at least that many layers, "
                f"model.n_layers={model.n_layers}",
                "lower train.pp (or pp_stages_per_rank), or use a deeper model",
            )
        if train.batch_size % train.pp_microbatches:
            raise ScratchError(
                f"train.batch_size={train.batch_size} does not split into train.pp_microbatches="
                f"{train.pp_microbatches}",
                "make batch_size a multiple of pp_microbatches",
            )
        if train.pp_schedule == "1f1b" and train.pp_microbatches < pp:
            raise ScratchError(
                f"train.pp_schedule=\"1f1b\" needs train.pp_microbatches >= the {pp} stages, "
                f"got {train.pp_microbatches}",
                "raise pp_microbatches (4 x stages keeps the bubble small), or use gpipe",
            )
        if train.pp_schedule == "interleaved-1f1b" and train.pp_microbatches % pp:
            raise ScratchError(
                f"train.pp_schedule=\"interleaved-1f1b\" needs train.pp_microbatches ({train.pp_microbatches}) "
                f"to be a multiple of train.pp ({pp})", "change pp_microbatches")
    if dp > 1 and (tp > 1 or pp > 1) and train.parallel != "fsdp":
        raise ScratchError(
            f"train.parallel={train.parallel!r} with tp/pp: the {dp} data-parallel groups need train.parallel=\"fsdp\"",
            "set train.parallel=fsdp (FSDP2 over the data-parallel dimension), or use tp*pp = world size",
        )
    if dp > 1 and train.parallel == "none":
        raise ScratchError(f"launched on {world_size} processes but train.parallel = \"none\"",
                           "set train.parallel=ddp or train.parallel=fsdp, or run without torchrun")
    return tp, pp, dp


def build_layout(train: Any, model: Any, d: Dist, device_type: str) -> Layout:
    """Check the layout, then build the DeviceMesh (only when tp or pp > 1)."""
    tp, pp, dp = check_layout(train, model, d.world_size)
    if tp == 1 and pp == 1:
        return Layout(dp=dp, dp_rank=d.rank)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
    return Layout(tp, pp, dp, mesh.get_local_rank("tp"), mesh.get_local_rank("pp"), mesh.get_local_rank("dp"), mesh)


def parallelize(model: Any, layout: Layout, train: Any, device: Any, param_dtype: Any = None) -> tuple[Any, Any]:
    """Apply pp, then tp, then activation checkpointing and compile, then FSDP2 over "dp" (torchtitan's order).

    Returns (rank_model, pipeline): the module holding this rank's parameters under their full-model
    names (the model itself without pp), and the ``Pipeline`` running the schedule (None without pp).
    """
    model.to(device)
    if layout.pp > 1:
        stages = build_stages(model, layout.pp_rank, layout.pp, train.pp_stages_per_rank)
    else:
        stages = [model]
    for st in stages:
        if layout.tp > 1:
            apply_tp(st, layout.submesh("tp"))
        apply_ac(st, train.activation_checkpointing)
        if train.compile:
            apply_compile(st, train.compile_scope)
        if layout.dp > 1:
            apply_fsdp(st, param_dtype, mesh=layout.submesh("dp"))
    if layout.pp == 1:
        return model, None

    pipe = Pipeline(stages, layout, train, device, loss_parallel=layout.tp > 1)
    return RankModel(stages, model.cfg), pipe
