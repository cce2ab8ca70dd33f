"""The comparison of DPO, PPO, GRPO and RLOO: one SFT model, the same rewards, equal generated tokens.

``run(config) -> StageResult`` (the pipeline's optional ``align_compare`` stage and
``benchmarks/align.py --mode compare`` call it): from the SFT model ``models.policy`` it

1. measures the SFT model's mean sampled reply length on training prompts (the rollout settings) and
   turns ``compare.budget_tokens`` into a number of replies, the same for every RL method;
2. trains the learned reward model (``scratchllm align reward``, on the checkable preference pairs) when
   ``compare.rewards`` includes ``"model"``;
3. trains each RL method (PPO, GRPO, RLOO) against each reward (``"checkable"``: the answer checker;
   ``"model"``: the learned reward model) for that many replies, and DPO on as many training sequences
   (it samples no rollouts);
4. measures every trained policy (and the SFT model) on the held-out prompts: greedy task accuracy, the
   learned reward model's mean score of its greedy replies, and ``drift``: KL to the SFT model and
   held-out reference-reply perplexity; writes ``compare.json`` and ``compare.png``.

Each method runs in ``out_dir/<method>-<reward>/`` with its own checkpoints; a rerun skips the finished
ones and resumes an interrupted one.

``drift(policy, reference, ...)``:

* ``kl``: KL(policy || reference) per reply, estimated on replies the policy samples (temperature 1) to
  the held-out prompts: mean over replies of sum_t (log pi(t) - log pi_ref(t));
* ``heldout_ppl``: perplexity of the policy on the held-out reference replies (the assistant's tokens and
  its closing ``<|end|>`` given the prompt: what SFT fitted), how much of that fit aligning kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.align import run as align
from scratchllm.align.config import (
    COMMAND_CONFIGS,
    AlignConfig,
    DPOSection,
    GRPOSection,
    PPOSection,
    RewardSection,
    RLOOSection,
)
from scratchllm.config import from_dict, to_dict
from scratchllm.finetune.lora import LoraConfig
from scratchllm.align.data import pad_sequences
from scratchllm.align.dpo import token_logps
from scratchllm.align.grpo import evaluate_replies, model_reward, prompt_ids, respond
from scratchllm.align.reward import RewardModel
from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text
from scratchllm.model.model import Transformer
from scratchllm.stage import StageResult
from scratchllm.tokenizer.chat import encode_chat
from scratchllm.train.tracking import read_metrics

METHODS = ("dpo", "ppo", "grpo", "rloo")
REWARDS = ("checkable", "model")


@dataclass
class CompareSection:
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    rewards: list[str] = field(default_factory=lambda: list(REWARDS))  # what PPO, GRPO and RLOO optimise
    budget_tokens: int = 4096  # reply tokens each RL run samples (planned from the SFT model's reply length)
    reward_steps: int = 100  # training steps of the learned reward model
    lr: dict[str, float] = field(default_factory=dict)  # per-method learning rate, e.g. {dpo = 2e-3}; else optim.lr
    calibration_prompts: int = 64  # training prompts sampled once to measure the SFT model's reply length

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS] + [r for r in self.rewards if r not in REWARDS]
        bad += [m for m in self.lr if m not in (*METHODS, "reward")]
        if bad or not self.methods:
            raise ScratchError(f"compare: unknown or empty method/reward {bad[0] if bad else '[]'!r}",
                               f"methods: {', '.join(METHODS)}; rewards: {', '.join(REWARDS)}")
        if any(m != "dpo" for m in self.methods) and not self.rewards:
            raise ScratchError("compare.rewards is empty", "e.g. compare.rewards=[\"checkable\", \"model\"]")
        if self.budget_tokens < 1 or self.reward_steps < 1 or self.calibration_prompts < 1:
            raise ScratchError("compare.budget_tokens, reward_steps and calibration_prompts must be >= 1")
        if any(v <= 0 for v in self.lr.values()):
            raise ScratchError("compare.lr: learning rates must be > 0")


@dataclass
class CompareConfig(AlignConfig):
    """An align config (models, data, rollout, the training sections) + every method's section + [compare]."""

    out_dir: Path = Path("runs/align/compare")
    compare: CompareSection = field(default_factory=CompareSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    reward: RewardSection = field(default_factory=RewardSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    lora: LoraConfig = field(default_factory=LoraConfig)  # ppo.lora = true
    grpo: GRPOSection = field(default_factory=GRPOSection)
    rloo: RLOOSection = field(default_factory=RLOOSection)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the stage ----------------------------------------------------------------------------------------


def _steps(cfg: CompareConfig, method: str, replies: int) -> int:
    """Optimizer steps that sample ``replies`` replies (DPO: train on as many sequences, 2 per pair)."""
    r = cfg.rollout
    if method == "dpo":
        return max(1, math.ceil(replies / (2 * cfg.train.batch_size)))
    if method == "ppo":
        p = cfg.ppo
        return max(1, math.ceil(replies / r.prompts_per_step)) * p.epochs * math.ceil(r.prompts_per_step /
                                                                                      p.minibatch_size)
    section = cfg.grpo if method == "grpo" else cfg.rloo
    return max(1, math.ceil(replies / (r.prompts_per_step * section.group_size))) * section.epochs_per_rollout


def _sub(cfg: CompareConfig, name: str, method: str, steps: int, **models: Any) -> AlignConfig:
    """The config of one run of the comparison (that command's own config: DPOConfig, PPOConfig, ...): its
    own out_dir, steps, lr and reward."""
    cls = COMMAND_CONFIGS[method]
    keys = {f.name for f in dataclasses.fields(cls)}
    sub = from_dict(cls, {k: v for k, v in to_dict(cfg).items() if k in keys})
    sub.out_dir = Path(cfg.out_dir) / name
    sub.train.max_steps = steps
    sub.optim.lr = cfg.compare.lr.get(method, cfg.optim.lr)
    for k, v in models.items():
        setattr(sub.models, k, v)
    return sub


@torch.no_grad()
def reply_tokens(policy: nn.Module, tokenizer: Any, examples: Sequence[Any], cfg: AlignConfig) -> float:
    """Mean length of the policy's sampled replies (the rollout's settings) to ``examples``."""
    r = cfg.rollout
    replies = respond(policy, tokenizer, prompt_ids(tokenizer, [e.prompt for e in examples]), r.max_new_tokens,
                      r.temperature, r.top_k, seed=cfg.seed)
    return sum(len(x) for x in replies) / max(len(replies), 1)


def run(cfg: CompareConfig, examples: tuple[list[Any], list[Any]] | None = None,
        say: Callable[[str], None] = log) -> StageResult:
    """Train and measure every method of ``compare.methods`` against every reward of ``compare.rewards``."""
    c = cfg.compare
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer = align.load_tokenizer(cfg.models.tokenizer)
    sft = align.load_model(cfg.models.policy, "policy", tokenizer)
    train_ex, heldout_ex = examples or align.checkable_examples(cfg)
    per_reply = reply_tokens(sft, tokenizer, train_ex[: c.calibration_prompts], cfg)
    replies = max(1, round(c.budget_tokens / max(per_reply, 1.0)))
    say(f"compare: SFT replies average {per_reply:.1f} tokens: {c.budget_tokens} tokens = {replies} replies per "
        f"RL run; methods {', '.join(c.methods)}; rewards {', '.join(c.rewards)}")

    runs: list[tuple[str, str, str]] = []  # (label, method, reward)
    for m in c.methods:
        runs += [(m, m, "pairs")] if m == "dpo" else [(f"{m}-{r}", m, r) for r in c.rewards]
    rm_dir = None
    needs_rm = any(r == "model" for _, _, r in runs)
    if needs_rm:
        rm_dir = out / "reward" / "model"
        _, stopped = _once(out / "reward", say, "reward model", lambda: align.run_reward(
            _sub(cfg, "reward", "reward", c.reward_steps), resume=True, examples=examples))
        if stopped:
            return StageResult(stopped=stopped)
    reward_model = None
    score = None
    if rm_dir is not None:
        reward_model = RewardModel.from_pretrained(rm_dir).eval().requires_grad_(False)
        score = model_reward(reward_model, tokenizer.pad_id)

    runners = {"dpo": align.run_dpo, "ppo": align.run_ppo, "grpo": align.run_grpo, "rloo": align.run_rloo}
    results: dict[str, dict[str, Any]] = {"sft": measure(sft, sft, tokenizer, heldout_ex, cfg, score)}
    curves: dict[str, list[tuple[float, float]]] = {}
    for label, method, reward in runs:
        models: dict[str, Any] = {}
        if reward == "model":
            models = {"reward_model": rm_dir}
        sub = _sub(cfg, label, method, _steps(cfg, method, replies), **models)
        sub.rollout.reward = "model" if reward == "model" else "checkable"
        seconds, stopped = _once(Path(sub.out_dir), say, label, lambda sub=sub, method=method: runners[method](
            sub, resume=True, examples=examples))
        if stopped:  # by a signal, after saving a checkpoint: a rerun resumes this run
            return StageResult(stopped=stopped)
        report = json.loads((Path(sub.out_dir) / "report.json").read_text(encoding="utf-8"))
        policy = Transformer.from_pretrained(Path(sub.out_dir) / "model")
        results[label] = {**measure(policy, sft, tokenizer, heldout_ex, cfg, score), "method": method,
                          "reward_used": reward, "steps": report["steps"],
                          "generated_tokens": report.get("generated_tokens", 0), "seconds": seconds}
        curves[label] = _curve(Path(sub.out_dir), results[label]["generated_tokens"])
    summary = {"budget_tokens": c.budget_tokens, "sft_reply_tokens": per_reply, "replies": replies,
               "heldout_prompts": len(heldout_ex), "results": results}
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=2) + "\n")
    plot(results, curves, out / "compare.png")
    say(table(results))
    return StageResult(outputs={"report": out / "compare.json", "plot": out / "compare.png"}, metrics=summary)


