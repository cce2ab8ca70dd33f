"""Pipeline parallelism over the mesh's "pp" dimension with ``torch.distributed.pipelining``.

The layers are cut into ``pp * pp_stages_per_rank`` contiguous stages, balanced by the matmul
parameters each holds (the head counts with the last stage: it is a d_model x vocab matmul per
token). A stage is a ``StageModule``: a view of the model's own embedding, blocks, norm and head,
registered under the same names ("layers.5.attn.q_proj.weight"), so the stages' state dicts are
pieces of the full model's and a checkpoint merges back into the single-process format.

Each optimizer step's micro-batch is cut again into ``pp_microbatches`` pipeline micro-batches
and run by a schedule: GPipe (all forwards, then all backwards: activations of every
micro-batch alive at once), 1F1B (one forward one backward in the steady state: at most ``pp``
in flight) or interleaved 1F1B (several smaller stages per rank: a smaller bubble, more sends).
The idle fraction ("bubble") of GPipe and 1F1B is (p-1)/(m+p-1) for p stages and m micro-batches.

A head tied to the embedding lives on the first and on the last stage: both copies start equal,
their gradients are summed across the two stages after backward, and so they stay equal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from scratchllm.model.model import IGNORE_INDEX
from scratchllm.train.tp import loss_parallel_context, to_local


def split_layers(model: nn.Module, n_stages: int) -> list[list[int]]:
    """Contiguous layer ranges, one per stage, minimising the largest stage's matmul parameters."""
    cost = [sum(p.numel() for p in block.parameters()) for block in model.layers]
    head = model.lm_head.weight.numel()
    n = len(cost)

    def stage_cost(a: int, b: int, s: int) -> int:
        return sum(cost[a:b]) + (head if s == n_stages - 1 else 0)

    # best[s][i]: smallest max-stage cost of putting layers[:i] into stages 0..s-1 (n is small: O(S n^2)).
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(n_stages + 1)]
    best[0][0] = 0
    for s in range(1, n_stages + 1):
        for i in range(s, n - (n_stages - s) + 1):
            for j in range(s - 1, i):
                c = max(best[s - 1][j], stage_cost(j, i, s - 1))
                if c < best[s][i]:
                    best[s][i], cut[s][i] = c, j
    ranges, i = [], n
    for s in range(n_stages, 0, -1):
        j = cut[s][i]
        ranges.append(list(range(j, i)))
        i = j
    return ranges[::-1]


