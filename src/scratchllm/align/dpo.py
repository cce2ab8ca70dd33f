"""Direct Preference Optimisation (Rafailov et al., 2023) against a frozen reference model.

For a pair (x, y_w, y_l), with log-ratios h_w = log pi(y_w|x) - log pi_ref(y_w|x) (same for y_l) and
delta = h_w - h_l, the per-pair losses are

    sigmoid  -(1 - e) log sigmoid(beta delta) - e log sigmoid(-beta delta)   (e: label smoothing, "cDPO")
    robust   (-(1 - e) log sigmoid(beta delta) + e log sigmoid(-beta delta)) / (1 - 2e)   (rDPO)
    ipo      (delta' - 1 / (2 beta))^2, delta' = h_w / |y_w| - h_l / |y_l|   (IPO, length-normalised as trl)

Optionally ``sft_coef`` adds the chosen replies' mean token negative log-likelihood (RPO, Pang et al. 2024;
trl's "sft" loss term), which keeps DPO from lowering the chosen replies' likelihood along with the
rejected ones. The implicit rewards are beta * h_w and beta * h_l; logged are their means, the margin and the
accuracy (fraction of pairs whose chosen reward is higher). log pi(y|x) is the sum of the reply's
token log-probs (prompt tokens excluded). Checked against trl's DPOTrainer in tests/align.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchError

LOSS_TYPES = ("sigmoid", "robust", "ipo")


def token_logps(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for every position: shape (B, T-1), float32."""
    logits = model(input_ids)[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    # gather - logsumexp: the same numbers as log_softmax + gather without a (B, T, V) log-prob tensor.
    return logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the completion tokens' log-probs per row (B,): log pi(reply | prompt)."""
    return (token_logps(model, input_ids) * completion_mask[:, 1:]).sum(-1)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses (B,) and the implicit rewards of the chosen and rejected replies (B,), (B,)."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    e = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - e) * F.logsigmoid(beta * delta) - e * F.logsigmoid(-beta * delta)
    elif loss_type == "robust":
        losses = (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (1 - 2 * e)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the IPO loss needs the reply lengths")
        avg_delta = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (avg_delta - 1 / (2 * beta)) ** 2
    else:
        raise ScratchError(f"unknown DPO loss type {loss_type!r}", f"choose from {', '.join(LOSS_TYPES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def check_dpo_settings(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ScratchError(f"dpo.loss_type: unknown {loss_type!r}", f"choose from {', '.join(LOSS_TYPES)}")
    if beta <= 0:
        raise ScratchError(f"dpo.beta must be > 0, got {beta}", "typical values are 0.05 to 0.5")
    if not 0.0 <= label_smoothing < 0.5:
        raise ScratchError(f"dpo.label_smoothing must be in [0, 0.5), got {label_smoothing}",
                           "it is the assumed fraction of flipped labels; 0 disables it")
    if loss_type == "ipo" and label_smoothing:
        raise ScratchError("dpo.label_smoothing has no effect with loss_type = \"ipo\"", "set it to 0")


def check_reference(policy: nn.Module, reference: nn.Module, names: Sequence[str] = ("policy", "reference")) -> None:
    """The reference must be the same network as the policy (same config, so the same tokens and shapes)."""
    a, b = getattr(policy, "cfg", None), getattr(reference, "cfg", None)
    if a is None or b is None:
        return
    fields = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "context_length", "pos_emb")
    diff = [f"{f}: {getattr(a, f)} vs {getattr(b, f)}" for f in fields if getattr(a, f) != getattr(b, f)]
    if diff:
        raise ScratchError(
            f"the {names[1]} model does not match the {names[0]} ({'; '.join(diff)})",
            "use the model the policy was fine-tuned from (the SFT checkpoint) as the reference",
        )


class DPOObjective:
    """``loss_fn(model, batch)`` for the Trainer: the batch holds 2B rows, chosen then rejected.

    The reference's log-probs are computed under no_grad with the frozen reference model (kept in
    eval mode, so dropout never changes them).
    """

    def __init__(self, reference: nn.Module, beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, sft_coef: float = 0.0) -> None:
        check_dpo_settings(beta, loss_type, label_smoothing)
        if sft_coef < 0:
            raise ScratchError(f"dpo.sft_coef must be >= 0, got {sft_coef}", "0 disables the NLL term")
        self.reference = reference.eval().requires_grad_(False)
        self.beta, self.loss_type, self.label_smoothing, self.sft_coef = beta, loss_type, label_smoothing, sft_coef

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask = batch["input_ids"], batch["completion_mask"]
        target_mask = mask[:, 1:]
        per_token = token_logps(model, ids)
        logps = (per_token * target_mask).sum(-1)
        with torch.no_grad():
            ref_logps = sequence_logps(self.reference, ids, mask)
        lengths = mask.sum(-1).float()
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        len_c, len_r = lengths.chunk(2)
        losses, r_c, r_r = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
                                    self.label_smoothing, len_c, len_r)
        loss = losses.mean()
        metrics = reward_metrics(r_c, r_r, chosen.detach(), rejected.detach())
        if self.sft_coef:
            chosen_tokens, chosen_mask = per_token.chunk(2)[0], target_mask.chunk(2)[0]
            nll = -(chosen_tokens * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
            loss = loss + self.sft_coef * nll
            metrics["nll/chosen"] = float(nll.detach())
        return loss, metrics


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                   chosen_logps: torch.Tensor | None = None,
                   rejected_logps: torch.Tensor | None = None) -> dict[str, float]:
    """Means of the rewards, their margin, and the pair accuracy (trl's ``rewards/*`` metrics)."""
    out = {
        "rewards/chosen": float(chosen_rewards.float().mean()),
        "rewards/rejected": float(rejected_rewards.float().mean()),
        "rewards/margins": float((chosen_rewards - rejected_rewards).float().mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
    }
    if chosen_logps is not None and rejected_logps is not None:
        out["logps/chosen"] = float(chosen_logps.float().mean())
        out["logps/rejected"] = float(rejected_logps.float().mean())
        # Does the policy itself rank the chosen reply higher? (meaningful before training, unlike rewards)
        out["logps/accuracies"] = float((chosen_logps > rejected_logps).float().mean())
    return out


@torch.no_grad()
def evaluate_pairs(objective: Any, model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Pair-weighted means of the loss and metrics of ``objective`` over held-out batches."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for batch in batches:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, metrics = objective(model, batch)
        k = batch["input_ids"].shape[0] // 2
        for key, value in {"loss": float(loss), **metrics}.items():
            totals[key] = totals.get(key, 0.0) + value * k
        n += k
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in totals.items()}
