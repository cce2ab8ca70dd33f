"""Hugging Face interop, checked against transformers' own LlamaForCausalLM (the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.model.hf import export_hf, import_hf
from scratchllm.model.model import Transformer

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"
CONFIGS = {  # (n_heads, n_kv_heads, tie_embeddings)
    "mha": (4, 4, True),
    "gqa": (4, 2, False),
    "mqa": (4, 1, True),
}


def _hf_logits(directory, idx: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        return hf(idx).logits


def _random_batches(vocab: int, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (2, 32), generator=g) for _ in range(n)] + [torch.randint(0, vocab, (1, 5), generator=g)]


@pytest.mark.parametrize("name", CONFIGS)
def test_export_gives_identical_logits_in_transformers(tmp_path, make_model, name):
    n_heads, n_kv, tie = CONFIGS[name]
    model = make_model(n_heads=n_heads, n_kv_heads=n_kv, tie_embeddings=tie, rope_theta=500.0)
    export_hf(model, tmp_path)
    for idx in _random_batches(model.cfg.vocab_size):
        with torch.no_grad():
            ours = model(idx)
        torch.testing.assert_close(_hf_logits(tmp_path, idx), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_import_of_random_transformers_llama_gives_identical_logits(tmp_path, name):
    from transformers import LlamaConfig, LlamaForCausalLM

    n_heads, n_kv, tie = CONFIGS[name]
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=48,
                         rms_norm_eps=1e-6, tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 1234.0})
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF's init leaves norm weights at 1; perturb them so a mix-up would show
        for module in hf.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.weight.normal_(1.0, 0.2)
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path).eval()
    assert (ours.cfg.n_kv_heads, ours.cfg.tie_embeddings, ours.cfg.rope_theta) == (n_kv, tie, 1234.0)
    assert ours.cfg.norm_eps == 1e-6 and ours.cfg.context_length == 48
    for idx in _random_batches(101):
        with torch.no_grad():
            torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_import_of_sharded_checkpoint(tmp_path, make_model, tokens):
    model = make_model(tie_embeddings=False)
    export_hf(model, tmp_path / "single")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "single").save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    again = import_hf(tmp_path / "sharded").eval()
    torch.testing.assert_close(again(tokens), model(tokens), atol=0, rtol=0)


def test_export_writes_the_llama_config(tmp_path, make_model):
    export_hf(make_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (48, 4, 2)
    assert config["torch_dtype"] == "float32" and config["hidden_act"] == "silu"


def test_only_rope_models_export(tmp_path, make_model):
    for pos_emb in ("sinusoidal", "learned"):
        with pytest.raises(ScratchError, match=f"only RoPE models .* pos_emb='{pos_emb}'"):
            export_hf(make_model(pos_emb=pos_emb), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "mistral"}, "model_type is 'mistral'"),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}, "RoPE scaling 'llama3'"),
        ({"num_key_value_heads": 3}, "n_heads=4 is not a multiple of n_kv_heads=3"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_import_refuses_unsupported_configs(tmp_path, make_model, change, match):
    export_hf(make_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(change)
    if change.get("hidden_size", 0) is None:
        del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchError, match=match):
        import_hf(tmp_path)


def test_import_refuses_truncated_weights(tmp_path, make_model):
    export_hf(make_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ScratchError, match=r"model\.safetensors is not a valid safetensors file"):
        import_hf(tmp_path)
    weights.unlink()
    with pytest.raises(ScratchError, match="no model.safetensors"):
        import_hf(tmp_path)


def test_export_with_tokenizer_loads_in_auto_tokenizer(tmp_path, make_model):
    from transformers import AutoTokenizer

    from scratchllm.tokenizer import train_bpe

    text = ["def add(a, b):\n    return a + b\n", "Hello, world! The quick brown fox jumps over the lazy dog."] * 20
    tok = train_bpe(text, vocab_size=300)
    model = make_model(vocab_size=tok.vocab_size + 4, context_length=64)  # a padded vocab is fine
    export_hf(model, tmp_path, tokenizer=tok)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.bos_id, tok.eos_id)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path)
    sample = "def fox(a):\n    return 'Hello, lazy world!'"
    ids = hf_tok(sample, add_special_tokens=False)["input_ids"]
    assert ids == tok.encode(sample)
    idx = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(tmp_path, idx), model(idx), atol=1e-5, rtol=0)
    small = tok.vocab_size - 10
    with pytest.raises(ScratchError, match=f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {small}"):
        export_hf(make_model(vocab_size=small), tmp_path / "small", tokenizer=tok)


def test_cli_init_export_import_round_trip(tmp_path, capsys):
    from scratchllm.cli import main

    preset = ["--config", str(PRESETS / "1m.toml"), "n_layers=1", "context_length=32"]
    assert main(["model", "init", *preset, "--out", str(tmp_path / "ours"), "--seed", "1"]) == 0
    assert main(["export", "hf", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    a, b = Transformer.from_pretrained(tmp_path / "ours").eval(), Transformer.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, 4096, (2, 32))
    torch.testing.assert_close(a(idx), b(idx), atol=0, rtol=0)
    torch.testing.assert_close(_hf_logits(tmp_path / "hf", idx), a(idx), atol=1e-5, rtol=0)
    # The same import written as key=value (ImportHFConfig): the same weights.
    assert main(["import", "hf", f"hf_dir={tmp_path / 'hf'}", f"out_dir={tmp_path / 'back2'}"]) == 0
    assert (tmp_path / "back2" / "model.safetensors").read_bytes() == (tmp_path / "back" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["import", "hf", str(tmp_path / "ours"), "--out", str(tmp_path / "x")]) == 2
    assert "already a scratchllm model directory" in capsys.readouterr().err


def _bigram_chat_model(tok, chain: dict[int, int], default: int) -> Transformer:
    """A model whose greedy next token depends only on the current one: next = chain.get(t, default).

    One-hot embeddings, blocks that add nothing (zero output projections), and an lm_head that maps each
    one-hot to its successor."""
    from scratchllm.model.model import ModelConfig

    d = 320
    assert tok.vocab_size <= d
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, context_length=64, d_model=d, n_layers=1,
                                    n_heads=4, n_kv_heads=4, d_ff=64, tie_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")) or "lm_head" in name:
                p.zero_()
        model.tok_emb.weight.copy_(torch.eye(tok.vocab_size, d))
        for t in range(tok.vocab_size):
            model.lm_head.weight[chain.get(t, default), t] = 10.0
    return model


def test_transformers_generate_stops_at_end_of_turn_on_an_exported_chat_model(tmp_path):
    """The chat reply ends with <|end|>: generation_config lists it as an eos id (issue #23, item 4)."""
    transformers = pytest.importorskip("transformers")
    from scratchllm.tokenizer import train_bpe

    tok = train_bpe(["Hi there, how are you? " * 20], vocab_size=280)
    special = tok.special_tokens
    h, i = tok.encode("H")[0], tok.encode("i")[0]
    x = tok.encode("x")[0]
    # <|assistant|> -> "H" -> "i" -> <|end|> -> "x" -> "x" ... (the text a model runs into past its turn)
    model = _bigram_chat_model(tok, {special["<|assistant|>"]: h, h: i, i: special["<|end|>"]}, default=x)
    export_hf(model, tmp_path, tokenizer=tok)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.eos_id, special["<|end|>"]]

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = hf_tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                     tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_id)
    reply = out[0, ids.shape[1]:].tolist()
    assert reply == [h, i, special["<|end|>"]]
    assert hf_tok.decode(reply, skip_special_tokens=True) == "Hi"

    peft = pytest.importorskip("peft")
    from scratchllm.finetune.lora import LoraConfig, apply_lora, save_peft_adapter

    apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))  # B = 0: no change
    save_peft_adapter(model, tmp_path / "adapter")
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    out = pm.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_id)
    assert out[0, ids.shape[1]:].tolist() == [h, i, special["<|end|>"]]