class StageModule(nn.Module):
    """Stage ``index`` of ``n_stages``: the model's modules for it under their original names."""

    def __init__(self, model: nn.Module, layer_ids: list[int], index: int, n_stages: int) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = index == 0, index == n_stages - 1
        self.seq_shards = 1  # set to tp by apply_tp
        if self.first or (self.last and model.cfg.tie_embeddings):
            # On the last stage a tied embedding is held (never looked up) so its weight keeps its
            # canonical name and its "embedding" weight-decay exemption.
            self.tok_emb = model.tok_emb
        if self.first and hasattr(model, "pos_emb"):
            self.pos_emb = model.pos_emb
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        if self.last:
            self.norm, self.lm_head = model.norm, model.lm_head
        for name in ("rope_cos", "rope_sin", "pos_table"):
            if hasattr(model, name):
                self.register_buffer(name, getattr(model, name), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Token ids (first stage) or hidden states in; hidden states or logits (last stage) out."""
        # Under tp, hidden states between stages are split over the sequence (sequence parallel).
        T = h.size(1) * (1 if self.first else self.seq_shards)
        pos = torch.arange(T, device=h.device)
        if self.first:
            x = self.tok_emb(h)
            if self.cfg.pos_emb == "learned":
                x = x + self.pos_emb(pos)
            elif self.cfg.pos_emb == "sinusoidal":
                x = x + self.pos_table[:T]
        else:
            x = h
        rope = None
        if self.cfg.pos_emb == "rope":
            rope = (self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype))
        for layer in self.layers.values():
            x = layer(x, rope, None, None)  # (x, rope, mask, cache): training has no KV cache; tp expects 4 inputs
        if self.last:
            logits = self.lm_head(self.norm(x))
            # tp: vocab-sharded logits leave the stage as this rank's plain shard (the schedule's
            # shape inference and backward seeding handle plain tensors); the loss re-wraps them.
            return logits.to_local() if hasattr(logits, "to_local") else logits
        return x


def stage_indices(pp_rank: int, pp: int, per_rank: int) -> list[int]:
    """The stages this rank runs: one, or with interleaving every pp-th ("loop" placement)."""
    return [pp_rank + k * pp for k in range(per_rank)]


def build_stages(model: nn.Module, pp_rank: int, pp: int, per_rank: int) -> list[StageModule]:
    n_stages = pp * per_rank
    ranges = split_layers(model, n_stages)
    return [StageModule(model, ranges[s], s, n_stages) for s in stage_indices(pp_rank, pp, per_rank)]


class RankModel(nn.Module):
    """This rank's stages as one module (for the optimizer and state dicts): names as in the full model."""

    def __init__(self, stages: list[StageModule], cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleDict()
        for st in stages:
            for name, child in st.named_children():
                if name == "layers":
                    self.layers.update(child)
                elif not hasattr(self, name):
                    setattr(self, name, child)


class Pipeline:
    """The schedule for this rank's stages, and the gradient bookkeeping across stages."""

    def __init__(self, stages: list[nn.Module], layout: Any, train: Any, device: torch.device,
                 loss_parallel: bool) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        self.layout, self.stages, self.device = layout, stages, device
        self.microbatches = train.pp_microbatches
        self.loss_parallel = loss_parallel
        self.accum = 1
        pp_group = layout.mesh.get_group("pp")
        n_stages = layout.pp * train.pp_stages_per_rank
        idx = stage_indices(layout.pp_rank, layout.pp, train.pp_stages_per_rank)
        self.pipe_stages = [PipelineStage(m, i, n_stages, device, group=pp_group) for m, i in zip(stages, idx)]
        # scale_grads=False: the loss is already divided by microbatches * grad_accum, so gradients
        # accumulated over several step() calls are not divided again.
        kinds = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
        if train.pp_schedule == "interleaved-1f1b":
            self.schedule = ScheduleInterleaved1F1B(self.pipe_stages, self.microbatches, loss_fn=self._loss,
                                                    scale_grads=False)
        else:
            self.schedule = kinds[train.pp_schedule](self.pipe_stages[0], self.microbatches, loss_fn=self._loss,
                                                     scale_grads=False)
        self.has_last = any(st.last for st in stages)
        self.tied_group = self._tied_group(layout) if stages[0].cfg.tie_embeddings else None

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss_parallel:
            from torch.distributed.tensor import DTensor, Shard

            # The vocabulary may not divide by tp (uneven shards): give the global shape explicitly.
            B, T, _ = logits.shape
            V = self.stages[-1].cfg.vocab_size
            logits = DTensor.from_local(logits, self.layout.submesh("tp"), [Shard(-1)], run_check=False,
                                        shape=torch.Size((B, T, V)), stride=(T * V, V, 1))
        # Called inside the loss_parallel context of forward_backward/eval_loss (never nest it here:
        # leaving an inner one would uninstall the sharded cross-entropy before its backward runs).
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        if hasattr(loss, "to_local"):
            # A replicated DTensor loss: the schedule seeds its backward with a plain tensor, so hand
            # it the (differentiable) local value; the gradient flows back into the DTensor graph.
            loss = loss.to_local()
        return loss / (self.microbatches * self.accum)

    @staticmethod
    def _tied_group(layout: Any):
        """A group per (dp, tp) coordinate joining its first and last pipeline stage (all ranks create all)."""
        mine = None
        ranks = layout.mesh.mesh  # (pp, dp, tp) tensor of global ranks
        for a in range(ranks.size(1)):
            for b in range(ranks.size(2)):
                pair = [int(ranks[0, a, b]), int(ranks[-1, a, b])]
                group = dist.new_group(pair)
                if dist.get_rank() in pair:
                    mine = group
        return mine

    def forward_backward(self, batches: list, accum: int) -> torch.Tensor:
        """Run the schedule on each micro-batch; returns the mean loss (0 on ranks without the last stage)."""
        self.accum = accum
        total = torch.zeros((), device=self.device)
        for x, y in batches:
            losses: list = []
            # loss_parallel must also enclose the backward of the vocab-sharded cross-entropy.
            with loss_parallel_context(self.loss_parallel):
                if self.layout.first_stage:
                    self.schedule.step(x, target=y, losses=losses, return_outputs=False)
                else:
                    self.schedule.step(target=y, losses=losses, return_outputs=False)
            for loss in losses:  # each is its micro-batch's mean / (microbatches * accum): the batch mean
                total += to_local(loss.detach()).float() * accum
        self.sync_tied_grads()
        return total / len(batches)

    @torch.no_grad()
    def eval_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        self.accum = 1
        losses: list = []
        with loss_parallel_context(self.loss_parallel):
            if self.layout.first_stage:
                self.schedule.eval(x, target=y, losses=losses)
            else:
                self.schedule.eval(target=y, losses=losses)
        if not losses:
            return torch.zeros((), device=self.device)
        return sum(to_local(v).float() for v in losses)

    def tied_weight(self) -> nn.Parameter | None:
        emb = next((getattr(st, "tok_emb", None) for st in self.stages if hasattr(st, "tok_emb")), None)
        return emb.weight if emb is not None and self.tied_group is not None else None

    def sync_tied_grads(self) -> None:
        w = self.tied_weight()
        if w is None or w.grad is None:
            return
        if hasattr(w.grad, "placements") and w.grad.placements != w.placements:
            # tp: the embedding's gradient comes back replicated; take this rank's shard (no communication)
            w.grad = w.grad.redistribute(w.device_mesh, w.placements)
        g = w.grad._local_tensor if hasattr(w.grad, "_local_tensor") else w.grad
        dist.all_reduce(g, group=self.tied_group)

    def grad_norm(self, params: list[nn.Parameter], clip: float) -> torch.Tensor:
        """The global gradient norm over every stage (a tied weight counted once), clipping if clip > 0."""
        skip = self.tied_weight() if not self.layout.first_stage else None
        grads = [p.grad for p in params if p.grad is not None and p is not skip]
        local = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros((), device=self.device)
        if hasattr(local, "full_tensor"):
            local = local.full_tensor()
        sq = local.float() ** 2
        dist.all_reduce(sq, group=self.layout.mesh.get_group("pp"))
        norm = sq.sqrt()
        if clip > 0:  # as clip_grad_norm_ does, with a python scalar (grads may be DTensors)
            coef = min(1.0, clip / (float(norm) + 1e-6))
            if coef < 1.0:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(coef)
        return norm


def gather_full_states(rank_model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state of every stage, merged on rank 0 (others get empty dicts).

    Each rank gathers its stage's tensors over "dp" and "tp" (``torch.distributed.checkpoint``'s
    state-dict API), then rank 0 collects the stages: the result is the single-process format.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    model_state = {k: v.detach().cpu() for k, v in get_model_state_dict(rank_model, options=opts).items()}
    optim_state = _to_cpu(get_optimizer_state_dict(rank_model, optimizer, options=opts))
    parts: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((model_state, optim_state), parts, dst=0)
    if parts is None:
        return {}, {}
    merged_model: dict = {}
    merged_optim: dict = {"state": {}, "param_groups": []}
    for ms, osd in parts:
        merged_model.update(ms)
        merged_optim["state"].update(osd["state"])
        for i, group in enumerate(osd["param_groups"]):
            if i == len(merged_optim["param_groups"]):
                merged_optim["param_groups"].append({**group, "params": []})
            target = merged_optim["param_groups"][i]
            target["params"] += [p for p in group["params"] if p not in target["params"]]
    return merged_model, merged_optim


def optimizer_part(optim_state: dict, names: set[str]) -> dict:
    """The part of a full optimizer state dict (keyed by parameter names) for the parameters in ``names``."""
    groups = [{**g, "params": [p for p in g["params"] if p in names]} for g in optim_state["param_groups"]]
    return {"state": {k: v for k, v in optim_state["state"].items() if k in names},
            "param_groups": [g for g in groups if g["params"]]}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
