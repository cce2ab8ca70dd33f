"""The ``scratchllm finetune`` config (configs/finetune/*.toml).

    out_dir, seed, method = "full" | "lora" | "qlora"
    [base]        the model to fine-tune (a model or training-checkpoint directory; empty: a fresh
                  model from [model], for tests) and its tokenizer
    [model]       only for a fresh base model: a preset plus overrides, as in `scratchllm train`
    [data]        embedded instruction set or a JSONL chat file; max length and what to do beyond it
    [lora]        rank, alpha, dropout, target modules (lora and qlora)
    [qlora]       NF4 block size, double quantization
    [optim] [schedule] [train] [eval] [checkpoint] [log]   the training loop's sections, as in `train`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.errors import ScratchError
from scratchllm.tasks.instruct import KINDS
from scratchllm.finetune.lora import LoraConfig
from scratchllm.model.model import ModelConfig
from scratchllm.train.config import EvalSection, TrainingConfig


@dataclass
class BaseSection:
    # A directory with config.json + model.safetensors (save_pretrained, `model import hf`, or a
    # training checkpoint step_N), or a run's checkpoints/ directory (its latest checkpoint is used).
    # Empty: a freshly initialised model built from [model] (tests, smoke runs).
    checkpoint: str = ""
    tokenizer: Path = Path("runs/tokenizer")  # must hold the chat special tokens


@dataclass
class SFTDataSection:
    source: Literal["embedded", "jsonl"] = "embedded"
    path: Path | None = None  # the JSONL file (source = "jsonl")
    skip_bad: bool = False  # bad JSONL lines: report and skip (true) or stop with an error (false)
    heldout_fraction: float = 0.1  # jsonl: the last fraction of the file is held out for the loss
    n_train: int = 2000  # embedded: training examples
    n_heldout: int = 200  # embedded: held-out examples (loss and exact-answer accuracy)
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    system_prompt: bool = True
    max_len: int = 0  # longest conversation in tokens; 0: the model's context_length
    overflow: Literal["error", "truncate", "skip"] = "error"  # conversations longer than max_len

    def validate(self) -> None:
        if self.source == "jsonl" and self.path is None:
            raise ScratchError("data.source = \"jsonl\" needs data.path", "set data.path=\"chats.jsonl\"")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ScratchError(f"data.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.n_train < 1 or self.n_heldout < 0 or self.max_len < 0:
            raise ScratchError("data: n_train must be >= 1, n_heldout and max_len >= 0")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ScratchError(f"data.kinds: unknown or empty {bad or self.kinds}", f"choose from {', '.join(KINDS)}")


@dataclass
class QLoraSection:
    blocksize: int = 64
    double_quant: bool = True


@dataclass
class FinetuneEvalSection(EvalSection):
    max_new_tokens: int = 16  # greedy reply length for held-out accuracy
    sample_tokens: int = 0  # the loop's plain-text samples are off: the held-out report replaces them


@dataclass
class FinetuneConfig(TrainingConfig):
    out_dir: Path = Path("runs/finetune")
    eval: FinetuneEvalSection = field(default_factory=FinetuneEvalSection)
    method: Literal["full", "lora", "qlora"] = "lora"
    base: BaseSection = field(default_factory=BaseSection)
    model: ModelConfig | None = None  # only for a fresh base (base.checkpoint = ""); None there: defaults
    data: SFTDataSection = field(default_factory=SFTDataSection)
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: QLoraSection = field(default_factory=QLoraSection)

    def validate(self) -> None:
        if not self.base.checkpoint:
            self.model = self.model or ModelConfig()
        elif self.model is not None:
            raise ScratchError("[model] is only for a fresh base model, but base.checkpoint is set",
                               "remove the [model] table, or set base.checkpoint=\"\"")
