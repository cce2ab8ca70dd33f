"""Reward model: the decoder with a scalar head, trained on preference pairs with the Bradley-Terry loss.

    r(x, y) = w . h_last,   h_last = the final hidden state (after the last RMSNorm) at the reply's last token
    P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l))       loss = -log sigmoid(r_w - r_l)

The model is our ``Transformer`` whose vocabulary head is replaced by a ``d_model -> 1`` head (as
``LlamaForSequenceClassification``'s ``score``), so it starts from the SFT model's body. The reply's last
token is its ``<|end|>``: the score reads the whole prompt and reply. Saved as a model directory plus
``reward.json``; ``Transformer.from_pretrained`` refuses it (the head's shape differs).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text
from scratchllm.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checked, read_config, read_safetensors
from scratchllm.model.model import ModelConfig, Transformer

MARKER = "reward.json"


class RewardModel(Transformer):
    """``forward(idx)`` gives a score per position (B, T); ``score(ids, mask)`` the score per sequence (B,)."""

    def __init__(self, cfg: ModelConfig) -> None:
        # The head is no longer the (tied) vocabulary projection, so the config says untied.
        super().__init__(dataclasses.replace(cfg, tie_embeddings=False))
        self.lm_head = nn.Linear(self.cfg.d_model, 1, bias=False)
        nn.init.normal_(self.lm_head.weight, 0.0, 1.0 / (self.cfg.d_model + 1) ** 0.5)

    @classmethod
    def from_policy(cls, policy: Transformer) -> RewardModel:
        """A reward model with the policy's body (everything but the vocabulary head)."""
        model = cls(policy.cfg)
        body = {k: v for k, v in policy.state_dict().items() if not k.startswith("lm_head.")}
        missing, unexpected = model.load_state_dict(body, strict=False)
        assert missing == ["lm_head.weight"] and not unexpected, (missing, unexpected)
        return model

    def forward(self, idx: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        return super().forward(idx, **kwargs).squeeze(-1)

    def score(self, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        """The score at each row's last completion token (rows are right-padded)."""
        return score_rows(self, input_ids, completion_mask)

    def save_pretrained(self, directory: str | Path) -> None:
        super().save_pretrained(directory)
        atomic_write_text(Path(directory) / MARKER, json.dumps({"kind": "reward_model", "head": "score"}) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> RewardModel:
        directory = Path(directory)
        if not (directory / MARKER).is_file():
            raise ScratchError(f"{directory} is not a reward model directory (no {MARKER})",
                               "train one with `scratchllm align reward`, or pass the reward model's directory")
        model = cls(read_config(directory / CONFIG_FILE))
        load_checked(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
        return model.to(map_location)


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigmoid(r_w - r_l [- margin]), per pair."""
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


class RewardObjective:
    """``loss_fn(model, batch)`` for the Trainer: 2B rows, chosen then rejected."""

    def __init__(self, center_coef: float = 0.0) -> None:
        # center_coef * mean(r^2) keeps scores near 0 (the scale is otherwise free); 0 disables it.
        self.center_coef = center_coef

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = score_rows(model, batch["input_ids"], batch["completion_mask"])
        chosen, rejected = scores.chunk(2)
        loss = bradley_terry_loss(chosen, rejected).mean()
        if self.center_coef:
            loss = loss + self.center_coef * (chosen + rejected).pow(2).mean()
        return loss, {
            "accuracy": float((chosen > rejected).float().mean()),
            "rewards/chosen": float(chosen.detach().mean()),
            "rewards/rejected": float(rejected.detach().mean()),
            "rewards/margins": float((chosen - rejected).detach().mean()),
        }


def score_rows(model: nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Per-row score at the last completion token; ``model`` may be wrapped (DDP, compile): it is only called."""
    values = model(input_ids).float()
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (completion_mask * positions).argmax(-1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def pair_accuracy(model: RewardModel, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Held-out pair accuracy (fraction with r_chosen > r_rejected) and mean Bradley-Terry loss."""
    was_training = model.training
    model.eval()
    correct, losses, n = 0.0, 0.0, 0
    device = next(model.parameters()).device
    for batch in batches:
        scores = model.score(batch["input_ids"].to(device), batch["completion_mask"].to(device))
        chosen, rejected = scores.chunk(2)
        correct += float((chosen > rejected).sum())
        losses += float(bradley_terry_loss(chosen, rejected).sum())
        n += chosen.numel()
    model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": losses / max(n, 1), "pairs": n}
