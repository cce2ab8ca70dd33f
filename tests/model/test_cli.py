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
