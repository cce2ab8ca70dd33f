"""PPO end to end on the checkable parity task: held-out reward rises over the SFT model with the KL to the
reference under the configured target, and a run stopped mid-rollout resumes exactly."""

from __future__ import annotations

import json

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
