"""``scratchllm align dpo|reward|ppo|grpo|rloo``: load the models and data, train with the one Trainer, report.

Each run measures its held-out metric before and after training and writes ``out_dir/report.json``;
the trained model goes to ``out_dir/model`` (a model directory; the reward model adds ``reward.json``).
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.align.config import AlignConfig, DPOConfig, GRPOConfig, PPOConfig, RewardConfig, RLOOConfig
from scratchllm.align.data import (
    PairBatchSource,
    PreferencePair,
    batches_of,
    checkable_pairs,
    encode_pairs,
    load_preferences,
)
from scratchllm.align.dpo import DPOObjective, check_reference, evaluate_pairs
from scratchllm.align.grpo import (
    GRPOObjective,
    RolloutSource,
    checkable_reward,
    evaluate_replies,
    group_advantages,
    model_reward,
    prompt_ids,
    reply_text,
    respond,
)
from scratchllm.align.ppo import (
    ActorCritic,
    PPOObjective,
    PPORolloutSource,
    check_critic,
    check_prompt_lengths,
)
from scratchllm.align.reward import RewardModel, RewardObjective, pair_accuracy
from scratchllm.align.rloo import RLOOObjective, rloo_prepare
from scratchllm.errors import ScratchError
from scratchllm.finetune.lora import apply_lora, merged_model
from scratchllm.infer.load import load_model as load_any
from scratchllm.io import atomic_write_text
from scratchllm.stage import StageResult
from scratchllm.tasks.instruct import embedded_instructions
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import CHAT_SPECIAL_TOKENS
from scratchllm.train.loop import Trainer, configure_torch, device_type, select_device
from scratchllm.train.parallel import Dist, destroy_distributed, init_distributed
from scratchllm.train.tracking import training_metrics


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- models -------------------------------------------------------------------------------------------


def load_tokenizer(path: Path) -> Any:
    tok = Tokenizer.load(path)
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in tok.special_tokens]
    if missing:
        raise ScratchError(f"the tokenizer at {path} has no {missing[0]} token, needed by the chat format",
                           "use the tokenizer the SFT model was trained with (default special tokens)")
    return tok


def load_model(path: Path, what: str, tokenizer: Any) -> nn.Module:
    if (Path(path) / "reward.json").is_file():
        raise ScratchError(f"{what} {path} is a reward model, not a language model",
                           "point models.policy/models.reference at an SFT model directory")
    model = load_any(path, full_precision_for="alignment").train()  # the one loader; trained from here
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ScratchError(f"the tokenizer has {tokenizer.vocab_size} tokens but the {what} model's vocab_size is "
                           f"{model.cfg.vocab_size}", "use the tokenizer the model was trained with")
    return model


def load_policy_and_reference(cfg: AlignConfig, tokenizer: Any) -> tuple[nn.Module, nn.Module]:
    """The policy to train and a frozen reference (by default a copy of the policy's starting weights)."""
    policy = load_model(cfg.models.policy, "policy", tokenizer)
    if cfg.models.reference is None:
        reference = copy.deepcopy(policy)
    else:
        reference = load_model(cfg.models.reference, "reference", tokenizer)
        check_reference(policy, reference)
    return policy, reference.requires_grad_(False).eval()


def make_trainer(cfg: AlignConfig, model: nn.Module, source: Any, loss_fn: Callable, resume: bool,
                 d: Dist | None = None) -> Trainer:
    """The one Trainer with this run's loss and batch source (one process, or PPO's DDP ranks); resumes if asked."""
    if cfg.train.max_tokens:
        raise ScratchError("train.max_tokens is not used by alignment runs", "set train.max_steps instead")
    d = d or Dist()
    configure_torch(cfg)
    device = select_device(cfg.train.device, d)
    trainer = Trainer(cfg, model, source, loss_fn=loss_fn, device=device, dist_info=d)
    trainer.start(resume)
    return trainer


def move(module: nn.Module, trainer: Trainer) -> nn.Module:
    return module.to(trainer.device)


def write_report(cfg: AlignConfig, report: dict[str, Any]) -> None:
    atomic_write_text(Path(cfg.out_dir) / "report.json", json.dumps(report, indent=2) + "\n")


# --- data ---------------------------------------------------------------------------------------------


def checkable_examples(cfg: AlignConfig) -> tuple[list[Any], list[Any]]:
    d = cfg.data
    kinds = tuple(d.kinds)
    return (embedded_instructions(d.n_train, "train", cfg.seed, kinds, d.system_prompt),
            embedded_instructions(d.n_heldout, "heldout", cfg.seed, kinds, d.system_prompt))


def policy_sampler(policy: nn.Module, tokenizer: Any, cfg: AlignConfig) -> Callable[[list[Any]], list[str]]:
    """One sampled reply per example (temperature 1), to find the policy's own mistakes."""
    def sample(examples: list[Any]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(examples), 64):
            chunk = examples[i : i + 64]
            replies = respond(policy, tokenizer, prompt_ids(tokenizer, [e.prompt for e in chunk]),
                              cfg.rollout.max_new_tokens, temperature=1.0, seed=cfg.seed + i)
            out += [reply_text(tokenizer, r) for r in replies]
        return out

    return sample


Examples = tuple[list[Any], list[Any]]


def preference_data(cfg: AlignConfig, tokenizer: Any, policy: nn.Module, examples: Examples | None = None
                    ) -> tuple[list[PreferencePair], list[PreferencePair], list[Any] | None]:
    """Training pairs, held-out pairs, and (checkable source) the held-out examples for task accuracy."""
    d = cfg.data
    if d.source == "jsonl":
        pairs = load_preferences(d.path)
        if d.heldout_path is not None:
            return pairs, load_preferences(d.heldout_path), None
        order = list(range(len(pairs)))
        random.Random(cfg.seed).shuffle(order)
        k = max(1, round(len(pairs) * d.heldout_fraction))
        if len(pairs) - k < 1:
            raise ScratchError(f"{d.path}: {len(pairs)} pair(s) are too few to hold some out",
                               "add pairs, or give data.heldout_path")
        return [pairs[i] for i in order[k:]], [pairs[i] for i in order[:k]], None
    train_ex, heldout_ex = examples or checkable_examples(cfg)
    sampler = policy_sampler(policy, tokenizer, cfg) if d.policy_negatives else None
    train = checkable_pairs(train_ex, cfg.seed, sampler)
    heldout = checkable_pairs(heldout_ex, cfg.seed + 1)
    log(f"data: {len(train)} training pairs, {len(heldout)} held-out pairs from checkable tasks")
    return train, heldout, heldout_ex


# --- the trainers -------------------------------------------------------------------------------


def run_dpo(cfg: DPOConfig, resume: bool = False, examples: Examples | None = None) -> StageResult:
    """DPO; ``examples`` (train, held-out) replaces the embedded checkable tasks with your own
    (objects with ``prompt``, ``answer``, ``kind``, checked by ``is_correct``)."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.models.tokenizer)
    policy, reference = load_policy_and_reference(cfg, tokenizer)
    train_pairs, heldout_pairs, heldout_ex = preference_data(cfg, tokenizer, policy, examples)
    ctx = policy.cfg.context_length
    train_enc = encode_pairs(train_pairs, tokenizer, ctx, "training pair")
    heldout = batches_of(encode_pairs(heldout_pairs, tokenizer, ctx, "held-out pair"), cfg.train.batch_size,
                         tokenizer.pad_id)
    objective = DPOObjective(reference, cfg.dpo.beta, cfg.dpo.loss_type, cfg.dpo.label_smoothing, cfg.dpo.sft_coef)
    source = PairBatchSource(train_enc, cfg.train.batch_size, tokenizer.pad_id, cfg.seed)
    trainer = make_trainer(cfg, policy, source, objective, resume)
    move(reference, trainer)

    def measure() -> dict[str, float]:
        m = evaluate_pairs(objective, policy, heldout)
        if heldout_ex is not None:
            m.update(evaluate_replies(policy, tokenizer, heldout_ex, cfg.rollout.eval_max_new_tokens))
        return m

    return _train_and_report(cfg, trainer, "dpo", measure, policy, tokenizer)


def run_reward(cfg: RewardConfig, resume: bool = False, examples: Examples | None = None) -> StageResult:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.models.tokenizer)
    policy = load_model(cfg.models.policy, "policy", tokenizer)
    model = RewardModel.from_policy(policy)
    train_pairs, heldout_pairs, _ = preference_data(cfg, tokenizer, policy, examples)
    del policy
    ctx = model.cfg.context_length
    train_enc = encode_pairs(train_pairs, tokenizer, ctx, "training pair")
    heldout = batches_of(encode_pairs(heldout_pairs, tokenizer, ctx, "held-out pair"), cfg.train.batch_size,
                         tokenizer.pad_id)
    source = PairBatchSource(train_enc, cfg.train.batch_size, tokenizer.pad_id, cfg.seed)
    trainer = make_trainer(cfg, model, source, RewardObjective(cfg.reward.center_coef), resume)
    return _train_and_report(cfg, trainer, "reward", lambda: pair_accuracy(model, heldout), model, tokenizer)


def check_same_tokenizer(tokenizer: Any, directory: Path, what: str) -> None:
    """A reward/value model scores our token ids: it must have been trained with the policy's tokenizer."""
    try:
        other = Tokenizer.load(directory)
    except (ScratchError, OSError, ValueError):
        return  # no tokenizer saved with it: the vocabulary size check is all we have
    if (other.merges, other.special_tokens) != (tokenizer.merges, tokenizer.special_tokens):
        raise ScratchError(f"the {what} at {directory} was trained with a different tokenizer than models.tokenizer "
                           f"({len(other.merges)} vs {len(tokenizer.merges)} merges, "
                           f"{len(other.special_tokens)} vs {len(tokenizer.special_tokens)} special tokens)",
                           "train the reward model from the same SFT model and tokenizer (`scratchllm align "
                           "reward`), or point models.tokenizer at the policy's own tokenizer")


def load_reward(cfg: AlignConfig, policy: nn.Module, tokenizer: Any) -> tuple[nn.Module | None, Any]:
    """(reward model or None, reward_fn) for rollout.reward."""
    if cfg.data.source != "checkable":
        raise ScratchError("policy optimisation samples replies to the checkable instruction prompts (data.source = "
                           "\"checkable\")", "set data.source=checkable; choose rollout.reward=model to score "
                           "replies with a reward model instead of the checker")
    if cfg.rollout.reward != "model":
        return None, checkable_reward

    if cfg.models.reward_model is None:
        raise ScratchError("rollout.reward = \"model\" needs models.reward_model",
                           "train one with `scratchllm align reward` and set models.reward_model=DIR")
    check_same_tokenizer(tokenizer, cfg.models.reward_model, "reward model")
    reward_model = RewardModel.from_pretrained(cfg.models.reward_model)

    check_critic(policy, reward_model, "reward model")
    return reward_model, model_reward(reward_model.requires_grad_(False), tokenizer.pad_id)


def _rl_setup(cfg: AlignConfig, examples: Examples | None) -> tuple[Any, nn.Module, nn.Module, list, list,
                                                                    nn.Module | None, Any]:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.models.tokenizer)
    policy, reference = load_policy_and_reference(cfg, tokenizer)
    reward_model, reward_fn = load_reward(cfg, policy, tokenizer)
    train_ex, heldout_ex = examples or checkable_examples(cfg)
    check_prompt_lengths(tokenizer, train_ex, policy.cfg.context_length, "training")
    check_prompt_lengths(tokenizer, heldout_ex, policy.cfg.context_length, "held-out")
    return tokenizer, policy, reference, train_ex, heldout_ex, reward_model, reward_fn


