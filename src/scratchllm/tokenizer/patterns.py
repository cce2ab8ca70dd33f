"""Pre-tokenization regexes: text is split into chunks and BPE never merges across chunk boundaries.

Both patterns avoid ``$`` and other constructs whose meaning differs between Python's ``regex``,
Rust's fancy-regex (tiktoken) and Oniguruma (Hugging Face tokenizers), so all three split alike.
"""

from __future__ import annotations

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
