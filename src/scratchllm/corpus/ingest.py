"""Ingest: files, folders and globs of text, JSONL, Markdown, HTML, Parquet and Arrow -> a stream of Documents.

Everything streams: files are read in 1 MiB chunks through an incremental UTF-8 decoder (``.gz`` and
``.zst`` are decompressed on the way), Parquet one row group at a time and Arrow (a
``datasets.save_to_disk`` folder) one record batch at a time, and a plain text file larger than
``max_document_bytes`` is cut into several documents at blank lines, so memory stays flat however large
the input. Problems with one file never stop the run: unreadable, corrupt or truncated files, invalid
UTF-8, bad JSON lines, a missing text column and empty files are skipped and counted in :class:`IngestStats`.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import html
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any

from scratchllm.corpus.embedded import Document
from scratchllm.errors import ScratchError

CHUNK_BYTES = 1 << 20
FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".parquet": "parquet", ".arrow": "arrow",
}  # everything else is read as plain text
COMPRESSED = (".gz", ".zst", ".zstd")
ARROW_BATCH_ROWS = 1024  # rows converted to Python at a time (Parquet/Arrow)
# Files of a ``datasets.save_to_disk`` folder that are metadata, not data.
_DATASET_META = {"state.json", "dataset_info.json", "dataset_dict.json"}


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
    corrupt: int = 0  # corrupt or truncated files (Parquet, Arrow, gzip, zstd); documents before the damage are kept
    bad_schema: int = 0  # Parquet/Arrow files without the text column (or with a non-string one)
    metadata_removed: int = 0  # records dropped by a source's ``where`` conditions on other fields
    problems: list[str] = field(default_factory=list)  # a few examples, for the summary

    def skip(self, kind: str, where: object, why: str = "") -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if getattr(self, kind) <= 3:  # the first three of each kind
            self.problems.append(f"{where}: {kind.replace('_', ' ')}{' (' + why + ')' if why else ''}")

    @property
    def skipped(self) -> int:
        return self.invalid_utf8 + self.unreadable + self.binary + self.bad_json + self.empty + self.corrupt + self.bad_schema


SKIP_KINDS = ("invalid_utf8", "unreadable", "binary", "bad_json", "empty", "corrupt", "bad_schema")


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
            files = _dataset_files(sorted(
                p for p in root.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            ))
            if not files:
                raise ScratchError(f"input folder {pattern!r} contains no files", "put some text files in it")
            out.extend(files)
        elif os.path.exists(expanded):
            out.append(Path(expanded))
        else:
            raise ScratchError(f"input path not found: {pattern!r}", "check the path in sources.paths")
    return out


def _dataset_files(files: list[Path]) -> list[Path]:
    """In a folder written by ``datasets.save_to_disk``, keep only the Arrow files its state.json lists, in order."""
    out: list[Path] = []
    datasets: dict[Path, list[Path]] = {}
    for p in files:
        if p.name == "state.json":
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                listed = [p.parent / f["filename"] for f in json.loads(p.read_text())["_data_files"]]
                datasets[p.parent] = [f for f in listed if f.is_file()]
    for p in files:
        if p.parent in datasets:
            if p.name == "state.json":
                out.extend(datasets[p.parent])
        elif not (p.name in _DATASET_META and (p.parent / "state.json").exists() or p.name == "dataset_dict.json"):
            out.append(p)
    return out


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return FORMATS.get(os.path.splitext(name)[1], "text")


def parse_where(conditions: Iterable[str]) -> list[tuple[list[str], str, Any]]:
    """``["language == 'en'", "score >= 3"]`` -> [(field path, op, value)]; raises ScratchError on a bad one."""
    out = []
    for cond in conditions:
        m = _WHERE.fullmatch(cond.strip())
        value: Any = None
        if m:
            raw = m.group(3).strip()
            try:
                value = json.loads(raw.replace("'", '"') if raw[:1] == "'" else raw)
            except json.JSONDecodeError:
                m = None
        if not m:
            raise ScratchError(
                f"sources.where: cannot read condition {cond!r}",
                "write FIELD OP VALUE with OP one of == != >= <= > < in, e.g. \"language == 'en'\" or \"score >= 3\"",
            )
        out.append((m.group(1).split("."), m.group(2), value))
    return out


_WHERE = re.compile(r"([A-Za-z_][\w.-]*)\s*(==|!=|>=|<=|>|<|\bin\b)\s*(.+)")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, "<": lambda a, b: a < b, "in": lambda a, b: a in b,
}


def _keep(record: dict[str, Any], where: list[tuple[list[str], str, Any]]) -> bool:
    """All conditions hold (a missing field or incomparable types fail the condition)."""
    for keys, op, value in where:
        v: Any = record
        try:
            for k in keys:
                v = v[k]
            if not _OPS[op](v, value):
                return False
        except (KeyError, TypeError, IndexError):
            return False
    return True


def read_files(
    paths: Iterable[Path],
    domain: str,
    stats: IngestStats,
    fmt: str = "auto",
    text_field: str = "text",
    max_document_bytes: int = 1_000_000,
    where: Iterable[str] = (),
) -> Iterator[Document]:
    """Yield the documents in ``paths``; skip (and count in ``stats``) whatever cannot be read.

    ``text_field`` names the JSONL field ("meta.body" for nested objects) or the Parquet/Arrow column;
    ``where`` conditions on the other fields/columns (``"language == 'en'"``, ``"score >= 3"``) keep a
    record only if all hold.
    """
    conditions = parse_where(where)
    for path in paths:
        stats.files += 1
        kind = detect_format(path) if fmt == "auto" else fmt
        skipped_before = stats.skipped
        try:
            if kind in ("parquet", "arrow"):
                docs = _table_documents(path, kind, text_field, conditions, stats)
                for i, text in docs:
                    stats.documents += 1
                    stats.bytes += len(text.encode("utf-8"))
                    yield Document(text, domain, f"{path}#{i}")
                continue
            with _open(path) as f:
                if kind == "jsonl":
                    docs = _jsonl_documents(f, path, text_field, stats, conditions)
                else:
                    pieces = _decoded_chunks(f)
                    if kind == "html":
                        pieces = _html_text(pieces)
                    docs = _split_documents(pieces, max_document_bytes)
                    if kind == "markdown":
                        docs = (strip_markdown(d) for d in docs)
                n = 0
                for i, text in enumerate(docs):
                    if text is None or not text.strip():
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
        except _Corrupt as e:
            stats.skip("corrupt", path, str(e))
        except _BadSchema as e:
            stats.skip("bad_schema", path, str(e))
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            stats.skip("corrupt", path, str(e) or "truncated")
        except OSError as e:
            stats.skip("unreadable", path, e.strerror if e.strerror else str(e))


class _Binary(Exception):
    pass


class _Corrupt(Exception):
    pass


class _BadSchema(Exception):
    pass


def _open(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdReader(path), CHUNK_BYTES)
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


class _ZstdReader(io.RawIOBase):
    """A zstd stream (one or more frames) as a raw binary file; a truncated or corrupt stream raises _Corrupt.

    zstandard's own stream_reader returns a truncated frame's bytes without complaint, so frames are
    decoded here with a decompressobj whose ``eof`` says whether the last frame was complete.
    """

    def __init__(self, path: Path) -> None:
        try:
            import zstandard
        except ImportError:
            raise ScratchError(
                f"{path}: reading .zst files needs the zstandard package", "pip install 'zstandard>=0.22'"
            ) from None
        self._zstd = zstandard
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._buf = b""
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = self._raw.read(CHUNK_BYTES)
            if not chunk:
                if self._started and not self._obj.eof:
                    raise _Corrupt("truncated zstd stream")
                return 0
            try:
                while chunk:
                    if self._obj.eof:  # the next frame starts in the leftover bytes
                        self._obj = self._dctx.decompressobj()
                    self._started = True
                    self._buf += self._obj.decompress(chunk)
                    chunk = self._obj.unused_data if self._obj.eof else b""
            except self._zstd.ZstdError as e:
                raise _Corrupt(f"zstd: {e}") from None
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _record_batches(path: Path, kind: str) -> Iterator[Any]:
    """Arrow record batches of a Parquet file (row group by row group) or an Arrow IPC stream/file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ScratchError(f"{path}: reading {kind} files needs pyarrow", "pip install 'pyarrow>=14'") from None
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path)
            yield pf.schema_arrow
            for g in range(pf.num_row_groups):  # one row group in memory at a time
                yield from pf.read_row_group(g).to_batches(ARROW_BATCH_ROWS)
        else:
            with open(path, "rb") as f:
                try:
                    reader = pa.ipc.open_stream(f)  # what datasets.save_to_disk writes
                except pa.ArrowInvalid:
                    f.seek(0)
                    reader = pa.ipc.open_file(f)
                    yield reader.schema
                    for i in range(reader.num_record_batches):
                        yield reader.get_batch(i)
                    return
                yield reader.schema
                for batch in reader:
                    yield from batch.to_batches(ARROW_BATCH_ROWS) if hasattr(batch, "to_batches") else [batch]
    except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, pa.ArrowException) and e.strerror:
            raise
        raise _Corrupt(f"{kind}: {str(e).splitlines()[0][:200]}") from None


