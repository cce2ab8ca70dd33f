"""Ingest: files, folders and globs of text, JSONL, Markdown and HTML -> a stream of Documents.

Everything streams: files are read in 1 MiB chunks through an incremental UTF-8 decoder, and a plain
text file larger than ``max_document_bytes`` is cut into several documents at blank lines, so memory
stays flat however large the input. Problems with one file never stop the run: unreadable files,
invalid UTF-8, bad JSON lines and empty files are skipped and counted in :class:`IngestStats`.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import html
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import IO

from scratchllm.data.corpus import Document
from scratchllm.errors import ScratchError

CHUNK_BYTES = 1 << 20
FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".xhtml": "html",
}  # everything else is read as plain text


@dataclass
class IngestStats:
    files: int = 0
    documents: int = 0
    bytes: int = 0
    invalid_utf8: int = 0  # files (text/markdown/html) or lines (JSONL) skipped
    unreadable: int = 0  # files that could not be opened or read
    binary: int = 0  # files that look binary (NUL bytes)
    bad_json: int = 0  # JSONL lines that are not JSON objects with a string text field
    empty: int = 0  # files or records without any text
    problems: list[str] = field(default_factory=list)  # a few examples, for the summary

    def skip(self, kind: str, where: object, why: str = "") -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if getattr(self, kind) <= 3:  # the first three of each kind
            self.problems.append(f"{where}: {kind.replace('_', ' ')}{' (' + why + ')' if why else ''}")

    @property
    def skipped(self) -> int:
        return self.invalid_utf8 + self.unreadable + self.binary + self.bad_json + self.empty


def resolve_paths(patterns: Iterable[str]) -> list[Path]:
    """Expand files, folders (recursively, hidden entries skipped) and globs into a sorted file list."""
    out: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [Path(p) for p in sorted(glob.glob(expanded, recursive=True)) if os.path.isfile(p)]
            if not matches:
                raise ScratchError(f"input glob {pattern!r} matches no files", "check the pattern and the folder")
            out.extend(matches)
        elif os.path.isdir(expanded):
            root = Path(expanded)
            files = sorted(
                p for p in root.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            if not files:
                raise ScratchError(f"input folder {pattern!r} contains no files", "put some text files in it")
            out.extend(files)
        elif os.path.exists(expanded):
            out.append(Path(expanded))
        else:
            raise ScratchError(f"input path not found: {pattern!r}", "check the path in sources.paths")
    return out


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return FORMATS.get(os.path.splitext(name)[1], "text")


def read_files(
    paths: Iterable[Path],
    domain: str,
    stats: IngestStats,
    fmt: str = "auto",
    text_field: str = "text",
    max_document_bytes: int = 1_000_000,
) -> Iterator[Document]:
    """Yield the documents in ``paths``; skip (and count in ``stats``) whatever cannot be read."""
    for path in paths:
        stats.files += 1
        kind = detect_format(path) if fmt == "auto" else fmt
        skipped_before = stats.skipped
        try:
            with _open(path) as f:
                if kind == "jsonl":
                    docs = _jsonl_documents(f, path, text_field, stats)
                else:
                    pieces = _decoded_chunks(f)
                    if kind == "html":
                        pieces = _html_text(pieces)
                    docs = _split_documents(pieces, max_document_bytes)
                    if kind == "markdown":
                        docs = (strip_markdown(d) for d in docs)
                n = 0
                for i, text in enumerate(docs):
                    if not text.strip():
                        continue
                    n += 1
                    stats.documents += 1
                    stats.bytes += len(text.encode("utf-8"))
                    yield Document(text, domain, f"{path}#{i}" if kind == "jsonl" or i else str(path))
                # A JSONL file whose lines were each skipped is counted per line; one with none at all
                # (0 bytes, blank lines) is an empty file, like an empty text file.
                if n == 0 and (kind != "jsonl" or stats.skipped == skipped_before):
                    stats.skip("empty", path)
        except _Binary:
            stats.skip("binary", path, "contains NUL bytes")
        except UnicodeDecodeError as e:
            stats.skip("invalid_utf8", path, f"bad byte 0x{e.object[e.start]:02x}")
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            stats.skip("unreadable", path, e.strerror if isinstance(e, OSError) and e.strerror else str(e))


class _Binary(Exception):
    pass


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def _decoded_chunks(f: IO[bytes]) -> Iterator[str]:
    """Strictly decode a binary stream chunk by chunk (a multi-byte character may span chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    first = True
    while chunk := f.read(CHUNK_BYTES):
        if first:
            if b"\x00" in chunk[:8192]:
                raise _Binary
            chunk = chunk.removeprefix(codecs.BOM_UTF8)
            first = False
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def _split_documents(pieces: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Join text pieces into documents: one per file, or cut at blank lines once over ``max_bytes``.

    A paragraph with no blank line for 4 x ``max_bytes`` is cut at a line end instead.
    """
    buf: list[str] = []
    size = 0
    pending = ""
    for piece in pieces:
        lines = (pending + piece).split("\n")
        pending = lines.pop()
        for line in lines:
            buf.append(line + "\n")
            size += len(line) + 1
            if size >= max_bytes and (not line.strip() or size >= 4 * max_bytes):
                yield "".join(buf)
                buf, size = [], 0
    if pending:
        buf.append(pending)
    if buf:
        yield "".join(buf)


def _jsonl_documents(f: IO[bytes], path: Path, text_field: str, stats: IngestStats) -> Iterator[str]:
    keys = text_field.split(".")
    for lineno, raw in enumerate(f, 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            stats.skip("invalid_utf8", where, f"bad byte 0x{raw[e.start]:02x}")
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            for key in keys:
                value = value[key]
        except json.JSONDecodeError as e:
            stats.skip("bad_json", where, e.msg)
            continue
        except (KeyError, TypeError, IndexError):
            stats.skip("bad_json", where, f"no field {text_field!r}")
            continue
        if not isinstance(value, str):
            stats.skip("bad_json", where, f"field {text_field!r} is {type(value).__name__}, not a string")
        elif not value.strip():
            stats.skip("empty", where)
        else:
            yield value


# ----------------------------------------------------------------------------------------------
# Markup stripping

_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "h1",
    "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "dd", "dt", "title", "main", "figure",
}
_SKIP_TAGS = {"script", "style", "noscript", "head", "nav", "svg", "template", "iframe", "form", "button"}
_VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: script/style/nav dropped, block elements become line breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS and tag not in _VOID_TAGS:
            self.skip_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
        if tag in _BLOCK_TAGS and not self.skip_depth:
            self.out.append("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table") else "\n")
            if tag == "li":
                self.out.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self.skip_depth:
            self.skip_depth -= 1
        elif tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in _BLOCK_TAGS and not self.skip_depth:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.out.append(data if self.pre_depth else re.sub(r"\s+", " ", data))

    def take(self) -> str:
        text, self.out = "".join(self.out), []
        return text


def _html_text(pieces: Iterable[str]) -> Iterator[str]:
    parser = _TextExtractor()
    for piece in pieces:
        parser.feed(piece)
        yield _tidy_lines(parser.take())
    parser.close()
    yield _tidy_lines(parser.take())


def _tidy_lines(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]*\n[ \t]*", "\n", text))


def html_to_text(markup: str) -> str:
    return "".join(_html_text([markup])).strip() + "\n"


_MD_RULES = [
    (re.compile(r"^ {0,3}(```|~~~).*$", re.M), ""),  # code fences (contents are kept)
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> link text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference links
    (re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S+.*$", re.M), ""),  # link definitions
    (re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M), r"\1"),  # ATX headings
    (re.compile(r"^ {0,3}(=+|-+)\s*$", re.M), ""),  # setext underlines
    (re.compile(r"^ {0,3}([-*_])( *\1){2,} *$", re.M), ""),  # horizontal rules
    (re.compile(r"^ {0,3}> ?", re.M), ""),  # block quotes
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # bold
    (re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])"), r"\1"),  # italic *x*
    (re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"), r"\1"),  # italic _x_
    (re.compile(r"`([^`\n]+)`"), r"\1"),  # inline code
    (re.compile(r"<[^>\n]+>"), ""),  # inline HTML tags
]


def strip_markdown(text: str) -> str:
    """Plain text from Markdown: markup removed, link/image text and code block contents kept."""
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return html.unescape(re.sub(r"\n{3,}", "\n\n", text))
