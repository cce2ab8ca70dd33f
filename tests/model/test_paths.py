"""One resolver for --model: model, fine-tuning run and training run directories, and their tokenizer
(issue #23, item 6)."""

from __future__ import annotations

import pytest
import torch

from scratchllm.cli import main
from scratchllm.config import to_dict
from scratchllm.errors import ScratchError
from scratchllm.model.model import ModelConfig, Transformer
from scratchllm.model.paths import find_tokenizer, resolve_model_dir


@pytest.fixture(scope="module")
def tok():
    from scratchllm.tokenizer import train_bpe

    return train_bpe(["the quick brown fox jumps over the lazy dog. " * 30], vocab_size=280)


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, context_length=32, d_model=32, n_layers=1,
                                   n_heads=2, n_kv_heads=2, d_ff=64)).eval()


@pytest.fixture
def runs(tmp_path, tok):
    """A fine-tuning run's out_dir (model/ with its tokenizer, plus LoRA-shaped checkpoints that are not
    the model) and a training run (checkpoints only; its config names the tokenizer)."""
    from scratchllm.train.checkpoint import save_checkpoint

    ft = tmp_path / "sft"
    model = _model(tok)
    model.save_pretrained(ft / "model")
    tok.save_pretrained(ft / "model")
    (ft / "checkpoints" / "step_000010").mkdir(parents=True)
    (ft / "checkpoints" / "step_000010" / "config.json").write_text("{}")  # not a loadable model
    (ft / "checkpoints" / "latest").write_text("step_000010")

    tok_dir = tmp_path / "tokenizers" / "mine"
    tok.save_pretrained(tok_dir)
    train = tmp_path / "train"
    pre = _model(tok, seed=1)
    save_checkpoint(train / "checkpoints", 20, pre.state_dict(), {"state": {}, "param_groups": []},
                    {"config": {"data": {"tokenizer": str(tok_dir)}}}, to_dict(pre.cfg),
                    aliases={"lm_head.weight": "tok_emb.weight"})
    return ft, train, tok_dir


def test_resolver_and_tokenizer(runs):
    ft, train, tok_dir = runs
    assert resolve_model_dir(ft) == ft / "model"
    assert resolve_model_dir(ft / "model") == ft / "model"
    assert resolve_model_dir(train) == train / "checkpoints" / "step_000020"
    assert resolve_model_dir(train / "checkpoints") == train / "checkpoints" / "step_000020"
    assert find_tokenizer(ft) == ft / "model"
    assert find_tokenizer(train) == tok_dir  # from the training run's recorded config
    with pytest.raises(ScratchError, match="holds no model"):
        resolve_model_dir(tok_dir)


def test_every_command_takes_the_same_directories(runs, tok, tmp_path, capsys):
    ft, train, _ = runs
    for run in (ft, train):
        assert main(["generate", "--model", str(run), "--prompt", "the", "--max-new-tokens", "2",
                     "--temperature", "0"]) == 0
        capsys.readouterr()
        assert main(["model", "info", "--checkpoint", str(run)]) == 0
        assert "parameters" in capsys.readouterr().out.lower()

    from scratchllm.eval.lm import load_lm

    assert load_lm(ft).model.cfg.d_model == 32 and load_lm(train).model.cfg.d_model == 32

    from scratchllm.finetune.run import resolve_base

    assert resolve_base(str(ft)) == ft / "model" and resolve_base(str(train)).name == "step_000020"

    # export hf of a fine-tuning out_dir (or its model/) includes the tokenizer sitting with the model.
    for i, src in enumerate((ft, ft / "model", train)):
        out = tmp_path / f"hf{i}"
        assert main(["export", "hf", str(src), "--out", str(out)]) == 0
        assert "with the tokenizer" in capsys.readouterr().out
        assert (out / "tokenizer.json").is_file()
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf0")
    assert hf_tok("the lazy dog", add_special_tokens=False)["input_ids"] == tok.encode("the lazy dog")
