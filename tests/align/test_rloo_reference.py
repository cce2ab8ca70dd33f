"""RLOO: advantages and loss by hand, and against trl's RLOOTrainer on the same batch.

trl computes RLOO's advantages inside ``RLOOTrainer._generate_and_score_completions`` (after generating)
and its loss in ``_compute_loss``. We build a real RLOOTrainer around our tiny models exported to Hugging
Face Llama, replace only its generation step with fixed completions, and let it score them, compute the
KL-penalised rewards, the leave-one-out advantages and the loss; our code gets the same tokens.
"""

from __future__ import annotations

import pytest
import torch

from scratchllm.align.rloo import RLOOObjective, rloo_advantages, rloo_loss

from .conftest import HFLogits


def test_rloo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    adv = rloo_advantages(r, 3)
    # group 1: 1 - (0 + 0)/2 = 1, 0 - (1 + 0)/2 = -0.5 (twice); group 2 agrees: 0
    assert torch.allclose(adv, torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))
    norm = rloo_advantages(r, 3, normalize=True)
    assert torch.allclose(norm, (adv - adv.mean()) / (adv.std() + 1e-4))


def test_rloo_loss_by_hand():
    logps, old = torch.tensor([0.5, 0.0, -0.1]), torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, -2.0])
    loss, clipped = rloo_loss(logps, old, adv, clip_eps=0.2)
    # ratio e^0.5 = 1.65 > 1.2 with A > 0: clipped to 1.2; ratio 1 with A = -1; ratio e^-0.1 = 0.905 with A = -2
    expected = -(1.2 * 1.0 + 1.0 * -1.0 + torch.exp(torch.tensor(-0.1)).item() * -2.0) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert clipped.tolist() == [True, False, False]


@pytest.fixture(scope="module")
def trl_rloo(tokenizer, make_model, tmp_path_factory):
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    from scratchllm.model.hf import export_hf

    policy, reference = make_model(seed=11), make_model(seed=12)
    d = tmp_path_factory.mktemp("hf_rloo")
    export_hf(policy, d / "policy", tokenizer)
    export_hf(reference, d / "reference", tokenizer)
    hf_policy = AutoModelForCausalLM.from_pretrained(d / "policy", dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 0.9, 0.9, 0.1])

    def reward_fn(prompts, completions, **kwargs):
        return rewards.tolist()

    args = RLOOConfig(output_dir=str(d / "trl"), report_to=[], use_cpu=True, beta=0.05, num_generations=4,
                      per_device_train_batch_size=8, save_strategy="no", normalize_advantages=False,
                      epsilon=0.2, max_completion_length=8)
    trainer = RLOOTrainer(model=hf_policy, reward_funcs=reward_fn, args=args,
                          train_dataset=Dataset.from_list([{"prompt": "p"}] * 8),
                          processing_class=AutoTokenizer.from_pretrained(d / "policy"))
    from trl.trainer.rloo_trainer import add_fused_lm_head

    # A reference that differs from the policy (trl would load the policy's own weights), so the KL term counts.
    trainer.ref_model = AutoModelForCausalLM.from_pretrained(d / "reference", dtype=torch.float32).eval()
    add_fused_lm_head(trainer.ref_model, temperature=trainer.temperature)
    eos = trainer.eos_token_ids[0]
    prompt = [tokenizer.bos_id, 70, 71]  # same length for every row: no left padding to line up
    replies = [[72, 73, eos], [74, eos], [75, 76, 77, eos], [eos], [78, eos], [79, 80, eos], [81, eos], [82, 83, eos]]
    trainer._generate = lambda prompts: ([prompt] * 8, replies, ["x"] * 8)
    trainer.model.train()
    with torch.no_grad():
        out = trainer._generate_and_score_completions([{"prompt": "p"}] * 8)
    return trainer, out, policy, reference, rewards, prompt, replies


