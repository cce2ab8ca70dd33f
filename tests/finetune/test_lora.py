from __future__ import annotations

import json

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.finetune.lora import (
    LoraConfig,
    apply_lora,
    count_trainable,
    load_adapter,
    lora_layers,
    merge_lora,
    merged_model,
    save_adapter,
    save_peft_adapter,
    unmerge_lora,
)
from scratchllm.model.hf import export_hf
from scratchllm.model.model import ModelConfig, Transformer

CFG = dict(vocab_size=300, context_length=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**CFG, **kw})).eval()


def randomize(model, std: float = 0.1) -> None:
    # B starts at zero (adapter = identity); give it values so the adapter does something
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=std)


X = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))


def test_starts_as_base_freezes_base_and_targets_by_pattern():
    m = tiny()
    base = m(X)
    names = apply_lora(m, LoraConfig(r=4, alpha=8, target_modules=["q_proj", r"layers\.1\.mlp\.down_proj"]))
    assert names == ["layers.0.attn.q_proj", "layers.1.attn.q_proj", "layers.1.mlp.down_proj"]
    assert torch.equal(m(X), base)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{p}.weight" for n in names for p in "AB"}
    t, total = count_trainable(m)
    assert t == 2 * 4 * (32 + 32) + 4 * (64 + 32) and total > 10 * t  # q: 32->32, down: 64->32


def test_merge_unmerge_and_merged_model():
    m = tiny()
    apply_lora(m, LoraConfig(r=4, alpha=8))
    randomize(m)
    w0 = m.layers[0].attn.q_proj.base.weight.clone()
    out = m(X)
    merge_lora(m)
    assert not torch.equal(m.layers[0].attn.q_proj.base.weight, w0)
    torch.testing.assert_close(m(X), out, atol=1e-5, rtol=1e-5)
    unmerge_lora(m)
    torch.testing.assert_close(m.layers[0].attn.q_proj.base.weight, w0, atol=1e-6, rtol=0)
    plain = merged_model(m)
    assert not lora_layers(plain)
    torch.testing.assert_close(plain(X), out, atol=1e-5, rtol=1e-5)


def test_our_adapter_roundtrip_and_wrong_base(tmp_path):
    m = tiny()
    apply_lora(m, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize(m)
    save_adapter(m, tmp_path / "a")
    fresh = tiny()
    load_adapter(fresh, tmp_path / "a")
    torch.testing.assert_close(fresh(X), m(X), atol=0, rtol=0)
    with pytest.raises(ScratchError, match="different base model .*fingerprint"):
        load_adapter(tiny(seed=5), tmp_path / "a")
    with pytest.raises(ScratchError, match="different base model \\(d_model"):
        load_adapter(tiny(d_model=64, n_heads=4), tmp_path / "a")
    with pytest.raises(ScratchError, match="no LoRA adapter"):
        load_adapter(tiny(), tmp_path)


@pytest.fixture
def hf_pair(tmp_path):
    pytest.importorskip("peft")
    import transformers

    m = tiny()
    export_hf(m, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    return m, hf


def test_peft_loads_our_adapter_same_logits(hf_pair, tmp_path):
    import peft

    m, hf = hf_pair
    base = m(X)
    apply_lora(m, LoraConfig(r=4, alpha=12, target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"]))
    randomize(m)
    save_peft_adapter(m, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 12
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        ours, theirs = m(X), pm(input_ids=X).logits
    assert (ours - base).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_we_load_peft_adapter_same_logits(hf_pair, tmp_path):
    import peft

    m, hf = hf_pair
    pcfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "gate_proj"], lora_dropout=0.0,
                           init_lora_weights=False)  # random A and B
    pm = peft.get_peft_model(hf, pcfg).eval()
    pm.save_pretrained(str(tmp_path / "theirs"))
    with torch.no_grad():
        theirs = pm(input_ids=X).logits
    names = load_adapter(m, tmp_path / "theirs")
    assert len(names) == 6
    ours = m(X)
    assert (ours - tiny()(X)).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_bad_lora_config():
    with pytest.raises(ScratchError, match="match no linear layer"):
        apply_lora(tiny(), LoraConfig(target_modules=["c_attn"]))
    with pytest.raises(ScratchError, match="r must be >= 1"):
        apply_lora(tiny(), LoraConfig(r=0))
    with pytest.raises(ScratchError, match="shares its weight with the embedding"):
        apply_lora(tiny(), LoraConfig(target_modules=["lm_head"]))
