"""Configs of the model commands: ``model init``, ``model info``, ``export hf`` and ``import hf``.

Like every command: ``--config FILE`` (or a shipped preset's name) plus ``key=value`` overrides; the
old flags remain as aliases (``--out DIR`` is ``out_dir=DIR``). This module imports no stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExportHFConfig:
    """``scratchllm export hf``: a directory ``transformers.AutoModelForCausalLM`` loads offline."""

    model: str = ""  # model directory, fine-tuning run or training run directory (its latest checkpoint)
    tokenizer: str = ""  # included in the export; "" = the one found with the model, as generate finds it
    out_dir: Path | None = None  # the Hugging Face directory to write


@dataclass
class ModelInitConfig:
    """``scratchllm model init``: the command's own keys. The model itself is a ModelConfig: ``--config`` names a
    model preset and its keys are overridden on the same command line (``n_layers=12 out_dir=runs/init``)."""

    out_dir: str = ""  # where config.json + model.safetensors go
    seed: int = 0


@dataclass
class ModelInfoConfig:
    """``scratchllm model info``: the command's own keys, beside the ModelConfig keys of ``--config``."""

    checkpoint: str = ""  # a model, fine-tuning run or training run directory instead of --config
    seq_len: int = 0  # tokens for FLOPs and activations; 0 = the context length


@dataclass
class ImportHFConfig:
    """``scratchllm import hf``: a Hugging Face Llama directory converted into our model directory."""

    hf_dir: str = ""  # config.json + model.safetensors (or shards) of a LlamaForCausalLM
    out_dir: str = ""  # our model directory to write
