"""User chat files for fine-tuning: JSONL, one conversation per line, in the common formats.

``{"messages": [{"role", "content"}, ...]}`` (OpenAI/HF), ``{"conversations": [{"from", "value"}]}``
(ShareGPT) and ``{"instruction", "input", "output"}`` (Alpaca). Bad lines are reported with their
line number and either skipped or fatal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.io import iter_json_array, read_text
from scratchllm.tokenizer.chat import check_messages

_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "bot": "assistant"}


def record_to_messages(record: Any, where: str = "record") -> list[dict[str, str]]:
    """Convert one JSON record in a supported chat format to a validated messages list."""
    if not isinstance(record, dict):
        raise ScratchError(f"{where}: expected a JSON object, got {type(record).__name__}",
                           "each line must be one JSON object")
    if "messages" in record:
        messages = check_messages(record["messages"], where)
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ScratchError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} objects",
                               'ShareGPT turns look like {"from": "human", "value": "..."}')
        try:
            messages = [{"role": _SHAREGPT_ROLES[t.get("from")], "content": t.get("value")} for t in turns]
        except KeyError:
            bad = next(t.get("from") for t in turns if t.get("from") not in _SHAREGPT_ROLES)
            raise ScratchError(f"{where}: unknown ShareGPT speaker {bad!r}",
                               f"use one of {', '.join(_SHAREGPT_ROLES)}") from None
        messages = check_messages(messages, where)
    elif "instruction" in record and "output" in record:
        parts = [record["instruction"], record.get("input") or ""]
        if not all(isinstance(p, str) for p in [*parts, record["output"]]):
            raise ScratchError(f"{where}: 'instruction', 'input' and 'output' must be strings",
                               "fix the record's field types")
        user = "\n\n".join(p for p in parts if p.strip())
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        if isinstance(record.get("system"), str) and record["system"]:
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ScratchError(f"{where}: unrecognised chat format (keys: {', '.join(sorted(record)) or 'none'})",
                           "use 'messages' (list of role/content), 'conversations' (ShareGPT) "
                           "or 'instruction'/'input'/'output' (Alpaca)")
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise ScratchError(f"{where}: conversation has no (non-empty) assistant turn, so nothing to learn",
                           "add the assistant's reply or drop the line")
    return messages


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def _json_line(raw: bytes, where: str) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScratchError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})",
                           "re-encode the file as UTF-8, or set data.skip_bad=true") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ScratchError(f"{where}: malformed JSON ({e.msg} at column {e.colno})",
                           "fix the line, or set data.skip_bad=true to skip bad lines") from None


def load_chat_jsonl(
    path: str | Path, skip_bad: bool = False, report: Callable[[str], None] | None = None
) -> list[list[dict[str, str]]]:
    """Read a chat file: JSONL, or one JSON array of conversations (a ``.json`` file). Bad lines (items)
    raise ScratchError naming the line, or with ``skip_bad`` are reported (``report``, default stderr) and
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"instruction file not found: {path}", "check the path in finetune.data.path")
    report = report or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    out: list[list[dict[str, str]]] = []
    skipped = 0

    def keep(where: str, messages: Callable[[], list[dict[str, str]]]) -> None:
        nonlocal skipped
        try:
            out.append(messages())
        except ScratchError as e:
            if not skip_bad:
                raise
            skipped += 1
            report(f"skipping {e.message}")

    if _starts_with_array(path):
        # One JSON array of conversations (ShareGPT as usually distributed, in a .json file).
        for where, record in iter_json_array(read_text(path), path, "each item is one conversation object"):
            keep(where, lambda r=record, w=where: record_to_messages(r, w))
    else:
        with path.open("rb") as f:  # bytes, decoded line by line: a bad byte is reported at its own line
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    where = f"{path}:{lineno}"
                    keep(where, lambda r=raw, w=where: record_to_messages(_json_line(r, w), w))
    if skipped:
        report(f"{path}: skipped {skipped} bad line(s), kept {len(out)}")
    if not out:
        raise ScratchError(f"{path}: no usable conversations", "check the file's format (see docs/finetune.md)")
    return out
