"""The embedded default corpus: text that ships with every Python installation, so no network is needed.

Two domains, so that domain mixing means something:

* ``prose`` - English: the Python Language Reference topics (``pydoc_data.topics``) followed by the
  docstrings of the standard-library modules.
* ``code``  - Python: the standard-library source files.

Both are part of CPython and distributed under the PSF License 2.0 (see docs/corpus.md). The content
depends on the Python version installed; documents come in a fixed (sorted) order so a given
interpreter always yields the same corpus.
"""

from __future__ import annotations

import ast
import inspect
import random
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchllm.errors import ScratchError

DOMAINS: tuple[str, ...] = ("prose", "code")

# Generated tables, tests and bundled third-party code make poor training text.
_EXCLUDED_DIRS = {"test", "tests", "idlelib", "site-packages", "encodings", "pydoc_data", "__pycache__",
                  "lib2to3", "turtledemo", "ensurepip", "config-3.11-x86_64-linux-gnu"}
_MIN_DOCSTRING_CHARS = 200


@dataclass(frozen=True)
class Document:
    text: str
    domain: str
    source: str


def stdlib_sources() -> list[Path]:
    """Standard-library ``.py`` files in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_source(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def prose_documents() -> Iterator[Document]:
    from pydoc_data import topics

    for name in sorted(topics.topics):
        yield Document(topics.topics[name].strip() + "\n", "prose", f"pydoc_data.topics:{name}")
    for path in stdlib_sources():
        source = _read_source(path)
        if source is None:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc and len(doc) >= _MIN_DOCSTRING_CHARS:
                    yield Document(inspect.cleandoc(doc) + "\n", "prose", f"{path.name}:{getattr(node, 'name', '')}")


def code_documents() -> Iterator[Document]:
    for path in stdlib_sources():
        source = _read_source(path)
        if source and source.strip():
            yield Document(source, "code", path.name)


def embedded_documents(
    domains: Sequence[str] = DOMAINS, max_bytes_per_domain: int | None = None
) -> Iterator[Document]:
    """Yield documents of each requested domain in turn, up to ``max_bytes_per_domain`` UTF-8 bytes each."""
    producers = {"prose": prose_documents, "code": code_documents}
    for domain in domains:
        if domain not in producers:
            raise ScratchError(f"unknown embedded domain {domain!r}", f"choose from {', '.join(DOMAINS)}")
        used = 0
        for doc in producers[domain]():
            size = len(doc.text.encode("utf-8"))
            if max_bytes_per_domain is not None and used + size > max_bytes_per_domain:
                remaining = max_bytes_per_domain - used
                if remaining > 0:
                    text = doc.text.encode("utf-8")[:remaining].decode("utf-8", errors="ignore")
                    yield Document(text, domain, doc.source)
                break
            used += size
            yield doc


def embedded_text(domains: Sequence[str] = DOMAINS, max_bytes_per_domain: int | None = None) -> str:
    """The embedded corpus as one string, documents separated by blank lines."""
    return "\n\n".join(d.text for d in embedded_documents(domains, max_bytes_per_domain))


# Generated stress text ----------------------------------------------------------------------------
_SCRIPTS = [
    (0x4E00, 0x9FFF),  # CJK ideographs
    (0x3040, 0x30FF),  # hiragana, katakana
    (0xAC00, 0xD7A3),  # hangul
    (0x0600, 0x06FF),  # arabic
    (0x0900, 0x097F),  # devanagari
    (0x0400, 0x04FF),  # cyrillic
    (0x0370, 0x03FF),  # greek
]
_EMOJI = ["🙂", "👍🏽", "👩‍💻", "🇫🇷", "❤️", "🎉", "🤖", "👨‍👩‍👧‍👦", "☕", "🔥🔥🔥"]
_COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "Z\u0335\u0336", "\u0915\u094d\u0937"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", " " * 40, "\t\t  \n", "\u00a0", "\u3000", "\u2003", "\u200b"]
_WORDS = ["don't", "I'LL", "they're", "We'VE", "it's", "O'Neil", "naïve", "café", "Straße", "ﬁnance"]


def unicode_stress_text(n_bytes: int, seed: int = 0) -> str:
    """Generated text for tokenizer tests and benchmarks: lines of the embedded prose and code
    interleaved with hard cases - CJK, other scripts, emoji (ZWJ and flag sequences), combining
    marks, numbers, contractions and unusual whitespace (NBSP, ideographic space, long runs)."""
    rng = random.Random(seed)
    base = embedded_text(max_bytes_per_domain=n_bytes // 3)
    lines = base.split("\n")
    out: list[str] = []
    size = 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.55:
            piece = lines[rng.randrange(len(lines))]
        elif kind < 0.65:
            lo, hi = rng.choice(_SCRIPTS)
            piece = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 30)))
        elif kind < 0.72:
            piece = "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 5)))
        elif kind < 0.78:
            piece = " ".join(rng.choice(_COMBINING) for _ in range(rng.randint(1, 6)))
        elif kind < 0.86:
            piece = rng.choice([str(rng.randint(0, 10**12)), f"{rng.uniform(-1e6, 1e6):.5f}",
                                f"{rng.randint(0, 999):,}{rng.randint(0, 999_999):,}", "3.14159e-10", "0x1F600"])
        elif kind < 0.93:
            piece = rng.choice(_WORDS)
        else:
            piece = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 12)))
        piece += rng.choice(_SPACES)
        out.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(out)
