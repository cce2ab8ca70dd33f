from __future__ import annotations

from pathlib import Path

import pytest

from scratchllm.cli import main

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"


def test_model_info_prints_size_memory_and_flops(capsys):
    assert main(["model", "info", "--config", str(PRESETS / "10m.toml")]) == 0
    out = capsys.readouterr().out
    assert "parameters   11,015,040 (11.02M)" in out
    assert "n_kv_heads=2" in out and "MFLOP training" in out and "AdamW" in out and "activations" in out


def test_model_info_from_checkpoint_and_overrides(tmp_path, capsys):
    config = str(PRESETS / "1m.toml")
    assert main(["model", "init", "--config", config, "n_layers=2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["model", "info", "--checkpoint", str(tmp_path), "--seq-len", "64"]) == 0
    assert "n_layers=2" in capsys.readouterr().out


def test_model_init_and_info_take_their_keys_as_key_value_with_the_flags_as_aliases(tmp_path, capsys):
    config = ["--config", str(PRESETS / "1m.toml"), "n_layers=2"]
    assert main(["model", "init", *config, f"out_dir={tmp_path / 'a'}", "seed=3"]) == 0
    assert main(["model", "init", *config, "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert main(["model", "init", *config, "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in "abc"]
    assert weights[0] == weights[1] != weights[2]  # the seed key and --seed are the same setting
    capsys.readouterr()
    assert main(["model", "info", f"checkpoint={tmp_path / 'a'}", "seq_len=64"]) == 0
    keys = capsys.readouterr().out
    assert main(["model", "info", "--checkpoint", str(tmp_path / "a"), "--seq-len", "64"]) == 0
    assert capsys.readouterr().out == keys and "n_layers=2" in keys and "at T=64" in keys
    assert main(["model", "info", "--checkpoint", str(tmp_path / "a"), "n_layers=3"]) == 2
    assert "cannot be combined with a checkpoint" in capsys.readouterr().err
    assert main(["model", "init", *config]) == 2
    assert "fix: pass out_dir=DIR (or --out DIR)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["n_heads=3"], "n_heads=3 does not divide d_model=128"),
        (["n_kv_heads=3"], "n_heads=4 is not a multiple of n_kv_heads=3"),
        (["d_modle=3"], "unknown config key 'd_modle'"),
    ],
)
def test_bad_config_is_a_clean_error(capsys, args, message):
    assert main(["model", "info", "--config", str(PRESETS / "1m.toml"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
