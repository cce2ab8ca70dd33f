"""Export to and import from Hugging Face ``tokenizer.json`` (byte-level BPE).

The export is a plain JSON document in the ``tokenizers`` schema: a regex ``Split`` pre-tokenizer
followed by ``ByteLevel`` (which maps bytes to printable characters, GPT-2 style), a ``BPE`` model
with our vocab and merges, a ``ByteLevel`` decoder, and our special tokens as added tokens.
``tokenizers`` itself is never imported here: it is only a test/benchmark reference.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text
from scratchllm.tokenizer.bpe import Tokenizer
from scratchllm.tokenizer.chat import BOS, CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE, EOS, PAD
from scratchllm.tokenizer.patterns import GPT2_PATTERN


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _token_str(data: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def to_hf_dict(tok: Tokenizer) -> dict[str, Any]:
    specials = set(tok.special_tokens.values())
    vocab = {_token_str(tok.id_to_bytes(i)): i for i in range(tok.vocab_size) if i not in specials}
    merges = [f"{_token_str(tok.id_to_bytes(a))} {_token_str(tok.id_to_bytes(b))}" for a, b, _ in tok.merges]
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def save_hf_files(tok: Tokenizer, directory: Path, model_max_length: int | None = None) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    atomic_write_text(directory / "tokenizer.json", json.dumps(to_hf_dict(tok), ensure_ascii=False) + "\n")
    roles = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    special_map = {k: v for k, v in roles.items() if v in tok.special_tokens}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length or 1_000_000_000,
        **special_map,
    }
    if all(t in tok.special_tokens for t in CHAT_SPECIAL_TOKENS):
        # transformers' apply_chat_template renders this to the same ids as tokenizer.chat.encode_chat
        config["chat_template"] = CHAT_TEMPLATE
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(directory / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")


def from_hf_dict(d: dict[str, Any], source: str = "tokenizer.json") -> Tokenizer:
    """Build a Tokenizer from a byte-level BPE ``tokenizer.json`` (ours, GPT-2 style, Llama-3 style)."""
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        raise ScratchError(f"{source}: model type {model.get('type')!r} is not supported",
                           "only byte-level BPE tokenizer.json files can be imported")
    if model.get("ignore_merges"):
        raise ScratchError(f"{source}: 'ignore_merges' BPE models are not supported",
                           "import a tokenizer whose BPE applies every merge")
    pattern = _find_pattern(d.get("pre_tokenizer"), source)
    unicode_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab: dict[str, int] = model["vocab"]
    try:
        byte_ids = [vocab[bytes_to_unicode()[b]] for b in range(256)]
    except KeyError:
        raise ScratchError(f"{source}: vocab lacks some of the 256 byte tokens",
                           "only byte-level BPE vocabularies (all 256 bytes present) can be imported") from None
    merges = []
    for rank, m in enumerate(model.get("merges", [])):
        left, right = m.split(" ") if isinstance(m, str) else m
        try:
            merges.append((vocab[left], vocab[right], vocab[left + right]))
        except KeyError:
            raise ScratchError(f"{source}: merge {rank} ({left!r}, {right!r}) names a token not in the vocab",
                               "the file is corrupt; re-export it") from None
    specials = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
    if not all(set(s) <= set(unicode_to_byte) for s in vocab):
        raise ScratchError(f"{source}: vocab is not byte-level", "only byte-level BPE can be imported")
    try:
        return Tokenizer(pattern, merges, specials, byte_ids)
    except ValueError as e:
        raise ScratchError(f"{source}: inconsistent vocab/merges ({e})", "the file is corrupt; re-export it") from None


def _find_pattern(pre: dict[str, Any] | None, source: str) -> str:
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    pattern = None
    byte_level = False
    for step in steps:
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            pattern = step["pattern"]["Regex"]
        elif step.get("type") == "ByteLevel":
            byte_level = True
            if step.get("use_regex", True) and pattern is None:
                pattern = GPT2_PATTERN
            if step.get("add_prefix_space"):
                raise ScratchError(f"{source}: ByteLevel add_prefix_space is not supported",
                                   "export the tokenizer with add_prefix_space=false")
    if not byte_level or pattern is None:
        raise ScratchError(f"{source}: pre-tokenizer is not a regex split + ByteLevel",
                           "only byte-level BPE tokenizer.json files can be imported")
    return pattern
