"""Configs of the model commands that convert a trained model: ``scratchllm export hf``.

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
