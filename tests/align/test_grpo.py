"""GRPO pieces: group advantages, the clipped/KL objective, and rollouts from the KV-cache generator."""

from __future__ import annotations

import pytest
import torch

from scratchllm.align.config import RolloutSection
from scratchllm.align.grpo import (
    GRPOObjective,
    RolloutSource,
    checkable_reward,
    evaluate_replies,
    group_advantages,
    model_reward,
    reply_text,
)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4)
    assert adv[4:].abs().max() == 0  # a group that agrees teaches nothing
    assert adv[0] > 0 > adv[1] and adv[:4].sum().abs() < 1e-5
    assert torch.allclose(adv[:4] * (r[:4].std() + 1e-4), r[:4] - 0.25)
    assert torch.allclose(group_advantages(r, 4, scale=False)[:4], r[:4] - 0.25)


def _batch(make_model, tokenizer):
    from scratchllm.align.data import pad_sequences

    prompts = [[tokenizer.bos_id, 65, 66]] * 2
    replies = [[67, 68, tokenizer.special_tokens["<|end|>"]], [69, tokenizer.special_tokens["<|end|>"]]]
    batch = pad_sequences(prompts, replies, tokenizer.pad_id)
    batch["advantages"] = torch.tensor([1.0, -1.0])
    batch["rewards"] = torch.tensor([1.0, 0.0])
    return batch


def test_objective_moves_probability_toward_the_advantaged_reply(make_model, tokenizer):
    from scratchllm.align.dpo import sequence_logps

    policy, reference = make_model(seed=4), make_model(seed=4)
    batch = _batch(make_model, tokenizer)
    objective = GRPOObjective(reference, kl_coef=0.0)
    loss, metrics = objective(policy, batch)
    assert metrics["kl"] == 0 and metrics["reward"] == 0.5 and metrics["reply_len"] == 2.5
    with torch.no_grad():
        before = sequence_logps(policy, batch["input_ids"], batch["completion_mask"])
    loss.backward()
    torch.optim.SGD(policy.parameters(), lr=0.05).step()
    with torch.no_grad():
        after = sequence_logps(policy, batch["input_ids"], batch["completion_mask"])
    assert after[0] > before[0] and after[1] < before[1]


def test_kl_penalty_is_zero_at_the_reference_and_positive_away(make_model, tokenizer):
    batch = _batch(make_model, tokenizer)
    batch["advantages"] = torch.zeros(2)
    _, same = GRPOObjective(make_model(seed=4), kl_coef=0.1)(make_model(seed=4), batch)
    loss, other = GRPOObjective(make_model(seed=5), kl_coef=0.1)(make_model(seed=4), batch)
    assert same["kl"] == pytest.approx(0, abs=1e-6) and other["kl"] > 0
    assert loss.item() == pytest.approx(0.1 * other["kl"], rel=1e-5)


def test_clipping_with_old_logprobs(make_model, tokenizer):
    from scratchllm.align.dpo import token_logps

    policy = make_model(seed=4)
    batch = _batch(make_model, tokenizer)
    with torch.no_grad():
        batch["old_logps"] = token_logps(policy, batch["input_ids"]) - 1.0  # ratio e > 1 + eps everywhere
    loss, metrics = GRPOObjective(make_model(seed=4), kl_coef=0.0, clip_eps=0.2)(policy, batch)
    assert metrics["clip_frac"] == 1.0
    loss.backward()
    # Advantage > 0 with the ratio above 1 + eps: clipped, no gradient from that reply; the other reply
    # (advantage < 0) keeps its unclipped term, so the gradient is not zero overall.
    assert policy.tok_emb.weight.grad.abs().sum() > 0


def test_rollouts(make_model, tokenizer, parity_sets):
    policy = make_model(seed=6)
    cfg = RolloutSection(prompts_per_step=2, max_new_tokens=5)
    examples = parity_sets[0][:4]
    src = RolloutSource(policy, tokenizer, examples, checkable_reward, cfg, 0, group_size=3, epochs_per_rollout=2)
    batch = src.next_batch()
    assert batch["input_ids"].shape[0] == 6 and batch["old_logps"].shape[0] == 6
    assert batch["completion_mask"].sum(-1).min() >= 1
    assert torch.equal(src.next_batch()["input_ids"], batch["input_ids"])  # second epoch on the same rollouts
    state = src.state_dict()
    third = src.next_batch()
    again = RolloutSource(policy, tokenizer, examples, checkable_reward, cfg, 0, group_size=3, epochs_per_rollout=2)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["input_ids"], third["input_ids"])  # seeded: resume samples the same


def test_checkable_reward_and_evaluation(make_model, tokenizer, parity_sets):
    ex = parity_sets[1][:3]
    assert checkable_reward(ex, [ex[0].answer, "maybe", ex[2].answer + "."], [], []).tolist() == [1.0, 0.0, 1.0]
    policy = make_model(seed=7)
    result = evaluate_replies(policy, tokenizer, ex, 4, reward_fn=lambda e, t, p, r: torch.full((len(e),), 0.25))
    assert result == {"task_accuracy": 0.0, "reward": 0.25}  # an untrained model is never right


def test_model_reward_scores_prompt_plus_reply(make_model, tokenizer):
    from scratchllm.align.reward import RewardModel

    rm = RewardModel.from_policy(make_model()).eval()
    fn = model_reward(rm, tokenizer.pad_id)
    prompts, replies = [[1, 2, 3], [1, 2]], [[4, 5], [6]]
    scores = fn([None, None], ["", ""], prompts, replies)
    with torch.no_grad():
        assert torch.allclose(scores[0], rm(torch.tensor([[1, 2, 3, 4, 5]]))[0, -1], atol=1e-6)
        assert torch.allclose(scores[1], rm(torch.tensor([[1, 2, 6]]))[0, -1], atol=1e-6)


def test_reply_text_drops_stop_tokens(tokenizer):
    ids = tokenizer.encode_ordinary("odd") + [tokenizer.special_tokens["<|end|>"]]
    assert reply_text(tokenizer, ids) == "odd"
    assert reply_text(tokenizer, [*ids[:-1], tokenizer.eos_id]) == "odd"
