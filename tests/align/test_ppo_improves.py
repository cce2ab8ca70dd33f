"""PPO end to end: on the checkable parity task and (slow) on the embedded add/sub/reverse tasks, held-out
reward and accuracy rise over the SFT model with the KL to the reference under the configured target; a run
stopped mid-rollout resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.align.run import run_ppo


def _fixed_preference(sft_dirs, tokenizer, parity_sets, make_parity):
    """Reward 1 for one fixed answer, the one the SFT model does not give greedily (as the GRPO test)."""
    from scratchllm.align.grpo import prompt_ids, reply_text, respond
    from scratchllm.model.model import Transformer

    sft = Transformer.from_pretrained(sft_dirs["policy"])
    greedy = [reply_text(tokenizer, r) for r in respond(sft, tokenizer, prompt_ids(
        tokenizer, [e.prompt for e in parity_sets[1][:20]]), 6)]
    target = "even" if greedy.count("odd") >= greedy.count("even") else "odd"
    return tuple([make_parity(int(e.prompt[0]["content"].split()[-1]), target) for e in s] for s in parity_sets)


def test_ppo_raises_heldout_reward_with_kl_under_target(align_cfg, parity_sets, make_parity, sft_dirs, tokenizer):
    sets = _fixed_preference(sft_dirs, tokenizer, parity_sets, make_parity)
    target = 3.0
    cfg = align_cfg("train.max_steps=40", "optim.lr=5e-4", "rollout.prompts_per_step=16", "ppo.minibatch_size=8",
                    "ppo.epochs=2", "ppo.kl_coef=0.05", f"ppo.target_kl={target}", "ppo.kl_horizon=200",
                    method="ppo")
    report = run_ppo(cfg, examples=sets).metrics
    before, after = report["heldout_before"], report["heldout_after"]
    assert before["reward"] <= 0.5
    assert after["reward"] >= before["reward"] + 0.3
    rows = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert {"pg_loss", "vf_loss", "entropy", "approx_kl", "clip_frac", "kl", "kl_coef", "reward"} <= set(train[-1])
    # KL(policy || reference) per reply over the last three rollouts (4 minibatch steps each): under the target.
    assert sum(r["kl"] for r in train[-12:]) / 12 < target


def test_ppo_resumes_exactly_mid_rollout(align_cfg, tmp_path):
    """Stopped after 3 steps (inside a rollout of 4 minibatch steps) and resumed: the same model as 6 straight."""
    from scratchllm.model.checkpoint import read_safetensors

    common = ("optim.lr=1e-3", "rollout.prompts_per_step=4", "ppo.minibatch_size=2", "ppo.epochs=2",
              "data.n_train=16")
    straight = run_ppo(align_cfg("train.max_steps=6", *common, out=tmp_path / "a", method="ppo")).metrics
    run_ppo(align_cfg("train.max_steps=3", *common, out=tmp_path / "b", method="ppo"))
    resumed = run_ppo(align_cfg("train.max_steps=6", "train.allow_schedule_change=true", *common, out=tmp_path / "b",
                                method="ppo"),
                      resume=True).metrics  # constant lr: a longer run keeps the same schedule
    assert resumed["steps"] == straight["steps"] == 6
    a = read_safetensors(tmp_path / "a" / "model" / "model.safetensors")
    b = read_safetensors(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["heldout_after"] == straight["heldout_after"]


def _sampled(policy, tokenizer, examples, n: int = 4) -> tuple[float, float]:
    """(checker reward, share of "Sure! " replies) of n sampled replies (temperature 1) per held-out prompt."""
    from scratchllm.align.grpo import checkable_reward, prompt_ids, reply_text, respond

    ex = [e for e in examples for _ in range(n)]
    replies = respond(policy, tokenizer, prompt_ids(tokenizer, [e.prompt for e in ex]), 12, 1.0, seed=5)
    texts = [reply_text(tokenizer, r) for r in replies]
    return float(checkable_reward(ex, texts, [], replies).mean()), sum(t.startswith("Sure") for t in texts) / len(texts)


@pytest.mark.slow
def test_ppo_raises_accuracy_on_the_embedded_tasks(tokenizer, tmp_path):
    """The embedded checkable tasks add, sub and reverse (held-out prompts disjoint from training ones). The SFT
    model (2 layers, d=64, 2000 steps) learned half of its answers with a "Sure! " prefix, which the checker
    refuses: PPO with the checker's reward raises held-out greedy task accuracy and the sampled replies' reward
    (mostly by dropping the prefix; held-out reverse stays at 0: the tiny model cannot reverse unseen words),
    with the KL to the SFT model under the target. About 5 minutes on an idle 2-core machine."""
    import random

    from scratchllm.align.config import AlignConfig, PPOConfig
    from scratchllm.config import load_config
    from scratchllm.tasks.instruct import embedded_instructions
    from scratchllm.finetune.sft import SFTBatchSource, encode_conversations, sft_loss
    from scratchllm.model.model import ModelConfig, Transformer
    from scratchllm.train.loop import Trainer

    from .conftest import FAST

    kinds = ("add", "sub", "reverse")
    rng = random.Random(2)
    chats = [[*e.prompt, {"role": "assistant", "content": ("Sure! " if rng.random() < 0.5 else "") + e.answer}]
             for e in embedded_instructions(3000, "train", 0, kinds, False)]
    sft_cfg = load_config(AlignConfig, None, [f'out_dir="{tmp_path / "sft"}"', "train.max_steps=2000", "optim.lr=3e-3",
                                              *FAST, "log.interval=100", "schedule.kind=cosine",
                                              "schedule.warmup_steps=30"])
    torch.manual_seed(0)
    sft = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=96, d_model=64, n_layers=2,
                                  n_heads=4, n_kv_heads=2, d_ff=192))
    Trainer(sft_cfg, sft, SFTBatchSource(encode_conversations(tokenizer, chats, 96), 32, tokenizer.pad_id, 0),
            loss_fn=sft_loss).fit()
    sft.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "tokenizer")

    target = 3.0
    cfg = load_config(PPOConfig, "configs/align/ppo.toml", [
        f'out_dir="{tmp_path / "ppo"}"', f'models.policy="{tmp_path / "policy"}"',
        f'models.tokenizer="{tmp_path / "tokenizer"}"', *FAST, "log.interval=8", 'data.kinds=["add", "sub", "reverse"]',
        "data.n_train=1024", "data.n_heldout=300", "rollout.prompts_per_step=64", "rollout.max_new_tokens=12",
        "rollout.eval_max_new_tokens=12", "ppo.minibatch_size=16", "ppo.epochs=2", "ppo.stop_kl=0.05",
        f"ppo.target_kl={target}", "ppo.kl_horizon=1000", "optim.lr=3e-4", "train.max_steps=160"])
    heldout = embedded_instructions(300, "heldout", cfg.seed, kinds, False)
    reward_before, prefixed_before = _sampled(sft, tokenizer, heldout)
    report = run_ppo(cfg).metrics
    trained = Transformer.from_pretrained(tmp_path / "ppo" / "model")
    reward_after, prefixed_after = _sampled(trained, tokenizer, heldout)
    before, after = report["heldout_before"]["task_accuracy"], report["heldout_after"]["task_accuracy"]
    print(f"held-out greedy accuracy {before:.3f} -> {after:.3f}, sampled reward {reward_before:.3f} -> "
          f"{reward_after:.3f}, \"Sure!\" replies {prefixed_before:.2f} -> {prefixed_after:.2f}")  # shown with -s
    assert prefixed_before > 0.3 and prefixed_after < prefixed_before / 2
    assert after >= before + 0.02, (before, after)  # greedy, 300 held-out prompts
    assert reward_after >= reward_before + 0.01, (reward_before, reward_after)  # sampled, 1200 replies
    train = [r for r in (json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines())
             if r.get("kind") == "train"]
    kl = sum(r["kl"] for r in train[-3:]) / 3
    print(f"KL to the SFT model over the last 3 rollouts {kl:.2f} nats per reply (target {target})")
    assert kl < target  # KL to the SFT model, nats per reply (last rollouts)
