"""PPO pieces: GAE, per-token rewards, the clipped losses, whitening, the KL controller, the actor-critic
model and the rollout source (minibatches, exact resume, early stop, guards)."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.align.config import PPOSection, RolloutSection
from scratchllm.align.grpo import checkable_reward
from scratchllm.align.ppo import (
    ActorCritic,
    AdaptiveKLController,
    PPOObjective,
    PPORolloutSource,
    check_prompt_lengths,
    gae,
    logps_and_entropy,
    masked_whiten,
    per_token_rewards,
    ppo_losses,
)
from scratchllm.errors import ScratchError


def test_gae_by_hand_with_prompt_and_padding():
    # Row 0: prompt token, 3 reply tokens (the last is <|end|>), padding. Row 1: 2 reply tokens.
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.float)
    rewards = torch.tensor([[9.0, 0.1, 0.2, 1.0, 5.0], [9.0, 0.0, -1.0, 4.0, 4.0]])  # off-mask entries ignored
    values = torch.tensor([[7.0, 0.5, 0.4, 0.3, 8.0], [7.0, 0.2, 0.6, 3.0, 3.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # Row 0, backwards: d3 = 1 - 0.3 = 0.7; d2 = 0.2 + 0.9*0.3 - 0.4 = 0.07, A2 = 0.07 + 0.45*0.7 = 0.385;
    # d1 = 0.1 + 0.9*0.4 - 0.5 = -0.04, A1 = -0.04 + 0.45*0.385 = 0.13325.
    assert torch.allclose(adv[0], torch.tensor([0, 0.13325, 0.385, 0.7, 0]), atol=1e-6)
    assert torch.allclose(ret[0], torch.tensor([0, 0.63325, 0.785, 1.0, 0]), atol=1e-6)
    # Row 1: d2 = -1 - 0.6 = -1.6; d1 = 0 + 0.9*0.6 - 0.2 = 0.34, A1 = 0.34 + 0.45*(-1.6) = -0.38.
    assert torch.allclose(adv[1], torch.tensor([0, -0.38, -1.6, 0, 0]), atol=1e-6)
    assert torch.allclose(ret[1], torch.tensor([0, -0.18, -1.0, 0, 0]), atol=1e-6)


def _cleanrl_gae(rewards, values, gamma, lam):
    """CleanRL's ppo.py loop (dones/next_done form) for one episode that ends after the last step."""
    n = len(rewards)
    dones, next_done, next_value = [0.0] * n, 1.0, 123.0  # next_value is ignored: the episode is over
    adv, last = [0.0] * n, 0.0
    for t in reversed(range(n)):
        if t == n - 1:
            nonterminal, next_v = 1.0 - next_done, next_value
        else:
            nonterminal, next_v = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        adv[t] = last = delta + gamma * lam * nonterminal * last
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def test_gae_matches_cleanrl_on_random_ragged_replies():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 12
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    spans = [(1, 5), (3, 12), (0, 1), (2, 9), (4, 7), (6, 12)]
    for row, (a, b) in enumerate(spans):
        mask[row, a:b] = 1
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    for row, (a, b) in enumerate(spans):
        ref_adv, ref_ret = _cleanrl_gae(rewards[row, a:b].tolist(), values[row, a:b].tolist(), 0.97, 0.9)
        assert torch.allclose(adv[row, a:b], torch.tensor(ref_adv), atol=1e-5)
        assert torch.allclose(ret[row, a:b], torch.tensor(ref_ret), atol=1e-5)
        assert adv[row, :a].abs().sum() == 0 and adv[row, b:].abs().sum() == 0


def test_per_token_rewards_put_the_score_on_the_last_reply_token():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float)
    logps = torch.tensor([[-1.0, -0.5, -0.2, -3.0], [-1.0, -1.0, -0.1, -0.3]])
    ref = torch.tensor([[-2.0, -1.0, -0.4, -1.0], [-1.0, -1.0, -0.5, -0.2]])
    rewards, kl = per_token_rewards(logps, ref, mask, torch.tensor([2.0, -1.0]), kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0, 0.5, 0.2, 0], [0, 0, 0.4, -0.1]]), atol=1e-6)
    assert torch.allclose(rewards, torch.tensor([[0, -0.05, -0.02 + 2.0, 0], [0, 0, -0.04, 0.01 - 1.0]]), atol=1e-6)