def run_ppo(cfg: PPOConfig, resume: bool = False, examples: Examples | None = None) -> StageResult:
    """PPO with a value function (align/ppo.py): one reply per prompt, GAE, several epochs of minibatches.

    One process, or one of torchrun's (DDP, ``train.parallel = "ddp"``): each rank samples its share of
    every rollout and trains on its share of every minibatch (align/ppo.py)."""
    d = init_distributed(device_type(cfg.train.device))
    try:
        if d.enabled and cfg.train.parallel != "ddp":
            raise ScratchError(f"align ppo on {d.world_size} processes supports train.parallel = \"ddp\" only "
                               f"(got \"{cfg.train.parallel}\")", "set train.parallel=ddp")
        return _run_ppo(cfg, resume, examples, d)
    finally:
        if d.enabled:
            destroy_distributed()


def _run_ppo(cfg: PPOConfig, resume: bool, examples: Examples | None, d: Dist) -> StageResult:
    tokenizer, policy, reference, train_ex, heldout_ex, reward_model, reward_fn = _rl_setup(cfg, examples)
    p = cfg.ppo
    critic = None
    if p.value_model == "separate":
        init = cfg.models.value_model or cfg.models.reward_model
        if init is not None:
            check_same_tokenizer(tokenizer, init, "value model")
            critic = RewardModel.from_pretrained(init)
            check_critic(policy, critic, "value model")
        else:
            critic = RewardModel.from_policy(policy)
            torch.nn.init.zeros_(critic.lm_head.weight)  # V = 0 at the start
    elif cfg.models.value_model is not None:
        raise ScratchError("models.value_model is set but ppo.value_model = \"shared\" (a head on the policy)",
                           "set ppo.value_model=separate to start the critic from it, or unset models.value_model")
    if p.lora:
        apply_lora(policy, cfg.lora)
    model = ActorCritic(policy, critic)
    source = PPORolloutSource(model, reference, tokenizer, train_ex, reward_fn, cfg.rollout, p, cfg.seed, d)
    objective = PPOObjective(p, cfg.rollout.temperature, source, d)
    trainer = make_trainer(cfg, model, source, objective, resume, d)
    move(reference, trainer)
    if reward_model is not None:
        move(reward_model, trainer)

    def measure() -> dict[str, float]:
        return evaluate_replies(policy, tokenizer, heldout_ex, cfg.rollout.eval_max_new_tokens, reward_fn)

    def export() -> nn.Module:  # the policy alone (LoRA: adapters merged into a plain model)
        return merged_model(policy) if p.lora else policy

    return _train_and_report(cfg, trainer, "ppo", measure, policy, tokenizer, trainable=model, export=export,
                             source=source, main=d.is_main)


