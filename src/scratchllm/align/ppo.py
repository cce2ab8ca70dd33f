"""PPO for language models with a learned value function (InstructGPT; Ouyang et al., 2022), following
Huang et al., "The N Implementation Details of RLHF with PPO" (2024) and trl's former PPOv2 trainer.

One rollout (``PPORolloutSource``, no gradients): the policy samples one reply per prompt through the
generation engine (``align.grpo.respond``); the reward model or the checker scores it (minus
``unfinished_penalty`` when the reply never closed with ``<|end|>``); the old policy's log-probs, the
reference's log-probs and the value estimates are recorded. Per reply token t (mask: reply tokens only)

    r_t   = -beta (log pi_old(t) - log pi_ref(t))  (+ score at the reply's last token)
    delta = r_t + gamma V(t+1) - V(t)              (V after the last reply token = 0: the episode ends)
    A_t   = delta_t + gamma lam A_{t+1}            (GAE), returns R_t = A_t + V(t), then A whitened

Then ``epochs`` passes over shuffled minibatches of the rollout, one optimizer step each (``PPOObjective``):

    ratio = pi(t) / pi_old(t)
    L_pg  = mean_t max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))
    L_vf  = 0.5 mean_t max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)
    L     = L_pg + vf_coef L_vf - entropy_coef H

Logged: ``approx_kl`` = 0.5 mean (log ratio)^2, ``entropy``, clip fractions, the rollout's ``reward``
(score), ``kl`` to the reference (summed over the reply, averaged over replies) and ``kl_coef``, which
follows the adaptive controller of Ziegler et al. (2019) when ``target_kl`` is set. ``stop_kl`` skips the
rest of a rollout's minibatches once approx KL exceeds it (early stop); a rollout whose KL to the
reference is not finite or above ``max_kl`` stops the run with an error (the last checkpoint is kept).
The value function is a separate critic (a ``RewardModel``: from models.value_model, the reward model,
or the policy's body) or a head on the policy's last hidden state (``value_model = "shared"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import time

import torch
import torch.distributed as dist
from torch import nn

from scratchllm.align.data import ShuffledOrder, pad_sequences
from scratchllm.align.grpo import prompt_ids, reply_text, respond
from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import END
from scratchllm.train.parallel import Dist

# --- the math: small functions on (B, T) tensors, mask = 1 on reply tokens --------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; ``shift_mean=False`` keeps the mean (scale only)."""
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + 1e-8)
    return out if shift_mean else out + mean


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last reply token (rows have at least one)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask * positions).argmax(-1)


def per_token_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl): -kl_coef * (logp - ref_logp) per reply token, plus the score at the last one."""
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_positions(mask)] += scores.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over right-padded replies.

    Outside the mask rewards and values count as 0, so the step after a reply's last token is terminal
    (V = 0) and padding contributes nothing. Returns (advantages, returns = advantages + values), 0 off-mask.
    """
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def ppo_losses(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
               old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
               clip_value: float = 0.2, n_tokens: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """The clipped surrogate and the clipped value loss, token means over the mask, and diagnostics.

    ``n_tokens``: divide the masked sums by this rather than by the mask's own count (under DDP the global
    minibatch's token count, so the ranks' terms add up to the global token means)."""

    def mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask) if n_tokens is None else (x * mask).sum() / n_tokens

    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    v_clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    vf1, vf2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    with torch.no_grad():
        clip_frac = mean((pg2 > pg1).float())
        vf_clip_frac = mean((vf2 > vf1).float())
        approx_kl = 0.5 * mean(log_ratio**2)
    return {"pg_loss": mean(torch.max(pg1, pg2)), "vf_loss": 0.5 * mean(torch.max(vf1, vf2)),
            "clip_frac": clip_frac, "vf_clip_frac": vf_clip_frac, "approx_kl": approx_kl}