def test_ppo_losses_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    logps = torch.tensor([[math.log(1.5), math.log(0.9), 3.0]])  # the padding entry must not count
    out = ppo_losses(logps, torch.zeros(1, 3), torch.tensor([[2.0, -1.0, 7.0]]), torch.tensor([[1.0, 0.0, 9.0]]),
                     torch.tensor([[0.5, 0.1, 0.0]]), torch.tensor([[0.6, 1.0, 0.0]]), mask, 0.2, 0.2)
    # token 0: ratio 1.5 > 1.2 with A = 2 -> clipped, -2 * 1.2 = -2.4; token 1: ratio 0.9, A = -1 -> 0.9.
    assert out["pg_loss"].item() == pytest.approx((-2.4 + 0.9) / 2)
    assert out["clip_frac"].item() == pytest.approx(0.5)
    # values: token 0 max((1 - 0.6)^2, (0.7 - 0.6)^2) = 0.16; token 1 (0 - 1)^2 = 1 either way.
    assert out["vf_loss"].item() == pytest.approx(0.5 * (0.16 + 1.0) / 2)
    assert out["vf_clip_frac"].item() == 0
    assert out["approx_kl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.9) ** 2) / 2)


def test_masked_whiten_and_the_kl_controller():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert torch.allclose(w[0, :3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4)  # unbiased std of 1, 2, 3 is 1
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False)[0, :3], torch.tensor([1.0, 2.0, 3.0]), atol=1e-4)
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=100)
    ctl.update(4.0, 10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(1.5, 10)  # error -0.25 -> -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = AdaptiveKLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


def test_logps_and_entropy():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    logps, ent = logps_and_entropy(logits, ids)
    assert torch.allclose(logps, torch.tensor([[math.log(0.5), math.log(0.75)]]), atol=1e-6)
    assert ent[0, 0].item() == pytest.approx(math.log(2))
    logps_t, _ = logps_and_entropy(logits, ids, temperature=2.0)  # logits / 2
    assert logps_t[0, 1].item() == pytest.approx(math.log(3**0.5 / (3**0.5 + 1)), rel=1e-5)


def test_actor_critic_shared_head_reads_the_final_hidden_state(make_model):
    policy = make_model(seed=1)
    model = ActorCritic(policy)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.nn.init.normal_(model.value_head.weight)
    logits, values = model(ids)
    with torch.no_grad():
        assert torch.equal(logits, policy(ids))
        hidden = {}
        h = policy.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("x", o))
        policy(ids)
        h.remove()
        assert torch.allclose(values, (hidden["x"] @ model.value_head.weight.T).squeeze(-1))
    assert values.shape == (1, 4)


def _source(make_model, tokenizer, examples, **ppo):
    from scratchllm.align.reward import RewardModel

    policy = make_model(seed=3)
    critic = RewardModel.from_policy(policy)
    model = ActorCritic(policy, critic)
    rollout = RolloutSection(prompts_per_step=4, max_new_tokens=4)
    cfg = PPOSection(**{"minibatch_size": 2, "epochs": 2, **ppo})
    return PPORolloutSource(model, make_model(seed=3), tokenizer, examples, checkable_reward, rollout, cfg, 0)


def test_rollout_minibatches_penalty_and_exact_resume(make_model, tokenizer, parity_sets):
    examples = parity_sets[0][:8]
    src = _source(make_model, tokenizer, examples)
    first = [src.next_batch() for _ in range(3)]
    assert all(b["input_ids"].shape[0] == 2 for b in first)
    assert {"old_logps", "old_values", "advantages", "returns", "reward", "kl"} <= set(first[0])
    # An untrained policy never closes with <|end|> in 4 tokens: every score is 0 - unfinished_penalty.
    assert first[0]["reward"].item() == -1.0 and first[0]["finished"].item() == 0.0
    assert first[0]["kl"].item() == pytest.approx(0.0, abs=1e-5)  # the reference is the same network
    from scratchllm.train.checkpoint import from_json, to_json

    state = from_json(to_json(src.state_dict()))  # as a checkpoint stores it, mid-rollout
    rest = [src.next_batch() for _ in range(3)]  # the 4th minibatch, then a new rollout
    again = _source(make_model, tokenizer, examples)
    again.load_state_dict(state)
    for a, b in zip(rest, [again.next_batch() for _ in range(3)], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    src.stop_rollout()  # early stop on KL: the queued minibatches of this rollout are dropped
    assert src.next_batch()["input_ids"].shape[0] == 2 and len(src._pending) == 3


def test_kl_guard_stops_with_a_clear_error(make_model, tokenizer, parity_sets):
    src = _source(make_model, tokenizer, parity_sets[0][:8], max_kl=1e-6)
    src.reference = make_model(seed=9)  # a different network: KL well above the limit
    with pytest.raises(ScratchError, match="above ppo.max_kl") as e:
        src.next_batch()
    assert "--resume" in e.value.hint
    src = _source(make_model, tokenizer, parity_sets[0][:8])
    with torch.no_grad():
        src.reference.tok_emb.weight.fill_(float("nan"))
    with pytest.raises(ScratchError, match="not finite"):
        src.next_batch()


def test_objective_early_stop_and_gradients(make_model, tokenizer, parity_sets):
    src = _source(make_model, tokenizer, parity_sets[0][:8], stop_kl=1e-9)
    batch = src.next_batch()
    objective = PPOObjective(src.cfg, 1.0, src)
    batch["old_logps"] = batch["old_logps"] - 0.5  # the policy has moved since the rollout
    loss, metrics = objective(src.model, batch)
    assert metrics["approx_kl"] > 1e-9 and src._skip
    loss.backward()
    assert src.model.critic.lm_head.weight.grad.abs().sum() > 0  # the value loss reaches the critic
    assert src.model.policy.tok_emb.weight.grad.abs().sum() > 0


def test_prompts_longer_than_the_context(tokenizer, parity_sets):
    check_prompt_lengths(tokenizer, parity_sets[0][:4], 96, "training")
    with pytest.raises(ScratchError, match="training prompt 0 has .* leaving no room for a reply"):
        check_prompt_lengths(tokenizer, parity_sets[0][:4], 8, "training")
