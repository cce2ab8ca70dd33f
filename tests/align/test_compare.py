"""The comparison's drift metrics: KL to the reference on sampled held-out replies, held-out reply perplexity."""

from __future__ import annotations

import math


from scratchllm.align.compare import drift


def test_drift_is_zero_against_itself_and_positive_against_another(make_model, tokenizer, parity_sets):
    policy = make_model(seed=1)
    heldout = parity_sets[1][:6]
    same = drift(policy, make_model(seed=1), tokenizer, heldout, max_new_tokens=4)
    assert abs(same["kl"]) < 1e-5
    other = drift(policy, make_model(seed=2), tokenizer, heldout, max_new_tokens=4)
    assert other["kl"] != same["kl"]
    assert other["heldout_ppl"] == same["heldout_ppl"]  # perplexity is the policy's alone
    # An untrained model: close to uniform over the 263-token vocabulary on the reply tokens.
    assert 100 < same["heldout_ppl"] < 1000


def test_compare_stage_end_to_end_then_a_rerun_keeps_the_finished_runs(sft_dirs, parity_sets, tmp_path):
    """All four methods, both rewards, a tiny token budget: one table, one plot; the rerun trains nothing."""
    import json

    from scratchllm.align.compare import CompareConfig, run
    from scratchllm.config import load_config

    cfg = load_config(CompareConfig, "configs/align/compare.toml", [
        f'out_dir="{tmp_path / "cmp"}"', f'models.policy="{sft_dirs["policy"]}"',
        f'models.tokenizer="{sft_dirs["tokenizer"]}"', "train.device=cpu", "train.num_threads=1",
        "log.progress=false", "checkpoint.interval=0", "compare.budget_tokens=160", "compare.reward_steps=4",
        "compare.calibration_prompts=8", "rollout.prompts_per_step=4", "rollout.max_new_tokens=6",
        "rollout.eval_max_new_tokens=6", "ppo.minibatch_size=2", "ppo.epochs=1", "grpo.group_size=2",
        "rloo.group_size=2", "data.policy_negatives=false", "train.batch_size=4", "optim.lr=1e-3"])
    examples = (parity_sets[0][:64], parity_sets[1][:8])
    said: list[str] = []
    result = run(cfg, examples=examples, say=said.append)
    assert result.completed and result.outputs["plot"].read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(result.outputs["report"].read_text())
    res = summary["results"]
    labels = ["sft", "dpo", "ppo-checkable", "ppo-model", "grpo-checkable", "grpo-model", "rloo-checkable",
              "rloo-model"]
    assert list(res) == labels
    for label in labels:
        r = res[label]
        assert 0 <= r["task_accuracy"] <= 1 and r["kl"] == r["kl"] and r["heldout_ppl"] > 1 and "rm_score" in r
    assert abs(res["sft"]["kl"]) < 1e-5  # the SFT model against itself
    # Equal sampled replies for every RL run: the planned budget, in whole rollouts.
    replies = summary["replies"]
    assert replies == round(160 / summary["sft_reply_tokens"])
    for label in labels[2:]:
        assert res[label]["generated_tokens"] > 0
    assert res["dpo"]["generated_tokens"] == 0 and res["ppo-model"]["steps"] == -(-replies // 4) * 2
    assert res["grpo-model"]["steps"] == -(-replies // 8)
    assert any("training reward model" in s for s in said)
    said.clear()
    again = run(cfg, examples=examples, say=said.append)
    assert sum("finished before, kept" in s for s in said) == 8  # reward model + 7 runs: nothing retrained
    assert json.loads(again.outputs["report"].read_text())["results"]["rloo-model"]["steps"] == res["rloo-model"]["steps"]


def test_compare_config_errors():
    import pytest

    from scratchllm.align.compare import CompareConfig
    from scratchllm.config import load_config
    from scratchllm.errors import ScratchError

    for bad, message in ((["compare.methods=[\"sft\"]"], "unknown or empty method"),
                         (["compare.rewards=[\"votes\"]"], "unknown or empty method/reward 'votes'"),
                         (["compare.budget_tokens=0"], "budget_tokens")):
        with pytest.raises(ScratchError, match=message):
            load_config(CompareConfig, "configs/align/compare.toml", bad)