def _once(directory: Path, say: Callable[[str], None], what: str,
          train: Callable[[], StageResult]) -> tuple[float, str | None]:
    """Run ``train`` unless ``directory`` holds its finished report (a rerun skips it): (seconds it took,
    the signal that stopped it after saving a checkpoint, or None)."""
    done = directory / "report.json"
    if done.is_file() and "heldout_after" in json.loads(done.read_text(encoding="utf-8")):
        prior = json.loads(done.read_text(encoding="utf-8")).get("compare_seconds", 0.0)
        say(f"compare: {what}: finished before, kept")
        return float(prior), None
    say(f"compare: training {what} -> {directory}")
    t0 = time.perf_counter()
    result = train()
    if not result.completed:
        say(f"compare: {what} stopped by {result.stopped}; rerun to resume it")
        return 0.0, result.stopped
    seconds = time.perf_counter() - t0
    report = json.loads(done.read_text(encoding="utf-8"))
    atomic_write_text(done, json.dumps({**report, "compare_seconds": seconds}, indent=2) + "\n")
    return seconds, None


def measure(policy: nn.Module, sft: nn.Module, tokenizer: Any, heldout: Sequence[Any], cfg: AlignConfig,
            score: Any = None) -> dict[str, float]:
    """Held-out: greedy task accuracy, the reward model's mean score (``rm_score``), KL to SFT, reply perplexity."""
    m = evaluate_replies(policy, tokenizer, heldout, cfg.rollout.eval_max_new_tokens, score)
    out = {"task_accuracy": m["task_accuracy"], **drift(policy, sft, tokenizer, heldout,
                                                         cfg.rollout.eval_max_new_tokens, seed=cfg.seed)}
    if "reward" in m:
        out["rm_score"] = m["reward"]
    return out