def _our_batch(tokenizer, prompt, replies, rewards):
    from scratchllm.align.data import pad_sequences

    batch = pad_sequences([prompt] * len(replies), replies, tokenizer.pad_id)
    batch["rewards"] = rewards
    return batch


@pytest.mark.parametrize("normalize", [False, True])
def test_advantages_equal_trl(trl_rloo, tokenizer, normalize):
    from scratchllm.align.rloo import rloo_prepare

    trainer, out, policy, reference, rewards, prompt, replies = trl_rloo
    if normalize:
        trainer.normalize_advantages = True
        with torch.no_grad():
            out = trainer._generate_and_score_completions([{"prompt": "p"}] * 8)
        trainer.normalize_advantages = False
    ours = rloo_prepare(policy, reference, 4, kl_coef=0.05, normalize=normalize)(
        _our_batch(tokenizer, prompt, replies, rewards))
    # trl scores tokens with its fused, chunked LM head, whose log-prob sums differ from a plain forward pass
    # (trl's own network or ours on the same weights) by up to ~3e-3; with beta = 0.05 that moves advantages by
    # ~1e-4, while a wrong baseline or KL term would move them by > 1e-2 (the two networks' KL is ~0.5 per reply).
    for net in (ours, rloo_prepare(HFLogits(trainer.model), HFLogits(trainer.ref_model), 4, kl_coef=0.05,
                                   normalize=normalize)(_our_batch(tokenizer, prompt, replies, rewards))):
        mask = net["completion_mask"][:, 1:].float()
        assert torch.allclose((net["old_logps"] * mask).sum(-1), out["old_logps"].float(), atol=5e-3)
        assert torch.allclose(net["advantages"], out["advantages"].float(), atol=5e-4)
    # ... and the KL term does count here: without it the advantages are off by more than that tolerance.
    no_kl = rloo_prepare(policy, reference, 4, kl_coef=0.0, normalize=normalize)(
        _our_batch(tokenizer, prompt, replies, rewards))
    assert (no_kl["advantages"] - out["advantages"]).abs().max() > 5e-3
    assert ours["advantages"].abs().sum() > 0


def test_loss_equals_trl(trl_rloo, tokenizer):
    from scratchllm.align.rloo import rloo_prepare

    trainer, out, policy, reference, rewards, prompt, replies = trl_rloo
    batch = rloo_prepare(HFLogits(trainer.model), HFLogits(trainer.ref_model), 4, kl_coef=0.05)(
        _our_batch(tokenizer, prompt, replies, rewards))
    # Pretend the policy moved since the rollout: shift the old log-probs so some ratios clip.
    shift = torch.tensor([0.5, -0.5, 0.0, 0.3, -0.05, 0.25, -0.3, 0.1])
    adv = torch.tensor([3.0, -2.0, 1.0, -4.0, 2.5, -1.0, 0.5, -3.0])  # large, so the loss is O(1)
    trl_inputs = {**out, "old_logps": out["old_logps"] - shift, "advantages": adv}
    batch["advantages"] = adv
    mask = batch["completion_mask"][:, 1:].float()
    first = mask.float().argmax(-1)
    batch["old_logps"] = batch["old_logps"].clone()
    batch["old_logps"][torch.arange(8), first] -= shift  # the same shift on each reply's sum
    with torch.no_grad():
        ref_loss = trainer._compute_loss(trainer.model, trl_inputs)
        loss, metrics = RLOOObjective(clip_eps=0.2)(HFLogits(trainer.model), batch)
        ours, _ = RLOOObjective(clip_eps=0.2)(policy.eval(), batch)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-3)
    assert ours.item() == pytest.approx(ref_loss.item(), abs=1e-3)
    assert abs(ref_loss.item()) > 0.1
    assert metrics["clip_frac"] == pytest.approx(trainer._metrics["train"]["clip_ratio/region_mean"][-1])
    assert metrics["clip_frac"] > 0
