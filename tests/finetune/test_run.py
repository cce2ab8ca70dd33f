"""Fine-tuning end to end on a fresh tiny model: the three methods, outputs, resume, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.cli import main
from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.finetune.config import FinetuneConfig
from scratchllm.finetune.lora import load_adapter
from scratchllm.finetune.run import load_base, run
from scratchllm.model.model import Transformer
from scratchllm.train import checkpoint as ckpt

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "context_length": 96}


@pytest.fixture(scope="module")
def tok_dir(chat_tokenizer, tmp_path_factory):
    return chat_tokenizer.save_pretrained(tmp_path_factory.mktemp("tok"))


def overrides(tok_dir, out, *extra: str) -> list[str]:
    """A fresh tiny base model unless ``extra`` names base.checkpoint."""
    base = [f'base.tokenizer="{tok_dir}"', f'out_dir="{out}"',
            "data.n_train=160", "data.n_heldout=24", "train.batch_size=8", "train.max_steps=24",
            "train.num_threads=1", "schedule.warmup_steps=3", "optim.lr=1e-2", "eval.interval=0",
            "eval.batches=1", "eval.max_new_tokens=6", "checkpoint.interval=0", "log.progress=false",
            "lora.r=8", "lora.alpha=16", "lora.dropout=0.0"]
    if not any(e.startswith("base.checkpoint=") for e in extra):
        base += ['base.checkpoint=""', "model.vocab_size=512", *(f"model.{k}={v}" for k, v in TINY.items())]
    return [*base, *extra]


def make_cfg(tok_dir, out, *extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, "configs/finetune/cpu-lora.toml", overrides(tok_dir, out, *extra))


@pytest.fixture(scope="module")
def base_run(tok_dir, tmp_path_factory):
    """Full fine-tuning of a fresh tiny model on the arithmetic and corpus tasks: the base for LoRA/QLoRA."""
    out = tmp_path_factory.mktemp("base")
    cfg = make_cfg(tok_dir, out, "method=full", "train.max_steps=40", 'data.kinds=["add", "sub", "mul", "corpus_qa"]')
    result = run(cfg, progress=False)
    return out, result, result.metrics


def test_full_finetune_improves_heldout(base_run):
    out, result, report = base_run
    assert result.stopped is None and result.step == 40
    before, after = report["before"]["heldout_loss"], report["after"]["heldout_loss"]
    assert after < before - 2.0, (before, after)
    assert report["after"]["heldout_accuracy"] >= report["before"]["heldout_accuracy"]
    assert json.loads((out / "report.json").read_text())["after"]["heldout_loss"] == after
    assert report["trainable_params"] == report["total_params"]
    assert not (out / "adapter").exists()
    assert Transformer.from_pretrained(out / "model").cfg.d_model == 32


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_learn_new_tasks_on_the_base(tok_dir, tmp_path, base_run, method, chat_tokenizer):
    """LoRA/QLoRA on the fine-tuned base, trained on the string tasks it has not seen."""
    cfg = make_cfg(tok_dir, tmp_path, f"method={method}", f'base.checkpoint="{base_run[0] / "model"}"',
                   'data.kinds=["reverse", "upper", "count", "length"]')
    report = run(cfg, progress=False).metrics
    before, after = report["before"]["heldout_loss"], report["after"]["heldout_loss"]
    assert after < before - 0.4, (before, after)
    assert report["trainable_params"] < report["total_params"] / 3
    merged = Transformer.from_pretrained(tmp_path / "model").eval()
    x = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    if method == "qlora":
        assert report["nf4_layers"] == 14 and report["weight_bytes"] < report["base_weight_bytes"]
        return
    # lora: base + our adapter == base + PEFT-layout adapter == the merged model
    for adapter in ("adapter", "peft_adapter"):
        base = load_base(cfg, chat_tokenizer).eval()
        load_adapter(base, tmp_path / adapter)
        torch.testing.assert_close(base(x), merged(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ScratchError, match="different base model"):
        load_adapter(Transformer(merged.cfg), tmp_path / "adapter")


def test_resume_continues_with_adapters(tok_dir, tmp_path):
    out = tmp_path / "r"
    cfg = make_cfg(tok_dir, out, "method=qlora", "train.max_steps=6", "checkpoint.interval=3")
    run(cfg, progress=False)
    first = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    assert any(k.endswith("packed") for k in first.model_state)  # NF4 codes are part of the state
    with pytest.raises(ScratchError, match="already holds a fine-tuning run"):
        run(make_cfg(tok_dir, out, "method=qlora", "train.max_steps=8"), progress=False)
    result = run(make_cfg(tok_dir, out, "method=qlora", "train.max_steps=8", "checkpoint.interval=3",
                          "train.allow_schedule_change=true"), resume=True, progress=False)
    assert result.step == 8


def test_cli_bad_jsonl(tok_dir, tmp_path, capsys):
    data = tmp_path / "chats.jsonl"
    good = json.dumps({"instruction": "Say hi", "output": "hi"})
    data.write_text("\n".join([good] * 20 + ["{broken", json.dumps({"messages": [{"role": "user", "content": "x"}]})])
                    + "\n")
    args = ["finetune", "--config", "configs/finetune/cpu-lora.toml",
            *overrides(tok_dir, tmp_path / "o", "data.source=jsonl", f'data.path="{data}"', "train.max_steps=2")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "chats.jsonl:21: malformed JSON" in err and "fix:" in err
    assert main([*args, "data.skip_bad=true"]) == 0
    err = capsys.readouterr().err
    assert "chats.jsonl:22: conversation has no (non-empty) assistant turn" in err and "skipped 2 bad line(s)" in err


def test_cli_other_bad_input(tok_dir, tmp_path, capsys):
    args = ["finetune", "--config", "configs/finetune/cpu-sft.toml", *overrides(tok_dir, tmp_path / "o")]
    assert main([*args, "data.max_len=20"]) == 2
    assert "longer than the maximum of 20" in capsys.readouterr().err
    assert main(["finetune", *overrides(tok_dir, tmp_path / "o", f'base.checkpoint="{tmp_path}"')]) == 2
    assert "base model not found" in capsys.readouterr().err
    assert main([*args, "model.vocab_size=300"]) == 2
    assert "the tokenizer has 512 tokens" in capsys.readouterr().err
    assert main([*args, "lora.target_modules=[\"c_attn\"]", "method=lora"]) == 2
    assert "match no linear layer" in capsys.readouterr().err


@pytest.mark.slow
def test_longer_finetune_raises_heldout_accuracy(tok_dir, tmp_path):
    """Exact answers on held-out prompts: a fresh tiny model gets none right, after fine-tuning many."""
    cfg = make_cfg(tok_dir, tmp_path, "method=full", "model.d_model=64", "model.d_ff=192", "train.max_steps=400",
                   "train.batch_size=16", "optim.lr=3e-3", "schedule.warmup_steps=20", "data.n_train=3000",
                   "data.n_heldout=80", 'data.kinds=["length", "count", "upper"]', "eval.max_new_tokens=8")
    report = run(cfg, progress=False).metrics
    assert report["before"]["heldout_accuracy"] == 0.0
    assert report["after"]["heldout_accuracy"] >= 0.3, report["after"]
