"""Configs of the inference commands: ``generate``, ``chat`` and ``quantize``.

Each command takes ``--config FILE`` (or a shipped preset's name) plus ``key=value`` overrides, like
every other command; the old flags remain as aliases for the same keys (``--max-new-tokens 20`` is
``max_new_tokens=20``). Paths are plain strings, ``""`` meaning "not given", as in ServeConfig.
This module imports no stage: the inference layer sits below them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from scratchllm.errors import ScratchError

if TYPE_CHECKING:  # torch (through sampling) only when a command runs: `scratchllm --help` stays fast
    from scratchllm.infer.sampling import SamplingParams


@dataclass
class InferenceConfig:
    """What generate and chat share: the model, where it runs, and how tokens are sampled."""

    model: str = ""  # model directory, fine-tuning run or training run directory (plain or quantized)
    tokenizer: str = ""  # "" = the one found with the model (scratchllm.model.paths.find_tokenizer)
    device: str = "cpu"
    compile: bool = False  # torch.compile the decode step (a compile of 5-20 s first; docs/serve.md)
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)  # stop strings
    seed: int | None = None

    def sampling_params(self, stop_token_ids: list[int] | None = None) -> SamplingParams:
        """The SamplingParams these settings describe, range-checked."""
        from scratchllm.infer.sampling import SamplingParams  # lazy: it loads torch (see the TYPE_CHECKING note)

        params = SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            min_p=self.min_p, repetition_penalty=self.repetition_penalty, frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, stop=list(self.stop), stop_token_ids=stop_token_ids or [],
            seed=self.seed)
        params.validate()
        return params

    def require_model(self) -> None:
        if not self.model:
            raise ScratchError("no model given", "pass model=DIR (or --model DIR): a model directory, a fine-tuning "
                                                 "run or a training run directory")


@dataclass
class GenerateConfig(InferenceConfig):
    """``scratchllm generate``: continue ``prompt``, streaming to the terminal."""

    prompt: str = ""  # the text to continue; "-" reads standard input
    draft: str = ""  # a small draft model directory: speculative decoding
    k: int = 4  # draft tokens per speculative step

    def validate(self) -> None:
        if self.k < 1:
            raise ScratchError(f"k must be at least 1, got {self.k}")


@dataclass
class ChatConfig(InferenceConfig):
    """``scratchllm chat``: an interactive conversation in the fine-tuning chat format."""

    system: str = ""  # a system message ("" for none)
    max_new_tokens: int = 256
    temperature: float = 0.7


@dataclass
class QuantizeConfig:
    """``scratchllm quantize``: a weight-only INT8/INT4 copy of a model directory (see infer/quantize.py)."""

    model: str = ""  # model directory, fine-tuning run or training run directory (full precision)
    tokenizer: str = ""  # copied into out_dir; "" = the one found with the model
    out_dir: Path | None = None  # the quantized model directory to write
    mode: Literal["int8", "int4"] = "int8"  # int8: per output channel; int4: per group of group_size inputs
    group_size: int = 64  # int4 only: 32, 64 or 128 (must divide d_model and d_ff)

    def validate(self) -> None:
        if self.group_size < 2:
            raise ScratchError(f"group_size must be >= 2, got {self.group_size}", "use 32, 64 or 128")
