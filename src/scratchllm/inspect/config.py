"""Configs of ``scratchllm inspect tokens | embeddings | attention | memory``.

Each command takes ``--config FILE`` (or a shipped preset's name) plus ``key=value`` overrides, like
every other command; the flags it had before remain as aliases of the keys (``--out DIR`` is
``out_dir=DIR``, ``--batch-size 8`` is ``batch_size=8``). Paths are plain strings, ``""`` meaning
"not given". This module imports neither torch nor a stage: the command-line parser imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from scratchllm.errors import ScratchError

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. In 2024, tokenizers split   whitespace, code() and émojis 🙂."
DEFAULT_SENTENCE = "The cat sat on the mat. The cat sat on the mat."


@dataclass
class TokensConfig:
    """``inspect tokens``: a text's token boundaries, bytes/token, vocabulary usage over a corpus."""

    tokenizer: str = ""  # tokenizer directory/file, or a model directory holding one
    out_dir: str = "inspect/tokens"
    text: str = DEFAULT_TEXT
    text_file: str = ""  # read the text from this UTF-8 file instead
    corpus: list[str] = field(default_factory=list)  # UTF-8 files for usage and frequency statistics
    compare: str = ""  # a second tokenizer shown side by side
    max_corpus_bytes: int = 20_000_000  # read at most this much of the corpus (encoding is the slow part)
    top: int = 20

    def require_inputs(self) -> None:
        """What a run needs and a config file may leave to the command line (checked when it runs)."""
        if not self.tokenizer:
            raise ScratchError("no tokenizer given", "pass tokenizer=DIR (or --tokenizer DIR): a tokenizer "
                                                     "directory or file, or a model directory holding one")


@dataclass
class EmbeddingsConfig:
    """``inspect embeddings``: the embedding table in 2-D, neighbours, analogies, before vs after."""

    model: str = ""  # model directory, checkpoint, or training run directory
    tokenizer: str = ""  # "" = the one found with the model
    out_dir: str = "inspect/embeddings"
    tokens: list[str] = field(default_factory=list)  # tokens (exact strings, e.g. " the", or #ID) for neighbours
    analogies: list[list[str]] = field(default_factory=list)  # [a, b, c]: a - b + c = ?
    before: str = ""  # an earlier checkpoint (e.g. step 0) of the same model, plotted side by side
    method: Literal["pca", "tsne", "umap"] = "pca"  # pca (always), tsne (scikit-learn), umap (umap-learn)
    k: int = 8  # neighbours per token

    def require_inputs(self) -> None:
        _require_model(self.model)

    def validate(self) -> None:
        for a in self.analogies:
            if len(a) != 3:
                raise ScratchError(f"an analogy takes three tokens (a - b + c), got {a}",
                                   'write analogies=[[" king", " man", " woman"]] (or --analogy A B C)')
        if self.k < 1:
            raise ScratchError(f"k must be at least 1, got {self.k}")


@dataclass
class AttentionConfig:
    """``inspect attention``: every layer's and head's attention weights for one sentence."""

    model: str = ""  # model directory, checkpoint, or training run directory
    tokenizer: str = ""  # "" = the one found with the model
    out_dir: str = "inspect/attention"
    sentence: str = DEFAULT_SENTENCE
    sentence_file: str = ""  # read the sentence from this UTF-8 file instead
    bos: bool = False  # prepend <|bos|> (as chat prompts and documents in training start)

    def require_inputs(self) -> None:
        _require_model(self.model)


@dataclass
class MemoryConfig:
    """``inspect memory``: the bytes of one training step; the largest model that fits a device."""

    model: str = ""  # model directory, model preset (model/125m), or a stage config with a [model] table; "" = defaults
    model_keys: dict[str, Any] = field(default_factory=dict)  # ModelConfig keys changed on top, e.g. n_layers=12
    batch_size: int = 8  # micro-batch (sequences per forward/backward)
    seq_len: int = 0  # 0: the model's context_length
    device_memory: str = ""  # e.g. 24GiB: show what fits; "" = no budget
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast
    activation_checkpointing: Literal["none", "full"] = "none"
    grad_accum: int = 1  # micro-batches per step: more sequences per step, same memory
    fsdp_ranks: int = 1
    method: Literal["full", "lora", "qlora"] = "full"
    lora_rank: int = 8
    out_dir: str = "inspect/memory"
    measure: bool = False  # also run one real CPU training step and compare (small configs only)


def _require_model(model: str) -> None:
    if not model:
        raise ScratchError("no model given", "pass model=DIR (or --model DIR): a model directory, a checkpoint or "
                                             "a training run directory")
