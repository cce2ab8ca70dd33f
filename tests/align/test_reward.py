"""Reward model: a scalar head on the decoder, Bradley-Terry loss, save/load, scoring rules."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.align.reward import RewardModel, RewardObjective, bradley_terry_loss, pair_accuracy
from scratchllm.errors import ScratchError
from scratchllm.model.model import Transformer


def test_starts_from_the_policy_body(make_model):
    policy = make_model(seed=3)
    rm = RewardModel.from_policy(policy)
    assert rm.lm_head.weight.shape == (1, policy.cfg.d_model)
    for name, value in policy.state_dict().items():
        if not name.startswith("lm_head"):
            assert torch.equal(rm.state_dict()[name], value), name
    ids = torch.tensor([[1, 2, 3, 4]])
    assert rm(ids).shape == (1, 4)


def test_score_reads_the_last_reply_token_whatever_the_padding(make_model):
    rm = RewardModel.from_policy(make_model()).eval()
    ids = torch.tensor([[7, 8, 9, 10, 0, 0], [7, 8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        scores = rm.score(ids, mask)
        alone = rm(ids[:1, :4])[0, 3]
        assert torch.allclose(scores[0], alone, atol=1e-6)
        assert torch.allclose(scores[1], rm(ids[1:])[0, 5], atol=1e-6)


def test_bradley_terry():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log(2)])
    margin = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]), margin=torch.tensor([1.0]))
    assert margin.item() == pytest.approx(math.log(2))


def test_objective_and_accuracy(make_model, tokenizer):
    from scratchllm.align.data import batches_of, encode_pairs, make_pair

    rm = RewardModel.from_policy(make_model())
    batches = batches_of(encode_pairs([make_pair(f"q{i}", "good", "bad") for i in range(4)], tokenizer, 64),
                         2, tokenizer.pad_id)
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss, metrics = RewardObjective()(rm, batches[0])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first and set(metrics) >= {"accuracy", "rewards/margins"}
    result = pair_accuracy(rm, batches)
    assert result["pairs"] == 4 and result["accuracy"] == 1.0


def test_save_load_and_refusals(make_model, tmp_path):
    rm = RewardModel.from_policy(make_model(seed=2))
    rm.save_pretrained(tmp_path / "rm")
    again = RewardModel.from_pretrained(tmp_path / "rm")
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(rm(ids), again(ids))
    with pytest.raises(ScratchError, match="lm_head.weight"):
        Transformer.from_pretrained(tmp_path / "rm")  # not a language model
    make_model().save_pretrained(tmp_path / "lm")
    with pytest.raises(ScratchError, match="not a reward model directory"):
        RewardModel.from_pretrained(tmp_path / "lm")