def _curve(run_dir: Path, generated: int) -> list[tuple[float, float]]:
    """(generated tokens, training reward) per logged step; tokens spread evenly over the run's steps."""
    rows = [r for r in read_metrics(run_dir, "train") if "reward" in r]
    if not rows:
        return []
    last = max(r["step"] for r in rows)
    return [(r["step"] / last * generated, float(r["reward"])) for r in rows]


def table(results: dict[str, dict[str, Any]]) -> str:
    head = f"{'':16} {'accuracy':>9} {'RM score':>9} {'KL to SFT':>10} {'held-out ppl':>13} {'gen. tokens':>12} {'s':>6}"
    lines = [head]
    for label, r in results.items():
        rm = f"{r['rm_score']:9.3f}" if "rm_score" in r else f"{'-':>9}"
        lines.append(f"{label:16} {r['task_accuracy']:9.3f} {rm} {r['kl']:10.3f} {r['heldout_ppl']:13.3f} "
                     f"{r.get('generated_tokens', 0):12d} {r.get('seconds', 0):6.0f}")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], curves: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    """compare.png: training reward vs generated tokens per reward, held-out accuracy and KL per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["reward_used"] for r in results.values() if r.get("reward_used") in REWARDS})
    fig, axes = plt.subplots(1, len(kinds) + 2, figsize=(4.2 * (len(kinds) + 2), 3.6), squeeze=False)
    axes = axes[0]
    for ax, kind in zip(axes, kinds, strict=False):
        for label, pts in curves.items():
            if results[label].get("reward_used") == kind and pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], label=results[label]["method"].upper(), lw=1)
        ax.set(xlabel="reply tokens sampled", ylabel="training reward",
               title="reward: " + ("answer checker" if kind == "checkable" else "learned reward model"))
        ax.legend(fontsize=8)
    names = list(results)
    xs = range(len(names))
    axes[-2].bar(xs, [results[n]["task_accuracy"] for n in names], color="tab:green")
    axes[-2].set_xticks(list(xs), names, rotation=45, ha="right", fontsize=8)
    axes[-2].set(title="held-out task accuracy (greedy)", ylim=(0, 1))
    axes[-1].bar(xs, [results[n]["kl"] for n in names], color="tab:red")
    axes[-1].set_xticks(list(xs), names, rotation=45, ha="right", fontsize=8)
    axes[-1].set(title="KL to the SFT model (nats/reply)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- the metrics --------------------------------------------------------------------------------------


@torch.no_grad()
def drift(policy: nn.Module, reference: nn.Module, tokenizer: Any, examples: Sequence[Any], max_new_tokens: int = 16,
          seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    was = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    kls, nll, n_tokens = [], 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        prompts = prompt_ids(tokenizer, [e.prompt for e in chunk])
        replies = respond(policy, tokenizer, prompts, max_new_tokens, temperature=1.0, seed=seed + i)
        batch = pad_sequences(prompts, replies, tokenizer.pad_id)
        ids, mask = batch["input_ids"].to(device), batch["completion_mask"][:, 1:].float().to(device)
        kls.append(((token_logps(policy, ids) - token_logps(reference, ids)) * mask).sum(-1).cpu())
        for e in chunk:  # the whole conversation: prompt + reference reply
            messages = getattr(e, "messages", None) or [*e.prompt, {"role": "assistant", "content": e.answer}]
            conv, loss_mask = encode_chat(tokenizer, messages)
            ids = torch.tensor([conv[: policy.cfg.context_length]], device=device)
            target = torch.tensor([loss_mask[1 : ids.shape[1]]], device=device, dtype=torch.float)
            nll -= float((token_logps(policy, ids) * target).sum())
            n_tokens += int(target.sum())
    policy.train(was)
    return {"kl": float(torch.cat(kls).mean()), "heldout_ppl": math.exp(nll / max(n_tokens, 1))}