def run_grpo(cfg: GRPOConfig, resume: bool = False, examples: Examples | None = None) -> StageResult:
    """GRPO (align/grpo.py): group-relative advantages, per-token KL penalty."""
    tokenizer, policy, reference, train_ex, heldout_ex, reward_model, reward_fn = _rl_setup(cfg, examples)
    g = cfg.grpo

    def advantages(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**batch, "advantages": group_advantages(batch["rewards"], g.group_size, g.scale_rewards)}

    source = RolloutSource(policy, tokenizer, train_ex, reward_fn, cfg.rollout, cfg.seed, g.group_size,
                           g.epochs_per_rollout, advantages)
    trainer = make_trainer(cfg, policy, source, GRPOObjective(reference, g.kl_coef, g.clip_eps), resume)
    move(reference, trainer)
    if reward_model is not None:
        move(reward_model, trainer)

    def measure() -> dict[str, float]:
        return evaluate_replies(policy, tokenizer, heldout_ex, cfg.rollout.eval_max_new_tokens, reward_fn)

    return _train_and_report(cfg, trainer, "grpo", measure, policy, tokenizer, source=source)


def run_rloo(cfg: RLOOConfig, resume: bool = False, examples: Examples | None = None) -> StageResult:
    """RLOO (align/rloo.py): leave-one-out baseline, sequence-level KL penalty in the reward."""
    tokenizer, policy, reference, train_ex, heldout_ex, reward_model, reward_fn = _rl_setup(cfg, examples)
    r = cfg.rloo
    prepare = rloo_prepare(policy, reference, r.group_size, r.kl_coef, r.normalize_advantages)
    source = RolloutSource(policy, tokenizer, train_ex, reward_fn, cfg.rollout, cfg.seed, r.group_size,
                           r.epochs_per_rollout, prepare)
    trainer = make_trainer(cfg, policy, source, RLOOObjective(r.clip_eps), resume)
    move(reference, trainer)
    if reward_model is not None:
        move(reward_model, trainer)

    def measure() -> dict[str, float]:
        return evaluate_replies(policy, tokenizer, heldout_ex, cfg.rollout.eval_max_new_tokens, reward_fn)

    return _train_and_report(cfg, trainer, "rloo", measure, policy, tokenizer, source=source)


