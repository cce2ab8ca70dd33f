"""Clean: Unicode normalisation, control characters, boilerplate lines, whitespace.

Cleaning rewrites a document; it never decides whether to keep it (that is filters.py), except that
a document left empty by cleaning is dropped and counted.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from scratchllm.corpus.config import CleanConfig

# C0 controls except \t \n (and \r, handled as a line break), DEL, C1 controls, zero-width and
# bidi-override characters, the BOM.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2028\u2029\u202a-\u202e\u2060\ufeff]")
# Unusual spaces (no-break, en/em, ideographic, ...) become a plain space.
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_WS = re.compile(r"[ \t]+$", re.M)


@dataclass
class CleanStats:
    documents: int = 0
    changed: int = 0
    emptied: int = 0  # documents with nothing left after cleaning (dropped)
    boilerplate_lines: int = 0


class Cleaner:
    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.stats = CleanStats()
        self._boilerplate = (
            re.compile("|".join(f"(?:{p})" for p in cfg.boilerplate), re.I) if cfg.boilerplate else None
        )
        self._blank_run = re.compile(r"\n{%d,}" % (cfg.max_blank_lines + 2))
        self._blank_lines = "\n" * (cfg.max_blank_lines + 2)

    def __call__(self, text: str, domain: str) -> str:
        """The cleaned text ('' means: drop the document)."""
        cfg = self.cfg
        self.stats.documents += 1
        original = text
        if cfg.unicode != "none":
            text = unicodedata.normalize(cfg.unicode, text)
        if cfg.normalize_whitespace:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if cfg.remove_control:
            text = _CONTROL.sub("", text)
        if self._boilerplate is not None and (not cfg.boilerplate_domains or domain in cfg.boilerplate_domains):
            lines = text.split("\n")
            kept = [line for line in lines if not self._boilerplate.search(line)]
            self.stats.boilerplate_lines += len(lines) - len(kept)
            text = "\n".join(kept)
        if cfg.normalize_whitespace:
            # each substitution only runs when a plain substring test says it can match
            if not text.isascii():
                text = _ODD_SPACES.sub(" ", text)
            if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
                text = _TRAILING_WS.sub("", text)
            if self._blank_lines in text:
                text = self._blank_run.sub("\n" * (cfg.max_blank_lines + 1), text)
            text = text.strip("\n")
            text = text + "\n" if text.strip() else ""
        if not text.strip():
            self.stats.emptied += 1
            return ""
        if text != original:
            self.stats.changed += 1
        return text
