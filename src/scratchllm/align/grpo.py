"""RLHF-style policy optimisation: GRPO (Shao et al., 2024) with a KL penalty to the reference.

Each step, for ``prompts_per_step`` prompts the policy samples ``group_size`` replies through the
continuous-batching inference engine (``scratchllm.infer``, one batch; a group's repeats reuse the
prompt's cached keys/values); each reply gets a reward (programmatic correctness on the
checkable tasks, or the reward model's score); a reply's advantage is its reward relative to its
group, ``A = (r - mean(r_group)) / (std(r_group) + eps)`` (no value network). The loss per reply token is
PPO's clipped surrogate plus the KL penalty to the frozen reference (k3 estimator, always >= 0):

    ratio = pi(t) / pi_old(t)
    L(t)  = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) + kl_coef (pi_ref(t)/pi(t) - log(pi_ref(t)/pi(t)) - 1)

averaged over all reply tokens of the batch (token-level, as DAPO and Dr. GRPO): every token weighs
the same, so a token shared by good and bad replies (the closing ``<|end|>``) gets balanced pushes. The
original per-reply average gives short replies' tokens more weight, which here taught the policy to stop
emitting ``<|end|>`` when the right answer was the longer one. Sampling happens in the batch source
(``RolloutSource.next_batch``, no gradients); the gradient step is the Trainer's ``train_step``.
With ``epochs_per_rollout = 1`` pi_old is the current policy (ratio = 1, plain policy gradient + KL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import time
import torch
from torch import nn

from scratchllm.align.data import ShuffledOrder, pad_sequences
from scratchllm.align.dpo import token_logps
from scratchllm.align.reward import score_rows
from scratchllm.errors import ScratchError
from scratchllm.infer.generate import SamplingParams, generate
from scratchllm.tasks.instruct import is_correct
from scratchllm.tokenizer.chat import END, encode_chat

RewardFn = Callable[[Sequence[Any], list[str], list[list[int]], list[list[int]]], torch.Tensor]


# --- generation with the KV-cache generator ----------------------------------------------------------


def prompt_ids(tokenizer: Any, prompts: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    return [encode_chat(tokenizer, p, add_generation_prompt=True)[0] for p in prompts]


def respond(model: nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
            temperature: float = 0.0, top_k: int = 0, seed: int | None = None) -> list[list[int]]:
    """Reply tokens per prompt, ending with ``<|end|>`` when the model closed its turn: one batch on the
    inference engine, row i seeded ``seed + i``; repeated prompts (a group) are prefilled once."""
    room = model.cfg.context_length - max(len(p) for p in prompts)
    if room < 1:
        raise ScratchError(f"a prompt of {max(len(p) for p in prompts)} tokens fills the model's context "
                           f"({model.cfg.context_length})", "shorten the prompts")
    params = SamplingParams(max_new_tokens=min(max_new_tokens, room), temperature=temperature, top_k=top_k,
                            stop_token_ids=[tokenizer.special_tokens[END]], seed=seed)
    return generate(model, prompts, params, tokenizer)


def reply_text(tokenizer: Any, tokens: list[int]) -> str:
    stops = {tokenizer.special_tokens[END], tokenizer.eos_id}
    return tokenizer.decode([t for t in tokens if t not in stops])


@torch.no_grad()
def evaluate_replies(model: nn.Module, tokenizer: Any, examples: Sequence[Any], max_new_tokens: int = 16,
                     reward_fn: RewardFn | None = None, batch_size: int = 64) -> dict[str, float]:
    """Greedy replies to the examples: ``task_accuracy`` (``is_correct``) and, with ``reward_fn``, mean ``reward``."""
    correct, rewards = [], []
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        prompts = prompt_ids(tokenizer, [e.prompt for e in chunk])
        replies = respond(model, tokenizer, prompts, max_new_tokens)
        texts = [reply_text(tokenizer, r) for r in replies]
        correct.append(checkable_reward(chunk, texts, prompts, replies))
        if reward_fn is not None:
            rewards.append(reward_fn(chunk, texts, prompts, replies).float())
    out = {"task_accuracy": float(torch.cat(correct).mean())}
    if rewards:
        out["reward"] = float(torch.cat(rewards).mean())
    return out


# --- rewards -----------------------------------------------------------------------------------------


def checkable_reward(examples: Sequence[Any], texts: list[str], prompts: list[list[int]],
                     replies: list[list[int]]) -> torch.Tensor:
    """1 for a reply that ``is_correct`` accepts, else 0."""
    return torch.tensor([float(is_correct(e, t)) for e, t in zip(examples, texts, strict=True)])


def model_reward(reward_model: nn.Module, pad_id: int) -> RewardFn:
    """The reward model's score of prompt + reply."""
    @torch.no_grad()
    def fn(examples: Sequence[Any], texts: list[str], prompts: list[list[int]], replies: list[list[int]]) -> torch.Tensor:
        device = next(reward_model.parameters()).device
        batch = pad_sequences(prompts, replies, pad_id)
        reward_model.eval()
        return score_rows(reward_model, batch["input_ids"].to(device), batch["completion_mask"].to(device)).cpu()

    return fn


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Reward minus its group's mean (groups = consecutive rows), divided by the group's std if ``scale``."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(-1, keepdim=True)
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + eps)
    return adv.flatten()


