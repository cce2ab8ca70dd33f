"""File helpers: atomic writes and strict UTF-8 reads with actionable errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from scratchllm.errors import ScratchError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    If the block raises (including KeyboardInterrupt or a full disk) the temporary file is
    removed and ``path`` keeps its previous content, so readers never see a partial file.
    """
    if "w" not in mode:
        raise ValueError("atomic_write only supports write modes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            # mkstemp creates 0600; give the mode a plain open() would, so a model directory stays
            # readable by other users (a container's unprivileged server, a shared volume).
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as e:
        _remove_quietly(tmp_name)
        if e.errno == errno.ENOSPC:
            raise ScratchError(
                f"disk full while writing {path}; the previous version (if any) is intact",
                "free some disk space (df -h) and run the command again",
            ) from e
        raise
    except BaseException:
        _remove_quietly(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w", newline="") as f:
        f.write(text)


def _umask() -> int:
    # Reading the umask means setting it; threads writing files meanwhile would briefly see 0o022
    # instead of the real mask, so prefer the value the kernel reports (Linux 4.7+).
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def read_text(
    path: str | os.PathLike[str], errors: str = "strict", lossy_option: str = "--errors replace"
) -> str:
    """Read a UTF-8 text file; invalid bytes raise a ScratchError naming the file and offset.

    ``errors="replace"`` substitutes U+FFFD instead, for users who accept lossy input;
    ``lossy_option`` is how the caller's user asks for that, quoted in the hint.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScratchError(f"file not found: {path}", "check the path and try again") from None
    except IsADirectoryError:
        raise ScratchError(f"{path} is a directory, expected a file", "pass a file path") from None
    except PermissionError:
        raise ScratchError(f"permission denied reading {path}", "check the file's permissions") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise ScratchError(
            f"{path} is not valid UTF-8 (bad byte 0x{data[e.start]:02x} at offset {e.start})",
            f"convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8), or use {lossy_option} "
            "to substitute invalid bytes",
        ) from None


def iter_jsonl(text: str, path: str | os.PathLike[str], hint: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each record of JSONL ``text`` ("path:line"), or of one JSON array of
    objects ("path[index]": ShareGPT and many datasets ship a ``.json`` file that way).
    A line that is not JSON, or not a JSON object, raises a ScratchError naming its line; ``hint``
    says what a line should look like."""
    if text.lstrip().startswith("["):
        yield from iter_json_array(text, path, hint)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchError(f"{where}: malformed JSON ({e.msg} at column {e.colno})", hint) from None
        if not isinstance(record, dict):
            raise ScratchError(f"{where}: expected a JSON object, got {type(record).__name__}", hint)
        yield where, record


def iter_json_array(text: str, path: str | os.PathLike[str], hint: str) -> Iterator[tuple[str, Any]]:
    """``(where, item)`` for each item of a JSON array ("path[index]"); items are not checked here."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScratchError(f"{path}: malformed JSON array ({e.msg} at line {e.lineno}, column {e.colno})",
                           "a .json file holds one array of objects; JSONL holds one object per line") from None
    if not isinstance(items, list):
        raise ScratchError(f"{path}: expected a JSON array of objects, got {type(items).__name__}", hint)
    for i, record in enumerate(items):
        if not isinstance(record, dict):
            raise ScratchError(f"{path}[{i}]: expected a JSON object, got {type(record).__name__}", hint)
        yield f"{path}[{i}]", record


def read_jsonl(path: str | os.PathLike[str], hint: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``iter_jsonl`` over a UTF-8 file (JSONL or a JSON array); invalid UTF-8 raises a ScratchError naming the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ScratchError(f"{path}:{line}: not valid UTF-8 (bad byte 0x{data[e.start]:02x})",
                           "re-encode the file as UTF-8") from None
    yield from iter_jsonl(text, path, hint)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (shards and checkpoints can be large)."""
    import hashlib  # lazy: it loads OpenSSL (~3 ms), and every command, --help included, imports io

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