def _table_documents(
    path: Path, kind: str, column: str, where: list[tuple[list[str], str, Any]], stats: IngestStats
) -> Iterator[tuple[int, str]]:
    batches = _record_batches(path, kind)
    schema = next(batches)
    if column not in schema.names:
        raise _BadSchema(f"no column {column!r}; columns: {', '.join(schema.names[:10])}")
    import pyarrow as pa

    ctype = schema.field(column).type
    if not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype)):
        raise _BadSchema(f"column {column!r} is {ctype}, not a string")
    wanted = sorted({column, *(keys[0] for keys, _, _ in where)} & set(schema.names))
    row = 0
    for batch in batches:
        if where:
            records = batch.select(wanted).to_pylist()
            texts = [r[column] for r in records]
        else:
            texts, records = batch.column(column).to_pylist(), None
        for j, text in enumerate(texts):
            i, row = row, row + 1
            if records is not None and not _keep(records[j], where):
                stats.metadata_removed += 1
            elif text is None or not text.strip():
                stats.skip("empty", f"{path}#{i}")
            else:
                yield i, text


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


def read_hub(
    dataset: str, domain: str, stats: IngestStats, subset: str = "", split: str = "train",
    data_files: Sequence[str] = (), text_field: str = "text", where: Iterable[str] = (), max_documents: int = 0,
) -> Iterator[Document]:
    """Stream a dataset with ``datasets.load_dataset(..., streaming=True)``: nothing is downloaded in full."""
    conditions = parse_where(where)
    try:
        import datasets
    except ImportError:
        raise ScratchError("a 'hub' source needs the datasets library",
                           "pip install 'scratchllm[hub]', or download the files and use kind = \"files\"") from None
    try:
        ds = datasets.load_dataset(dataset, subset or None, split=split, streaming=True,
                                   data_files=list(data_files) or None)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (network, not found, bad config)
        raise ScratchError(f"cannot open dataset {dataset!r} (split {split!r}): {e}",
                           "check the name, subset and split, and the network (or use local files)") from None
    stats.files += 1
    keys = text_field.split(".")
    n = 0
    for i, record in enumerate(ds):
        where_ = f"{dataset}#{i}"
        value: Any = record
        try:
            for key in keys:
                value = value[key]
        except (KeyError, TypeError, IndexError):
            stats.skip("bad_schema", where_, f"no field {text_field!r}")
            continue
        if not isinstance(value, str) or not value.strip():
            stats.skip("empty", where_)
        elif conditions and not _keep(record, conditions):
            stats.metadata_removed += 1
        else:
            stats.documents += 1
            stats.bytes += len(value.encode("utf-8"))
            yield Document(value, domain, where_)
            n += 1
            if max_documents and n >= max_documents:
                break


def _jsonl_documents(
    f: IO[bytes], path: Path, text_field: str, stats: IngestStats, conditions: list[tuple[list[str], str, Any]] = ()
) -> Iterator[str | None]:
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
            value = record = json.loads(line)
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
        elif conditions and not _keep(record, conditions):
            stats.metadata_removed += 1
            yield None  # keeps the record numbering (source "file#i") the same with or without conditions
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
