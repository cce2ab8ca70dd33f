"""DPO, GRPO and the reward model each beat the SFT model on held-out checkable prompts.

The SFT model answers "even"/"odd" in the right format but is right only by chance; the held-out
numbers never appear in training, so a gain means the parity rule was learned, not memorised.
"""

from __future__ import annotations

import json

import pytest

from scratchllm.align.run import run_dpo, run_grpo, run_reward, run_rloo


def test_dpo_raises_heldout_accuracy_over_sft(align_cfg, parity_sets):
    cfg = align_cfg("train.max_steps=100", "optim.lr=2e-3", "dpo.beta=0.1", "dpo.sft_coef=1.0",
                    "data.policy_negatives=false", method="dpo")
    report = run_dpo(cfg, examples=parity_sets).metrics
    before, after = report["heldout_before"], report["heldout_after"]
    assert before["task_accuracy"] <= 0.6  # the SFT model guesses
    assert after["task_accuracy"] >= 0.9
    assert after["task_accuracy"] >= before["task_accuracy"] + 0.3
    assert after["rewards/accuracies"] >= 0.9 and after["rewards/margins"] > 0  # implicit reward ranks held-out pairs
    assert json.loads((cfg.out_dir / "report.json").read_text())["heldout_after"] == after
    assert (cfg.out_dir / "model" / "model.safetensors").is_file()


def test_reward_model_heldout_pair_accuracy_well_above_chance(align_cfg, parity_sets):
    cfg = align_cfg("train.max_steps=80", "optim.lr=3e-3", "data.policy_negatives=false", method="reward")
    report = run_reward(cfg, examples=parity_sets).metrics
    assert report["heldout_before"]["accuracy"] <= 0.7
    assert report["heldout_after"]["accuracy"] >= 0.9
    assert (cfg.out_dir / "model" / "reward.json").is_file()


def unpreferred_parity_sets(parity_sets, make_parity, sft_dirs, tokenizer):
    """The parity train/held-out sets relabelled so that reward 1 goes to the answer ("odd" or "even") the
    SFT model does not give greedily on held-out prompts: a preference RL has to learn."""
    from scratchllm.align.grpo import prompt_ids, reply_text, respond
    from scratchllm.model.model import Transformer

    sft = Transformer.from_pretrained(sft_dirs["policy"])
    greedy = [reply_text(tokenizer, r) for r in respond(sft, tokenizer, prompt_ids(
        tokenizer, [e.prompt for e in parity_sets[1][:20]]), 6)]
    target = "even" if greedy.count("odd") >= greedy.count("even") else "odd"
    return tuple([make_parity(int(e.prompt[0]["content"].split()[-1]), target) for e in s] for s in parity_sets)


def test_grpo_raises_heldout_reward_for_a_fixed_preference(align_cfg, parity_sets, make_parity, sft_dirs,
                                                           tokenizer):
    """Reward 1 for one fixed answer, the one the SFT model does not give greedily: GRPO must move there."""
    train, heldout = unpreferred_parity_sets(parity_sets, make_parity, sft_dirs, tokenizer)
    cfg = align_cfg("train.max_steps=30", "optim.lr=5e-4", "grpo.group_size=4", "rollout.prompts_per_step=8",
                    "grpo.kl_coef=0.02", method="grpo")
    report = run_grpo(cfg, examples=(train, heldout)).metrics
    assert report["heldout_before"]["reward"] <= 0.5
    assert report["heldout_after"]["reward"] >= report["heldout_before"]["reward"] + 0.3
    rows = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    assert {"reward", "kl", "clip_frac", "reply_len"} <= set(train_rows[-1])


def test_rloo_raises_heldout_reward_for_a_fixed_preference(align_cfg, parity_sets, make_parity, sft_dirs, tokenizer):
    """As the GRPO test above: reward 1 for the answer the SFT model does not give greedily."""
    train, heldout = unpreferred_parity_sets(parity_sets, make_parity, sft_dirs, tokenizer)
    cfg = align_cfg("train.max_steps=30", "optim.lr=5e-4", "rloo.group_size=4", "rollout.prompts_per_step=8",
                    "rloo.kl_coef=0.02", method="rloo")
    report = run_rloo(cfg, examples=(train, heldout)).metrics
    assert report["heldout_before"]["reward"] <= 0.5
    assert report["heldout_after"]["reward"] >= report["heldout_before"]["reward"] + 0.3
    assert report["generated_tokens"] > 0


@pytest.mark.slow
def test_grpo_learns_parity_beyond_sft(align_cfg, parity_sets):
    """The real task: GRPO with the programmatic checker lifts held-out accuracy from chance.

    Policy gradient finds the parity rule late (here around step 330 of 400: the reward hovers near 0.5,
    then jumps), unlike DPO's direct contrast of the two answers; about 3 minutes on 2 CPU cores.
    """
    cfg = align_cfg("train.max_steps=400", "optim.lr=1e-3", "grpo.group_size=8", "rollout.prompts_per_step=8",
                    "grpo.kl_coef=0.05", method="grpo")
    report = run_grpo(cfg, examples=parity_sets).metrics
    assert report["heldout_before"]["task_accuracy"] <= 0.6
    assert report["heldout_after"]["task_accuracy"] >= 0.9