def logps_and_entropy(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position t of (B, T-1): log p(input_ids[t+1]) and the entropy of the next-token distribution,
    at the sampling temperature (as the rollout sampled them)."""
    logits = logits[:, :-1].float() / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logps, entropy


class AdaptiveKLController:
    """beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon (Ziegler et al., 2019); fixed if target = 0."""

    def __init__(self, kl_coef: float, target: float = 0.0, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n / self.horizon


# --- the model: policy + value function -------------------------------------------------------------


class ActorCritic(nn.Module):
    """``forward(ids) -> (logits (B, T, V), values (B, T))``; one module so the Trainer (and DDP) see both.

    ``critic``: a separate value network (a ``RewardModel``, whose per-position scores are the values);
    None: a value head on the policy's final hidden state (after its last norm), sharing the body.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None) -> None:
        super().__init__()
        self.policy, self.critic = policy, critic
        if critic is None:
            self.value_head = nn.Linear(policy.cfg.d_model, 1, bias=False)
            nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no random early advantages
        self.cfg = policy.cfg  # the Trainer records it with checkpoints

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.critic is not None:
            return self.policy(input_ids), self.critic(input_ids).float()
        hidden: list[torch.Tensor] = []
        handle = self.policy.norm.register_forward_hook(lambda m, i, out: hidden.append(out))
        try:
            logits = self.policy(input_ids)
        finally:
            handle.remove()
        return logits, self.value_head(hidden[-1]).squeeze(-1).float()


def check_critic(policy: nn.Module, critic: nn.Module, what: str) -> None:
    """A separate critic reads the policy's tokens: same vocabulary, and room for the policy's context."""
    a, b = policy.cfg, critic.cfg
    if a.vocab_size != b.vocab_size or b.context_length < a.context_length:
        raise ScratchError(
            f"the {what} does not match the policy (vocab_size {b.vocab_size} vs {a.vocab_size}, context_length "
            f"{b.context_length} vs {a.context_length})",
            "use a value/reward model trained from the same SFT model (`scratchllm align reward`), or "
            "ppo.value_model=shared")


# --- rollouts -----------------------------------------------------------------------------------------


def check_prompt_lengths(tokenizer: Any, examples: Sequence[Any], context_length: int, what: str) -> None:
    """Every prompt must leave room for at least one reply token (checked before any training)."""
    for i in range(0, len(examples), 256):
        for j, ids in enumerate(prompt_ids(tokenizer, [e.prompt for e in examples[i : i + 256]])):
            if len(ids) >= context_length:
                raise ScratchError(f"{what} prompt {i + j} has {len(ids)} tokens; the model's context is "
                                   f"{context_length}, leaving no room for a reply",
                                   "shorten or drop the long prompts (or use a model with a longer context)")


class PPORolloutSource:
    """The Trainer's batch source for PPO: rollouts, then ``epochs`` x minibatches of each, one per step.

    Its state (prompt order, draws, the KL coefficient and the minibatches still queued) goes into
    checkpoints, so a run resumed in the middle of a rollout continues with the very same minibatches.

    Under DDP (``dist_info`` with world size W) every rank draws the same prompts and samples replies for
    its contiguous share of them (row j of the rollout seeded as in one process); the ranks' rollouts
    are gathered, so the KL to the reference, reward/advantage whitening, GAE and the adaptive KL
    coefficient are computed on the whole rollout, identically on every rank, and each global minibatch
    is split into W equal parts, one per rank (``next_batch``). The queue is the same on every rank, so
    rank 0's checkpoint resumes them all.
    """

    def __init__(self, model: ActorCritic, reference: nn.Module, tokenizer: Any, examples: Sequence[Any],
                 reward_fn: Any, rollout: Any, cfg: Any, seed: int, dist_info: Dist | None = None) -> None:
        if not examples:
            raise ScratchError("no training prompts for policy optimisation", "check the data section")
        self.dist = dist_info or Dist()
        w = self.dist.world_size
        if rollout.prompts_per_step % w or cfg.minibatch_size % w:
            raise ScratchError(f"under DDP on {w} processes rollout.prompts_per_step ({rollout.prompts_per_step}) "
                               f"and ppo.minibatch_size ({cfg.minibatch_size}) must be multiples of {w}",
                               f"set both to multiples of {w} (each rank samples and trains on an equal share)")
        self.model, self.reference, self.tokenizer = model, reference, tokenizer
        self.reward_fn, self.rollout, self.cfg, self.seed = reward_fn, rollout, cfg, seed
        self.prompts = ShuffledOrder(examples, seed, "prompts")
        self.end_id = tokenizer.special_tokens[END]
        self.kl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.draws = 0
        self._pending: list[dict[str, torch.Tensor]] = []
        self._skip = False
        self.rollout_seconds = 0.0  # time spent generating and scoring (for the benchmark's rollout share)
        self.generated_tokens = 0  # reply tokens sampled (by all ranks)

    def stop_rollout(self) -> None:
        """Early stop on KL: drop the rest of this rollout's minibatches."""
        self._skip = True

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's part of the next global minibatch, with ``n_tokens``: the global minibatch's reply tokens."""
        if self._skip:
            self._pending, self._skip = [], False
        if not self._pending:
            self._pending = self._make_rollout()
        full = self._pending.pop(0)
        rows = full["input_ids"].shape[0] // self.dist.world_size
        lo = self.dist.rank * rows
        part = {k: (v[lo : lo + rows] if v.dim() else v) for k, v in full.items()}
        part["n_tokens"] = full["completion_mask"][:, 1:].sum().float()
        return part

    def _gather(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ranks' rollout rows concatenated in rank order (padded to the longest first)."""
        if not self.dist.enabled:
            return parts
        width = torch.tensor([parts["input_ids"].shape[1]], device=parts["input_ids"].device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        out = {}
        for k, v in parts.items():
            if v.dim() == 2:
                fill = self.tokenizer.pad_id if k == "input_ids" else 0
                cols = int(width) - (v.shape[1] if k in ("input_ids", "completion_mask") else v.shape[1] + 1)
                v = torch.nn.functional.pad(v, (0, cols), value=fill)
            chunks = [torch.empty_like(v) for _ in range(self.dist.world_size)]
            dist.all_gather(chunks, v.contiguous())
            out[k] = torch.cat(chunks)
        return out

    @torch.no_grad()
    def _make_rollout(self) -> list[dict[str, torch.Tensor]]:
        t0 = time.perf_counter()
        r, c = self.rollout, self.cfg
        picked = self.prompts.take(self.rollout.prompts_per_step)  # the same on every rank
        share = len(picked) // self.dist.world_size
        lo = self.dist.rank * share
        mine = picked[lo : lo + share]
        prompts = prompt_ids(self.tokenizer, [e.prompt for e in mine])
        replies = respond(self.model.policy, self.tokenizer, prompts, r.max_new_tokens, r.temperature, r.top_k,
                          seed=self.seed + 7919 * self.draws + lo)
        texts = [reply_text(self.tokenizer, x) for x in replies]
        scores = self.reward_fn(mine, texts, prompts, replies).float()
        finished = torch.tensor([bool(x) and x[-1] == self.end_id for x in replies])
        scores = scores - c.unfinished_penalty * (~finished).float()
        batch = pad_sequences(prompts, replies, self.tokenizer.pad_id)
        self.rollout_seconds += time.perf_counter() - t0
        device = next(self.model.parameters()).device
        ids = batch["input_ids"].to(device)
        local_mask = batch["completion_mask"][:, 1:].float().to(device)
        was_training = self.model.training
        self.model.eval()
        logits, values = self.model(ids)
        self.model.train(was_training)
        logps, _ = logps_and_entropy(logits, ids, r.temperature)
        ref_logps, _ = logps_and_entropy(self.reference(ids), ids, r.temperature)
        g = self._gather({"input_ids": ids, "completion_mask": batch["completion_mask"].to(device),
                          "logps": logps, "ref_logps": ref_logps, "values": values[:, :-1] * local_mask,
                          "scores": scores.to(device), "finished": finished.float().to(device)})
        ids, logps, ref_logps, values, scores = g["input_ids"], g["logps"], g["ref_logps"], g["values"], g["scores"]
        mask = g["completion_mask"][:, 1:].float()
        self.generated_tokens += int(mask.sum())  # by all ranks
        rewards, kl = per_token_rewards(logps, ref_logps, mask, scores, self.kl.value)
        kl_per_reply = float(kl.sum(-1).mean())
        if not (math.isfinite(kl_per_reply) and torch.isfinite(scores).all() and torch.isfinite(values).all()):
            raise ScratchError(f"rollout {self.draws}: the KL to the reference, the rewards or the values are not "
                               "finite (the policy has diverged)",
                               "lower optim.lr or raise ppo.kl_coef, then rerun with --resume from the last "
                               "good checkpoint")
        if kl_per_reply > c.max_kl:
            raise ScratchError(f"rollout {self.draws}: KL(policy || reference) is {kl_per_reply:.1f} nats per reply, "
                               f"above ppo.max_kl = {c.max_kl}: the policy has run away from the reference",
                               "lower optim.lr, raise ppo.kl_coef (or set ppo.target_kl), then rerun with --resume "
                               "from the last good checkpoint")
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        adv, returns = gae(rewards, values, mask, c.gamma, c.lam)
        adv = masked_whiten(adv, mask) * mask
        kl_coef_used = self.kl.value
        self.kl.update(kl_per_reply, len(picked))
        stats = {"reward": scores.mean(), "kl": torch.tensor(kl_per_reply), "kl_coef": torch.tensor(kl_coef_used),
                 "finished": g["finished"].mean(), "reply_len": mask.sum(-1).mean()}
        full = {"input_ids": ids, "completion_mask": g["completion_mask"], "old_logps": logps,
                "old_values": values, "advantages": adv, "returns": returns}
        gen = torch.Generator().manual_seed(self.seed * 7_919 + self.draws)
        self.draws += 1
        n, mb = len(picked), c.minibatch_size
        out = []
        for _ in range(c.epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, mb):
                idx = perm[i : i + mb].to(device)
                sub = {k: v[idx].cpu() for k, v in full.items()}
                width = int(sub["completion_mask"].nonzero()[:, 1].max()) + 1  # drop all-padding columns
                sub = {k: v[:, : width - (k not in ("input_ids", "completion_mask"))] for k, v in sub.items()}
                out.append({**sub, **{k: v.detach().float().cpu().reshape(()) for k, v in stats.items()}})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**self.prompts.state_dict(), "draws": self.draws, "kl_coef": self.kl.value,
                "pending": [] if self._skip else self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompts.load_state_dict(state)
        self.draws = int(state["draws"])
        self.kl.value = float(state["kl_coef"])
        self._pending, self._skip = list(state.get("pending", [])), False


class PPOObjective:
    """``loss_fn(model, batch)`` for the Trainer on one PPO minibatch; ``model`` is the ``ActorCritic``.

    Under DDP (``dist_info``) each rank's loss is its share of the global minibatch's token means, times W
    (DDP averages gradients over the ranks), and the logged diagnostics - approx KL among them - are
    all-reduced, so every rank takes the same early-stop decision.
    """

    def __init__(self, cfg: Any, temperature: float = 1.0, source: PPORolloutSource | None = None,
                 dist_info: Dist | None = None) -> None:
        self.cfg, self.temperature, self.source = cfg, temperature, source
        self.dist = dist_info or Dist()

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["input_ids"]
        mask = batch["completion_mask"][:, 1:].float()
        logits, values = model(ids)
        logps, entropy = logps_and_entropy(logits, ids, self.temperature)
        c = self.cfg
        n_tokens = batch.get("n_tokens")
        parts = ppo_losses(logps, batch["old_logps"], batch["advantages"], values[:, :-1], batch["old_values"],
                           batch["returns"], mask, c.clip_eps, c.clip_value, n_tokens)
        ent = masked_mean(entropy, mask) if n_tokens is None else (entropy * mask).sum() / n_tokens
        loss = parts["pg_loss"] + c.vf_coef * parts["vf_loss"] - c.entropy_coef * ent
        names = [*parts, "entropy"]
        diag = torch.stack([parts[k].detach().float() for k in parts] + [ent.detach().float()])
        if self.dist.enabled:
            dist.all_reduce(diag)  # the ranks' shares add up to the global minibatch's means
            loss = loss * self.dist.world_size  # DDP averages the ranks' gradients
        metrics = dict(zip(names, diag.tolist()))
        if self.source is not None and c.stop_kl and metrics["approx_kl"] > c.stop_kl:
            self.source.stop_rollout()
        for k in ("reward", "kl", "kl_coef", "finished", "reply_len"):
            if k in batch:
                metrics[k] = float(batch[k])
        return loss, metrics