def test_cli_export_takes_a_config_file_overrides_and_the_old_flags(tmp_path, capsys):
    from scratchllm.cli import main
    from scratchllm.infer.quantize import quantize, save_quantized

    preset = ["--config", str(PRESETS / "1m.toml"), "n_layers=1", "context_length=32"]
    assert main(["model", "init", *preset, "--out", str(tmp_path / "ours"), "--seed", "1"]) == 0
    cfg = tmp_path / "export.toml"
    cfg.write_text(f'model = "{tmp_path / "ours"}"\nout_dir = "{tmp_path / "unused"}"\n')
    assert main(["export", "hf", "--config", str(cfg), f"out_dir={tmp_path / 'a'}"]) == 0
    assert main(["export", "hf", f"model={tmp_path / 'ours'}", "--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "unused").exists()
    a, b = (tmp_path / "a" / "model.safetensors").read_bytes(), (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b and json.loads((tmp_path / "a" / "config.json").read_text())["model_type"] == "llama"
    capsys.readouterr()
    assert main(["export", "hf", str(tmp_path / "ours"), str(tmp_path / "a"), "--out", str(tmp_path / "c")]) == 2
    assert "more than one model given" in capsys.readouterr().err
    assert main(["export", "hf", f"model={tmp_path / 'ours'}"]) == 2
    assert "out_dir" in capsys.readouterr().err
    q = Transformer.from_pretrained(tmp_path / "ours")
    save_quantized(quantize(q, "int8"), tmp_path / "q")
    assert main(["export", "hf", str(tmp_path / "q"), "--out", str(tmp_path / "d")]) == 2
    assert "is a quantized model; export needs the full-precision weights" in capsys.readouterr().err