def _train_and_report(cfg: AlignConfig, trainer: Trainer, method: str, measure: Callable[[], dict[str, float]],
                      model: nn.Module, tokenizer: Any, trainable: nn.Module | None = None,
                      export: Callable[[], nn.Module] | None = None, source: Any = None,
                      main: bool = True) -> StageResult:
    """Measure, train, measure again, save: every alignment command's result. Under DDP only rank 0
    (``main``) measures, logs and writes.

    outputs: "run", "model" and "report" (once complete); metrics: the report (held-out metrics before
    and after, steps) and the training figures of metrics.jsonl."""
    n = sum(p.numel() for p in (trainable or model).parameters() if p.requires_grad)
    world = trainer.dist.world_size
    if main:
        log(f"align {method}: {n / 1e6:.2f}M trainable parameters on "
            f"{f'{world} x ' if world > 1 else ''}{trainer.device}{' (ddp)' if world > 1 else ''}, "
            f"{cfg.train.max_steps} steps -> {cfg.out_dir}")
    before = measure() if main else {}
    if main:
        log(f"held-out before: {_fmt(before)}")
    result = trainer.fit()
    report: dict[str, Any] = {"method": method, "steps": result.step, "stopped": result.reason,
                              "exit_code": result.exit_code, "heldout_before": before}
    if hasattr(source, "generated_tokens"):  # RL methods: reply tokens sampled in this process (since a resume)
        report.update(generated_tokens=source.generated_tokens, rollout_seconds=round(source.rollout_seconds, 3))
    run_dir = Path(cfg.out_dir)
    if result.reason != "done":
        if main:
            log(f"stopped by {result.reason} after step {result.step}; checkpoint {result.checkpoint}\n"
                "continue with the same command plus --resume")
            report.update(training_metrics(run_dir))
        return result.result({"run": run_dir}, {**report, "max_steps": cfg.train.max_steps})
    if not main:
        return result.result({"run": run_dir}, {**report, "max_steps": cfg.train.max_steps})
    after = measure()
    log(f"held-out after:  {_fmt(after)}")
    out = Path(cfg.out_dir) / "model"
    (export() if export else model).save_pretrained(out)
    tokenizer.save_pretrained(out, model_max_length=model.cfg.context_length)
    report.update(heldout_after=after, model=str(out))
    write_report(cfg, report)
    log(f"done: model -> {out}, report -> {run_dir / 'report.json'}")
    return result.result({"run": run_dir, "model": out, "report": run_dir / "report.json"},
                         {**report, **training_metrics(run_dir), "max_steps": cfg.train.max_steps})


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in ("task_accuracy", "accuracy", "reward", "rewards/accuracies", "rewards/margins", "loss")
            if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys)
