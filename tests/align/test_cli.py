"""``scratchllm align ...``: end to end on tiny models, resume, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest

from scratchllm.cli import main


@pytest.fixture
def run_cli(sft_dirs, tmp_path, capsys):
    """run_cli(command, *overrides) -> (exit code, stderr) with the SFT parity model and fast settings."""

    def run(command, *overrides, config=None):
        base = [f"models.policy={sft_dirs['policy']}", f"models.tokenizer={sft_dirs['tokenizer']}",
                "train.device=cpu", "train.num_threads=1", "log.progress=false", "log.tensorboard=false",
                "eval.interval=0", "log.interval=1", "train.batch_size=4", "rollout.max_new_tokens=6",
                "rollout.eval_max_new_tokens=6", "data.n_train=16", "data.n_heldout=8", "data.kinds=[\"add\"]"]
        code = main(["align", command, "--config", config or f"configs/align/{command}.toml", *base, *overrides])
        return code, capsys.readouterr().err

    return run


def test_dpo_on_user_pairs_then_resume(run_cli, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Even or odd: {n}", "chosen": "even" if n % 2 == 0 else "odd",
                                         "rejected": "odd" if n % 2 == 0 else "even"}) + "\n" for n in range(40)))
    out = tmp_path / "dpo"
    args = ["data.source=jsonl", f"data.path={pairs}", f"out_dir={out}", "train.max_steps=3", "checkpoint.interval=2"]
    code, err = run_cli("dpo", *args)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and "task_accuracy" not in report["heldout_after"]  # jsonl: pair metrics only
    assert report["heldout_after"]["rewards/margins"] != 0
    assert (out / "model" / "tokenizer.json").is_file()
    code, err = run_cli("dpo", *args)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    code, err = run_cli("dpo", *args[:-2], "train.max_steps=5", "--resume")
    assert code == 2 and "train.allow_schedule_change=true" in err  # a longer run: a new lr schedule
    code, err = run_cli("dpo", *args[:-2], "train.max_steps=5", "train.allow_schedule_change=true", "--resume")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["steps"] == 5


def test_reward_and_ppo_on_the_embedded_tasks(run_cli, tmp_path):
    code, err = run_cli("reward", f"out_dir={tmp_path / 'rm'}", "train.max_steps=2", "data.policy_negatives=false")
    assert code == 0, err
    assert (tmp_path / "rm" / "model" / "reward.json").is_file()
    rm = f"models.reward_model={tmp_path / 'rm' / 'model'}"
    for method, extra in (("ppo", ["ppo.minibatch_size=2", "rollout.prompts_per_step=4"]),
                          ("grpo", ["grpo.group_size=2", "rollout.prompts_per_step=2"]),
                          ("rloo", ["rloo.group_size=2", "rollout.prompts_per_step=2"])):
        code, err = run_cli(method, f"out_dir={tmp_path / method}", "train.max_steps=2", "rollout.reward=model", rm,
                            *extra)
        assert code == 0, err
        report = json.loads((tmp_path / method / "report.json").read_text())
        assert report["method"] == method and set(report["heldout_after"]) == {"task_accuracy", "reward"}
        assert (tmp_path / method / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(("command", "overrides", "message"), [
    ("dpo", ["dpo.beta=-1"], "dpo.beta must be > 0"),
    ("dpo", ["data.kinds=[\"poetry\"]"], "data.kinds: unknown"),
    ("dpo", ["data.source=jsonl"], "needs data.path"),
    ("grpo", ["grpo.group_size=1"], "grpo.group_size must be >= 2"),
    ("rloo", ["rloo.group_size=1"], "rloo.group_size must be >= 2"),
    ("ppo", ["ppo.lam=2"], "ppo.gamma and ppo.lam must be in [0, 1]"),
    ("dpo", ["models.policy=/nonexistent"], "model directory not found"),
    ("dpo", ["ppo.lam=0.9"], "unknown config key 'ppo'"),  # each command reads its own section only
])
def test_config_errors(run_cli, tmp_path, command, overrides, message):
    code, err = run_cli(command, f"out_dir={tmp_path / 'x'}", *overrides)
    assert code == 2 and message in err and "fix:" in err


def test_reference_that_does_not_match_the_policy(run_cli, make_model, tmp_path):
    make_model(d_model=64).save_pretrained(tmp_path / "other")
    code, err = run_cli("dpo", f"out_dir={tmp_path / 'x'}", f"models.reference={tmp_path / 'other'}")
    assert code == 2 and "the reference model does not match the policy (d_model: 48 vs 64" in err


def test_bad_pair_file_names_the_line(run_cli, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n{"prompt": "b", "chosen": "z", "rejected": "z"}\n')
    code, err = run_cli("dpo", f"out_dir={tmp_path / 'x'}", "data.source=jsonl", f"data.path={pairs}")
    assert code == 2 and f"{pairs}:2: chosen and rejected are the same response" in err


@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_rl_needs_a_reward_model_when_asked(run_cli, tmp_path, method):
    code, err = run_cli(method, f"out_dir={tmp_path / 'x'}", "rollout.reward=model")
    assert code == 2 and "needs models.reward_model" in err


def test_a_reward_model_is_not_a_policy(run_cli, make_model, tmp_path):
    from scratchllm.align.reward import RewardModel

    RewardModel.from_policy(make_model()).save_pretrained(tmp_path / "rm")
    code, err = run_cli("dpo", f"out_dir={tmp_path / 'x'}", f"models.policy={tmp_path / 'rm'}")
    assert code == 2 and "is a reward model, not a language model" in err


def test_ppo_with_lora_and_a_shared_value_head(run_cli, tmp_path):
    code, err = run_cli("ppo", f"out_dir={tmp_path / 'lora'}", "train.max_steps=2", "ppo.lora=true", "lora.r=2",
                        "ppo.value_model=shared", "ppo.minibatch_size=2", "rollout.prompts_per_step=2")
    assert code == 0, err
    from scratchllm.model.model import Transformer

    Transformer.from_pretrained(tmp_path / "lora" / "model")  # merged: a plain model directory


def test_reward_model_with_another_tokenizer(run_cli, make_model, tmp_path):
    from scratchllm.align.reward import RewardModel
    from scratchllm.tokenizer import train_bpe

    RewardModel.from_policy(make_model()).save_pretrained(tmp_path / "rm")
    train_bpe(["abab abab abab"], vocab_size=263 + 1).save_pretrained(tmp_path / "rm")  # one merge more
    for method in ("ppo", "grpo", "rloo"):
        code, err = run_cli(method, f"out_dir={tmp_path / method}", "rollout.reward=model",
                            f"models.reward_model={tmp_path / 'rm'}")
        assert code == 2 and "was trained with a different tokenizer" in err and "fix:" in err
        assert not (tmp_path / method).exists()  # refused before anything was written


def test_value_model_that_does_not_match(run_cli, make_model, tokenizer, tmp_path):
    from scratchllm.align.reward import RewardModel

    RewardModel.from_policy(make_model(context_length=32)).save_pretrained(tmp_path / "short")
    code, err = run_cli("ppo", f"out_dir={tmp_path / 'x'}", f"models.value_model={tmp_path / 'short'}")
    assert code == 2 and "the value model does not match the policy" in err and "context_length 32 vs 96" in err
    code, err = run_cli("ppo", f"out_dir={tmp_path / 'x'}", f"models.value_model={tmp_path / 'short'}",
                        "ppo.value_model=shared")
    assert code == 2 and "ppo.value_model = \"shared\"" in err


def test_prompts_longer_than_the_context_are_refused_up_front(run_cli, make_model, tokenizer, tmp_path):
    make_model(context_length=12).save_pretrained(tmp_path / "small")
    code, err = run_cli("ppo", f"out_dir={tmp_path / 'x'}", f"models.policy={tmp_path / 'small'}")
    assert code == 2 and "leaving no room for a reply" in err and "fix:" in err
    assert not (tmp_path / "x").exists()
