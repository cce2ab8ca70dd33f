from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from scratchllm.errors import ScratchError
from scratchllm.model.checkpoint import state_dict_bytes
from scratchllm.model.model import ModelConfig, Transformer


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_round_trip(tmp_path, make_model, tokens, tie, pos_emb):
    model = make_model(tie_embeddings=tie, pos_emb=pos_emb)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    again = Transformer.from_pretrained(tmp_path).eval()
    assert again.cfg == model.cfg
    torch.testing.assert_close(again(tokens), model(tokens), atol=0, rtol=0)
    assert (again.lm_head.weight is again.tok_emb.weight) == tie
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_kv_heads"] == 2 and config["d_ff"] == 80  # resolved values are written out


def test_default_sizes_are_resolved_in_the_saved_config(tmp_path, make_model):
    make_model(n_kv_heads=None, d_ff=None).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_kv_heads"] == 4 and config["d_ff"] == 128  # 8/3 * 48 = 128


def test_shape_mismatch_names_tensor_and_file(tmp_path, make_model):
    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["d_ff"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchError, match=r"model\.safetensors: tensor 'layers\.0\.mlp\.gate_proj\.weight' has shape "
                                           r"\(80, 48\), but the config needs \(96, 48\)"):
        Transformer.from_pretrained(tmp_path)


def test_missing_and_unexpected_tensors(tmp_path, make_model):
    make_model(n_layers=1).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layers": 2}))
    with pytest.raises(ScratchError, match="tensor 'layers.1.attn_norm.weight' is missing"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "pos_emb": "sinusoidal"}))
    Transformer.from_pretrained(tmp_path)  # same tensors: fine
    (tmp_path / "config.json").write_text(json.dumps({**config, "pos_emb": "learned"}))
    with pytest.raises(ScratchError, match="tensor 'pos_emb.weight' is missing"):
        Transformer.from_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in make_model(n_layers=1).state_dict().items() if k != "lm_head.weight"}
    save_file({**state, "extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchError, match="unexpected tensor 'extra.weight'"):
        Transformer.from_pretrained(tmp_path)


def test_truncated_or_corrupt_weights_name_the_file(tmp_path, make_model):
    make_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    for bad in (data[: len(data) // 2], data[:5], b"", b"\x00" * 64, b"not a safetensors file at all"):
        weights.write_bytes(bad)
        with pytest.raises(ScratchError, match=r"model\.safetensors is not a valid safetensors file"):
            Transformer.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(ScratchError, match="weights file not found: .*model.safetensors"):
        Transformer.from_pretrained(tmp_path)


def test_bad_config_json_names_the_file(tmp_path, make_model):
    make_model().save_pretrained(tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text('{"d_model": 48,')
    with pytest.raises(ScratchError, match=r"config\.json is not valid JSON"):
        Transformer.from_pretrained(tmp_path)
    cfg_file.write_text(json.dumps({"d_model": 48, "n_heads": 5}))
    with pytest.raises(ScratchError, match=r"config\.json: model config: n_heads=5 does not divide d_model=48"):
        Transformer.from_pretrained(tmp_path)
    cfg_file.write_text(json.dumps({"d_modle": 48}))
    with pytest.raises(ScratchError, match=r"config\.json: unknown config key 'd_modle'"):
        Transformer.from_pretrained(tmp_path)
    with pytest.raises(ScratchError, match="model directory not found"):
        Transformer.from_pretrained(tmp_path / "nope")


def test_state_dict_bytes_counts_stored_weights_once():
    """The one weight count: a tied embedding/head once, the RoPE tables (not weights) not at all."""
    for tie in (True, False):
        cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                          context_length=16, tie_embeddings=tie)
        model = Transformer(cfg)
        assert state_dict_bytes(model) == 4 * model.num_params()  # fp32, the tied head counted once
        assert state_dict_bytes(model.to(torch.bfloat16)) == 2 * model.num_params()
