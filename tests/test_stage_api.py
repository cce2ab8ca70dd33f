"""The stage API and config shape of issue #16: one run(config) -> StageResult per stage, one shared
training config, one preset merge, one config per align command."""

from __future__ import annotations

import pytest

from scratchllm.config import apply_preset, from_dict, load_config, to_dict
from scratchllm.errors import ScratchError
from scratchllm.model.model import ModelConfig
from scratchllm.stage import StageResult
from scratchllm.train.config import TrainConfig, TrainingConfig


def test_tokenizer_run_returns_a_stage_result(tmp_path):
    from scratchllm.tokenizer import Tokenizer
    from scratchllm.tokenizer.config import TokenizerTrainConfig
    from scratchllm.tokenizer.run import run

    cfg = load_config(TokenizerTrainConfig, "tokenizer/default",
                      ["corpus.max_bytes_per_domain=20000", "tokenizer.vocab_size=300", f'out_dir="{tmp_path / "tok"}"'])
    result = run(cfg)
    assert isinstance(result, StageResult) and result.completed and result.exit_code == 0
    assert result.outputs["tokenizer"] == tmp_path / "tok"
    assert Tokenizer.load(result.outputs["tokenizer"]).vocab_size == result.metrics["vocab_size"] == 300
    assert result.metrics["documents"] > 0 and result.metrics["bytes_per_token"] > 1.0
    assert "out_dir" in (tmp_path / "tok" / "train_config.toml").read_text()


def test_every_training_config_is_the_trainers_config():
    from scratchllm.align.config import COMMAND_CONFIGS, ConstitutionalConfig
    from scratchllm.finetune.config import FinetuneConfig

    for cls in [TrainConfig, FinetuneConfig, *COMMAND_CONFIGS.values()]:
        if cls is not ConstitutionalConfig:  # trains nothing
            assert issubclass(cls, TrainingConfig), cls


@pytest.mark.parametrize("command, other", [("dpo", "ppo.epochs=2"), ("grpo", "rloo.group_size=4"),
                                            ("reward", "dpo.beta=0.2"), ("constitutional", "optim.lr=1e-3")])
def test_an_align_command_refuses_another_methods_settings(command, other):
    from scratchllm.align.config import COMMAND_CONFIGS

    load_config(COMMAND_CONFIGS[command], f"align/{command}")  # its own preset loads
    with pytest.raises(ScratchError, match=f"unknown config key '{other.split('.')[0]}'"):
        load_config(COMMAND_CONFIGS[command], f"align/{command}", [other])


def test_max_tokens_decides_the_steps_in_one_place():
    cfg = load_config(TrainConfig, None, ["data.seq_len=16", "model.context_length=16", "train.batch_size=4",
                                          "train.grad_accum=2", "train.max_tokens=1000", "train.max_steps=3"])
    assert cfg.tokens_per_step() == 128 and cfg.tokens_per_step(dp=2) == 256
    assert cfg.total_steps() == 8 and cfg.total_steps(dp=2) == 4  # ceil(1000 / 128), ceil(1000 / 256)
    cfg.train.max_tokens = 0
    assert cfg.total_steps() == 3


def test_the_model_section_is_typed_and_a_preset_chain_merges(tmp_path):
    (tmp_path / "a.toml").write_text('d_model = 32\nn_heads = 2\nvocab_size = 300\n')
    (tmp_path / "b.toml").write_text('preset = "a.toml"\nn_layers = 3\nd_model = 64\n')
    cfg = load_config(TrainConfig, None, [f'model.preset="{tmp_path / "b.toml"}"', "model.n_layers=5",
                                          "data.seq_len=8"])
    assert isinstance(cfg.model, ModelConfig)
    # b over a, the table over b: d_model from b, n_layers from the override, the rest from a
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.vocab_size) == (64, 5, 2, 300)
    assert "preset" not in to_dict(cfg)["model"] and to_dict(cfg)["model"]["n_kv_heads"] == 2


def test_a_preset_cycle_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "a.toml").write_text('preset = "b.toml"\nd_model = 32\n')
    (tmp_path / "b.toml").write_text('preset = "a.toml"\n')
    with pytest.raises(ScratchError, match="cycle"):
        from_dict(ModelConfig, {"preset": str(tmp_path / "a.toml")})


def test_a_table_override_replaces_a_presets_value_map(tmp_path):
    from scratchllm.data.config import DataConfig

    merged = apply_preset(DataConfig, {"preset": "data/tiny", "mix": {"weights": {"prose": 1.0}}})
    assert merged["mix"]["weights"] == {"prose": 1.0}


@pytest.mark.parametrize("command", [["tokenizer", "train"], ["data", "prepare"], ["train"], ["finetune"],
                                     ["align", "dpo"], ["align", "constitutional"], ["pipeline"],
                                     ["inspect", "tokens"], ["inspect", "embeddings"], ["inspect", "attention"],
                                     ["inspect", "memory"], ["model", "init"], ["import", "hf"]])
def test_a_missing_config_file_is_the_same_error_for_every_command(command, tmp_path, capsys):
    from scratchllm.cli import main

    assert main([*command, "--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert f"error: config file not found: {tmp_path / 'nope.toml'}" in err and "fix: give a path" in err


def test_the_command_line_parser_does_not_import_torch():
    """`scratchllm --help` stays quick: registering the commands imports no stage config that needs torch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    code = "import sys; from scratchllm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(src)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
