"""Byte-level BPE tokenizer: training, encoding, decoding, save/load, Hugging Face interop."""

from scratchllm.tokenizer.bpe import Tokenizer, train_bpe
from scratchllm.tokenizer.chat import DEFAULT_SPECIAL_TOKENS
from scratchllm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN

__all__ = ["DEFAULT_SPECIAL_TOKENS", "GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "train_bpe"]