# --- the batch source: rollouts -----------------------------------------------------------------------


class RolloutSource:
    """Batches of fresh rollouts of ``model`` (the policy being trained) on the training examples.

    ``group_size`` replies per prompt, ``rollout.prompts_per_step`` prompts per batch; ``advantages(batch)``
    adds what the objective needs (GRPO: group-relative advantages; RLOO: leave-one-out advantages and
    the old log-probs); with ``epochs_per_rollout > 1`` the same batch is served that many times.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, examples: Sequence[Any], reward_fn: RewardFn,
                 rollout: Any, seed: int, group_size: int, epochs_per_rollout: int = 1,
                 advantages: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
        if not examples:
            raise ScratchError("no training prompts for policy optimisation", "check the data section")
        self.model, self.tokenizer, self.reward_fn = model, tokenizer, reward_fn
        self.rollout, self.seed = rollout, seed
        self.prompts = ShuffledOrder(examples, seed, "prompts")
        self.group_size, self.epochs_per_rollout = group_size, epochs_per_rollout
        self.advantages = advantages or (lambda b: {**b, "advantages": group_advantages(b["rewards"], group_size)})
        self.draws = 0
        self._pending: list[dict[str, torch.Tensor]] = []
        self.rollout_seconds = 0.0  # generating and scoring (the benchmark's rollout share)
        self.generated_tokens = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._pending:  # the same rollouts again (epochs_per_rollout > 1)
            return self._pending.pop()

        t0 = time.perf_counter()
        c = self.rollout
        picked = [e for e in self.prompts.take(c.prompts_per_step) for _ in range(self.group_size)]
        prompts = prompt_ids(self.tokenizer, [e.prompt for e in picked])
        replies = respond(self.model, self.tokenizer, prompts, c.max_new_tokens, c.temperature, c.top_k,
                          seed=self.seed + 7919 * self.draws)
        self.draws += 1
        self.generated_tokens += sum(len(r) for r in replies)
        texts = [reply_text(self.tokenizer, r) for r in replies]
        rewards = self.reward_fn(picked, texts, prompts, replies).float()
        batch = pad_sequences(prompts, replies, self.tokenizer.pad_id)
        batch["rewards"] = rewards
        self.rollout_seconds += time.perf_counter() - t0
        batch = self.advantages(batch)
        if self.epochs_per_rollout > 1 and "old_logps" not in batch:
            device = next(self.model.parameters()).device
            with torch.no_grad():
                batch["old_logps"] = token_logps(self.model, batch["input_ids"].to(device)).cpu()
        if self.epochs_per_rollout > 1:
            self._pending = [batch] * (self.epochs_per_rollout - 1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**self.prompts.state_dict(), "draws": self.draws, "pending": self._pending[:1] * len(self._pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompts.load_state_dict(state)
        self.draws = int(state["draws"])
        self._pending = list(state.get("pending", []))


class GRPOObjective:
    """``loss_fn(model, batch)`` for the Trainer on a rollout batch."""

    def __init__(self, reference: nn.Module, kl_coef: float = 0.05, clip_eps: float = 0.2) -> None:
        self.reference = reference.eval().requires_grad_(False)
        self.kl_coef, self.clip_eps = kl_coef, clip_eps

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["input_ids"]
        mask = batch["completion_mask"][:, 1:].float()
        logps = token_logps(model, ids)
        old = batch.get("old_logps", logps.detach())
        adv = batch["advantages"].unsqueeze(1)
        ratio = torch.exp(logps - old)
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps) * adv)
        per_token = -surrogate
        kl = torch.zeros_like(logps)
        if self.kl_coef:
            with torch.no_grad():
                ref = token_logps(self.reference, ids)
            kl = torch.exp(ref - logps) - (ref - logps) - 1
            per_token = per_token + self.kl_coef * kl
        n = mask.sum().clamp(min=1)
        loss = (per_token * mask).sum() / n
        clipped = ((ratio - 1).abs() > self.clip_eps).float()
        return loss, {
            "reward": float(batch["rewards"].mean()),
            "kl": float((kl.detach() * mask).sum() / n),
            "clip_frac": float((clipped * mask).sum() / n),
            "reply_len": float(mask.sum(-1).mean()),
        }
