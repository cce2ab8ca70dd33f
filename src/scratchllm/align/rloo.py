"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., 2024; Kool et al., 2019), as trl's RLOOTrainer.

For each prompt the policy samples k replies (``rloo.group_size``). Each reply's reward carries the KL
penalty as a sequence-level term, r_i = score_i - beta * sum_t (log pi_old(t) - log pi_ref(t)); its baseline is
the mean reward of the other k - 1 replies of the same prompt, so A_i = r_i - mean_{j != i} r_j (optionally
whitened over the batch). The loss is PPO-clipped on the sequence probability ratio, one term per reply:

    ratio_i = pi(y_i | x) / pi_old(y_i | x)    L = mean_i -min(ratio_i A_i, clip(ratio_i, 1 - eps, 1 + eps) A_i)

No value network, no per-token credit assignment: the cheapest of the RL methods here. With one optimizer
step per rollout the ratio is 1 and this is plain REINFORCE with the leave-one-out baseline.
Checked against trl's ``RLOOTrainer`` in tests/align/test_rloo_reference.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scratchllm.align.dpo import token_logps


def rloo_advantages(rewards: torch.Tensor, group_size: int, normalize: bool = False) -> torch.Tensor:
    """r_i - mean of the other replies' rewards in its group (groups = consecutive rows); optionally whitened."""
    r = rewards.view(-1, group_size)
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    adv = (r - baseline).flatten()
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-4)
    return adv


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
              clip_eps: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean clipped sequence-level surrogate; logps (B,) are sums over each reply. Returns (loss, clipped (B,))."""
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages).mean()
    clipped = ((ratio < 1 - clip_eps) & (advantages < 0)) | ((ratio > 1 + clip_eps) & (advantages > 0))
    return loss, clipped


def rloo_prepare(policy: nn.Module, reference: nn.Module, group_size: int, kl_coef: float = 0.05,
                 normalize: bool = False) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """The rollout source's ``advantages`` hook: old and reference log-probs, KL-penalised rewards, RLOO advantages."""

    @torch.no_grad()
    def prepare(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = next(policy.parameters()).device
        ids = batch["input_ids"].to(device)
        mask = batch["completion_mask"][:, 1:].float().to(device)
        was_training = policy.training
        policy.eval()
        old = token_logps(policy, ids)
        policy.train(was_training)
        kl = torch.zeros(ids.shape[0], device=device)
        if kl_coef:
            kl = ((old - token_logps(reference, ids)) * mask).sum(-1)
        scores = batch["rewards"].to(device)
        adv = rloo_advantages(scores - kl_coef * kl, group_size, normalize)
        return {**batch, "old_logps": old.cpu(), "advantages": adv.cpu(), "kl": kl.mean().cpu()}

    return prepare


class RLOOObjective:
    """``loss_fn(model, batch)`` for the Trainer on an RLOO rollout batch."""

    def __init__(self, clip_eps: float = 0.2) -> None:
        self.clip_eps = clip_eps

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["input_ids"]
        mask = batch["completion_mask"][:, 1:].float()
        logps = (token_logps(model, ids) * mask).sum(-1)
        old = (batch["old_logps"] * mask).sum(-1)
        loss, clipped = rloo_loss(logps, old, batch["advantages"], self.clip_eps)
        return loss, {
            "reward": float(batch["rewards"].mean()),
            "kl": float(batch["kl"]) if "kl" in batch else 0.0,
            "clip_frac": float(clipped.float().mean()),
            "reply_len": float(mask.sum(-1).mean()),
        }
