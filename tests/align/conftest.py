"""Fixtures for the alignment tests: a byte-level chat tokenizer, tiny models, and a checkable task.

The "improves over SFT" tests use a task a 2-layer model learns in a few dozen steps: "Even or odd:
N" for N < 1000, held-out numbers disjoint from the training ones. The SFT model is trained on the
format with random labels, so it answers "even" or "odd" but is right only by chance (50%).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from scratchllm.config import load_config
from scratchllm.tasks.instruct import InstructExample
from scratchllm.model.model import ModelConfig, Transformer

TINY = dict(context_length=96, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
FAST = ["train.device=cpu", "train.num_threads=1", "log.progress=false", "log.tensorboard=false",
        "eval.interval=0", "checkpoint.interval=0", "log.interval=1", "schedule.kind=constant",
        "schedule.warmup_steps=5", "eval.sample_tokens=0", "optim.weight_decay=0.0"]


@pytest.fixture(scope="session")
def tokenizer():
    """Bytes plus the default special tokens (<|bos|> ... <|end|>): vocab 263, no merges."""
    from scratchllm.tokenizer import train_bpe

    return train_bpe(["x"], vocab_size=263)


def tiny_model(tokenizer, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **{**TINY, **overrides}))


@pytest.fixture(scope="session")
def make_model(tokenizer):
    """make_model(seed=0, **config overrides) -> a tiny Transformer for the byte-level chat tokenizer."""
    return lambda seed=0, **kw: tiny_model(tokenizer, seed, **kw)


def parity(n: int, answer: str | None = None) -> InstructExample:
    correct = "even" if n % 2 == 0 else "odd"
    messages = [{"role": "user", "content": f"Even or odd: {n}"},
                {"role": "assistant", "content": answer or correct}]
    return InstructExample(messages, answer or correct, "parity")


@pytest.fixture(scope="session")
def make_parity():
    """make_parity(n, answer=None) -> the "Even or odd: n" example (answer: override the correct one)."""
    return parity


@pytest.fixture(scope="session")
def parity_sets():
    """(train, held-out) parity examples over disjoint numbers."""
    nums = list(range(1000))
    random.Random(0).shuffle(nums)
    return [parity(n) for n in nums[:600]], [parity(n) for n in nums[600:700]]


@pytest.fixture(scope="session")
def sft_dirs(tokenizer, parity_sets, tmp_path_factory):
    """{"policy", "tokenizer"}: directories of the format-only SFT model (random labels, 50% right)."""
    from scratchllm.align.config import AlignConfig
    from scratchllm.finetune.sft import SFTBatchSource, encode_conversations, sft_loss
    from scratchllm.train.loop import Trainer

    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(1)
    chats = [[*e.prompt, {"role": "assistant", "content": rng.choice(["even", "odd"])}] for e in parity_sets[0]]
    encoded = encode_conversations(tokenizer, chats, TINY["context_length"])
    cfg = load_config(AlignConfig, None, [f'out_dir="{root / "run"}"', "train.max_steps=150", "optim.lr=3e-3",
                                          *FAST, "log.interval=50"])
    model = tiny_model(tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    Trainer(cfg, model, SFTBatchSource(encoded, 16, tokenizer.pad_id, 0), loss_fn=sft_loss).fit()
    torch.set_num_threads(threads)
    model.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "tokenizer")
    return {"policy": root / "policy", "tokenizer": root / "tokenizer"}


@pytest.fixture
def align_cfg(sft_dirs, tmp_path):
    """align_cfg(*overrides, method=..., out=None) -> that align command's config (DPOConfig, ...) on the SFT
    parity model with fast settings."""
    from scratchllm.align.config import COMMAND_CONFIGS

    def make(*overrides: str, method: str, out: Path | None = None):
        base = [f'out_dir="{out or tmp_path / "run"}"', f'models.policy="{sft_dirs["policy"]}"',
                f'models.tokenizer="{sft_dirs["tokenizer"]}"', "train.batch_size=16", "rollout.max_new_tokens=6",
                "rollout.eval_max_new_tokens=6", *FAST]
        return load_config(COMMAND_CONFIGS[method], None, [*base, *overrides])

    return make


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tests/conftest.py
    pass


class HFLogits(torch.nn.Module):
    """A transformers causal LM as ``model(ids) -> logits``, the interface our code calls."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids).logits
