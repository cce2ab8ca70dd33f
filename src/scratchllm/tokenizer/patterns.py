"""Pre-tokenization regexes: text is split into chunks and BPE never merges across chunk boundaries.

Both patterns avoid ``$`` and other constructs whose meaning differs between Python's ``regex``,
Rust's fancy-regex (tiktoken) and Oniguruma (Hugging Face tokenizers), so all three split alike.
"""

from __future__ import annotations

import re

import regex

from scratchllm.errors import ScratchError

# GPT-2: contractions, letters, numbers, other symbols, each optionally led by one space.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4 (cl100k): case-insensitive contractions, numbers in groups of at most three digits,
# newlines kept apart from other whitespace.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# The same two patterns spelt for the standard library's ``re``, valid only on pure-ASCII text, where
# \p{L} is [A-Za-z], \p{N} is [0-9] and \s (Unicode White_Space) is [\t\n\v\f\r ] -- not ``re``'s
# own \s, which also matches \x1c-\x1f. ``re`` splits ASCII text about 1.5x faster than ``regex``, and
# most real documents are ASCII. tests/tokenizer check both spellings split alike.
_WS = r"\t\n\x0b\x0c\r "
ASCII_PATTERNS: dict[str, str] = {
    GPT2_PATTERN: (
        rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
    GPT4_PATTERN: (
        r"""'(?:[sdmtSDMT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\nA-Za-z0-9]?+[A-Za-z]+|[0-9]{1,3}"""
        rf"""| ?[^{_WS}A-Za-z0-9]++[\r\n]*|[{_WS}]*[\r\n]|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
    ),
}


def resolve_pattern(name_or_regex: str) -> str:
    """Map a pattern name (``gpt2``, ``gpt4``) to its regex; anything else is taken as a regex."""
    return PATTERNS.get(name_or_regex, name_or_regex)


def pattern_name(regex: str) -> str | None:
    return next((name for name, pat in PATTERNS.items() if pat == regex), None)


def compile_pattern(name_or_regex: str) -> regex.Pattern[str]:
    try:
        return regex.compile(resolve_pattern(name_or_regex))
    except regex.error as e:
        raise ScratchError(f"invalid pre-tokenization regex: {e}", "use 'gpt2', 'gpt4' or a valid regex") from None


def compile_ascii_pattern(regex_text: str) -> re.Pattern[str] | None:
    """The ``re`` spelling of a known pattern for pure-ASCII text, or None for any other pattern."""
    ascii_text = ASCII_PATTERNS.get(regex_text)
    return re.compile(ascii_text) if ascii_text is not None else None
