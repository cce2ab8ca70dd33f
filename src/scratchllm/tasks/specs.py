"""Task definitions as data: a small TOML spec beside a JSONL (or CSV / text) data file.

A built-in task is a folder ``scratchllm/tasks/builtin/<name>/`` holding ``task.toml`` and its data.
Each embedded data set is small and written for this project; the same spec reads the real
benchmark file when a user has one (``--data gsm8k=/path/to/test.jsonl``), because the embedded
files use the real benchmarks' field names. A task can also be any ``.toml`` path.

Spec keys (all types)::

    name = "arc"                       # shown in reports
    type = "multiple_choice"           # multiple_choice | perplexity | generate | code | safety | judge
    data = "data.jsonl"                # relative to the spec; .jsonl(.gz), .json, .csv, .parquet, .txt
    template = "Question: {question}\\nAnswer:"   # prompt; {field}, {field[0]}, {field[key]}
    preprocess = "hellaswag"           # optional: lm-evaluation-harness's record preprocessing (below)
    csv_columns = ["question", "A"]    # optional: a CSV without a header row has these columns

Fields are referred to by dotted paths (``choices.text``); a path through a list of objects collects
the field from each (``question.choices.text`` in the original ARC files).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from scratchllm.config import from_dict, read_toml
from scratchllm.errors import ScratchError
from scratchllm.io import iter_jsonl

TaskType = Literal["multiple_choice", "perplexity", "generate", "code", "safety", "judge"]

# Names accepted by --tasks besides single task names.
GROUPS: dict[str, tuple[str, ...]] = {
    "mc": ("mmlu", "hellaswag", "arc"),
    "all": ("ppl", "mmlu", "hellaswag", "arc", "gsm8k", "humaneval", "safety"),
}


@dataclass
class TaskSpec:
    """One evaluation task. Type-specific keys are ignored by the other types."""

    name: str
    type: TaskType
    data: str
    description: str = ""
    template: str = "{question}"
    # lm-evaluation-harness's per-record preprocessing for benchmarks whose prompt needs code:
    # "hellaswag" adds `query` and `choices` (markers removed, ctx_b capitalised); "mmlu" adds
    # `subject_name` (from `subject`, or the file name of an original per-subject CSV), strips
    # `question` and builds `choices` from columns A-D.
    preprocess: Literal["", "hellaswag", "mmlu"] = ""
    csv_columns: list[str] = field(default_factory=list)  # a headerless CSV's columns (original MMLU)
    # multiple_choice
    choices: str | list[str] = "choices"  # path to the list of choice texts, or one path per choice
    continuations: list[str] = field(default_factory=list)  # scored strings (e.g. A-D); default: the choices
    answer: str = "answer"  # gold: an index, a letter, a label from answer_labels, or the choice text
    answer_labels: str = ""  # path to per-choice labels (ARC: choices.label)
    target_delimiter: str = " "  # put between the prompt and each scored continuation
    # perplexity
    text: str = "text"
    # generate / code / safety / judge
    num_fewshot: int = 0
    fewshot_data: str = ""  # solved examples for the prompt; default: the first num_fewshot records
    fewshot_template: str = ""
    fewshot_delimiter: str = "\n\n"
    stop: list[str] = field(default_factory=list)
    max_tokens: int = 256
    answer_pattern: str = r"#### (-?[0-9.,]+)"  # extracts the gold answer, and the "strict" prediction
    # code
    test: str = "test"
    entry_point: str = "entry_point"
    samples: int = 1
    k: list[int] = field(default_factory=lambda: [1])
    temperature: float = 0.0
    timeout: float = 10.0
    memory_mb: int = 1024
    # safety
    category: str = "category"
    harmful: str = "harmful"
    # judge
    reference: str = ""  # optional reference-answer field shown to the judge
    # set by the loader, not the file
    spec_path: str = ""

    def validate(self) -> None:
        if not self.name.strip():
            raise ScratchError("task spec: name must not be empty")
        check_template(self.template, "template")
        if self.fewshot_template:
            check_template(self.fewshot_template, "fewshot_template")
        if self.max_tokens < 1 or self.samples < 1 or self.num_fewshot < 0:
            raise ScratchError("task spec: max_tokens and samples must be >= 1, num_fewshot >= 0")
        if any(k < 1 for k in self.k):
            raise ScratchError(f"task spec: every k must be >= 1, got {self.k}")
        if self.timeout <= 0 or self.memory_mb < 16:
            raise ScratchError("task spec: timeout must be positive and memory_mb at least 16")
        if self.type == "generate" and self.num_fewshot and not self.fewshot_template:
            raise ScratchError("task spec: num_fewshot > 0 needs a fewshot_template",
                               'e.g. fewshot_template = "Question: {question}\\nAnswer: {answer}"')

    @property
    def base_dir(self) -> Path:
        return Path(self.spec_path).parent

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path


@dataclass
class Record:
    """One example, with where it came from (for error messages)."""

    data: dict[str, Any]
    source: str  # "file:line"


# --- templates and field paths -------------------------------------------------------------------------


def check_template(template: str, key: str) -> list[str]:
    """The field names a template uses; refuses attribute access and conversions (data, not code)."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ScratchError(f"task spec: bad {key} {template!r}: {e}", "write literal braces as {{ and }}") from None
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if not name or "." in name or name.startswith("_") or conversion:
            raise ScratchError(f"task spec: {key} field {{{name}}} is not allowed",
                               "use {field}, {field[0]} or {field[key]}: no attributes, no positional fields")
        names.append(name)
    return names


def render(template: str, record: Record) -> str:
    try:
        return template.format_map(_Fields(record.data))
    except (KeyError, IndexError, TypeError) as e:
        raise ScratchError(f"{record.source}: the template needs {e} which this record does not have",
                           f"record fields: {', '.join(sorted(record.data))}") from None


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def get_path(record: Record, path: str) -> Any:
    """Value at a dotted path; through a list of objects the field is collected from each item."""
    value: Any = record.data
    for part in path.split("."):
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            try:
                value = [v[part] for v in value]
                continue
            except KeyError:
                pass
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
            continue
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
            continue
        raise ScratchError(f"{record.source}: missing field {path!r}",
                           f"record fields: {', '.join(sorted(record.data))}")
    return value


# --- data files ---------------------------------------------------------------------------------------


def read_records(path: Path, limit: int | None = None, csv_columns: Sequence[str] = ()) -> list[Record]:
    """Records from JSONL (.jsonl, .jsonl.gz), a JSON list, CSV (with a header row, or ``csv_columns``),
    Parquet (the Hugging Face copies of benchmarks), or plain text."""
    if not path.is_file():
        raise ScratchError(f"task data file not found: {path}", "check the path in the spec or in --data")
    name = path.name.lower()
    if name.endswith(".parquet"):
        records = _parquet_records(path)
        return records[:limit] if limit else records
    try:
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
            name = name[:-3]
        text = raw.decode("utf-8")
    except (OSError, EOFError) as e:
        raise ScratchError(f"cannot read {path}: {e}", "the file is unreadable or a truncated .gz") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ScratchError(f"{path}:{line}: not valid UTF-8", "convert the file to UTF-8") from None
    if name.endswith(".txt"):
        records = [Record({"text": text}, f"{path}:1")]
    elif name.endswith(".csv"):
        records = list(_csv_records(text, path, csv_columns))
    elif name.endswith(".json"):
        records = _json_records(text, path)
    else:
        records = list(_jsonl_records(text, path))
    if not records:
        raise ScratchError(f"{path} holds no records", "a task needs at least one example")
    return records[:limit] if limit else records


def _jsonl_records(text: str, path: Path) -> Iterator[Record]:
    for where, value in iter_jsonl(text, path, "each line of a .jsonl file must be one JSON object"):
        yield Record(value, where)


def _json_records(text: str, path: Path) -> list[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScratchError(f"{path}:{e.lineno}: not valid JSON ({e.msg})", "fix the file") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ScratchError(f"{path}: a .json task file must hold a list of objects", "or use JSONL")
    return [Record(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _csv_records(text: str, path: Path, columns: Sequence[str] = ()) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(text))
    first = next(reader, None)
    if not first:
        return
    header, start = (list(columns), 1) if columns and first != list(columns) else (first, 2)
    rows = [first, *reader] if start == 1 else reader
    for number, row in enumerate(rows, start):
        if not row:
            continue
        if len(row) != len(header):
            raise ScratchError(f"{path}:{number}: {len(row)} columns, the header has {len(header)}",
                               "quote fields that contain commas")
        yield Record(dict(zip(header, row, strict=True)), f"{path}:{number}")


def _parquet_records(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ScratchError(f"reading {path} needs pyarrow", "pip install pyarrow") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise ScratchError(f"cannot read {path} as Parquet: {e}", "the file is not Parquet, or is truncated") from None
    return [Record(row, f"{path}[{i}]") for i, row in enumerate(rows)]


# --- lm-evaluation-harness's record preprocessing -------------------------------------------------------


def _hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: WikiHow's [title]/[header]/[step] markers out."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _preprocess_hellaswag(data: dict[str, Any], path: Path) -> dict[str, Any]:
    # The original files carry ctx_a and ctx_b (ctx is their join); lm-eval capitalises ctx_b.
    if "ctx_a" in data and "ctx_b" in data:
        ctx = f"{data['ctx_a']} {str(data['ctx_b']).capitalize()}"
    else:
        ctx = str(data.get("ctx", ""))
    query = _hellaswag_text(f"{data.get('activity_label', '')}: {ctx}")
    return {**data, "query": query, "choices": [_hellaswag_text(str(e)) for e in data.get("endings", [])]}


def _preprocess_mmlu(data: dict[str, Any], path: Path) -> dict[str, Any]:
    out = dict(data)
    # The original release has one headerless CSV per subject: <subject>_test.csv (or _dev, _val).
    subject = str(data.get("subject") or re.sub(r"_(test|dev|val)$", "", path.stem))
    out["subject_name"] = subject.replace("_", " ")
    if isinstance(data.get("question"), str):
        out["question"] = data["question"].strip()
    if "choices" not in data and all(k in data for k in "ABCD"):
        out["choices"] = [data[k] for k in "ABCD"]
    return out


PREPROCESS = {"hellaswag": _preprocess_hellaswag, "mmlu": _preprocess_mmlu}


# --- specs and the registry ----------------------------------------------------------------------------


def builtin_dir() -> Path:
    return Path(str(resources.files("scratchllm.tasks") / "builtin"))


def builtin_tasks() -> dict[str, Path]:
    """Built-in task name -> its task.toml."""
    root = builtin_dir()
    return {p.parent.name: p for p in sorted(root.glob("*/task.toml"))}


def load_spec(path: str | Path, data_override: str | Path | None = None) -> TaskSpec:
    path = Path(path)
    raw = read_toml(path)
    raw["spec_path"] = str(path)
    try:
        spec = from_dict(TaskSpec, raw)
    except ScratchError as e:
        raise ScratchError(f"{path}: {e.message}", e.hint) from None
    if data_override is not None:
        spec.data = str(Path(data_override).expanduser().resolve())
    return spec


def resolve_tasks(names: Sequence[str], data_overrides: Mapping[str, str] | None = None) -> list[TaskSpec]:
    """Task specs for ``--tasks`` entries: built-in names, group names, or paths to .toml specs."""
    overrides = dict(data_overrides or {})
    available = builtin_tasks()
    specs: list[TaskSpec] = []
    seen: set[str] = set()
    for entry in names:
        entry = entry.strip()
        if not entry:
            continue
        if entry.endswith(".toml"):
            expanded = [entry]
        elif entry in GROUPS:
            expanded = list(GROUPS[entry])
        elif entry in available:
            expanded = [entry]
        else:
            raise ScratchError(
                f"unknown task {entry!r}",
                f"available tasks: {', '.join(available)}; groups: {', '.join(GROUPS)}; or a path to a task .toml",
            )
        for item in expanded:
            path = Path(item) if item.endswith(".toml") else available[item]
            if not path.is_file():
                raise ScratchError(f"task spec not found: {path}", "check the path")
            spec = load_spec(path, overrides.pop(item, None) if not item.endswith(".toml") else None)
            if spec.name not in seen:
                seen.add(spec.name)
                specs.append(spec)
    if overrides:
        raise ScratchError(f"--data given for {', '.join(overrides)}, which is not among the tasks run",
                           "name the task in --tasks too, e.g. --tasks gsm8k --data gsm8k=test.jsonl")
    if not specs:
        raise ScratchError("no tasks given", f"e.g. --tasks ppl,mc; available: {', '.join(available)}")
    return specs


def data_label(spec: TaskSpec) -> str:
    """``embedded:<task>/<file>`` for shipped data, else the data file's path."""
    path = spec.resolve(spec.data).resolve()
    try:
        return "embedded:" + path.relative_to(builtin_dir().resolve()).as_posix()
    except ValueError:
        return str(path)


def task_records(spec: TaskSpec, limit: int | None = None) -> list[Record]:
    path = spec.resolve(spec.data)
    records = read_records(path, limit, spec.csv_columns)
    if spec.preprocess:
        records = [Record(PREPROCESS[spec.preprocess](r.data, path), r.source) for r in records]
    return records


# --- multiple choice ----------------------------------------------------------------------------------


def choice_texts(spec: TaskSpec, record: Record) -> list[str]:
    if isinstance(spec.choices, list):
        values = [get_path(record, p) for p in spec.choices]
    else:
        values = get_path(record, spec.choices)
    if not isinstance(values, list) or len(values) < 2:
        raise ScratchError(f"{record.source}: choices must be a list of at least two texts, got {values!r}")
    return [str(v) for v in values]


def gold_index(spec: TaskSpec, record: Record, n_choices: int, choices: Sequence[str]) -> int:
    """The gold choice: an index, a numeric string, a label (answer_labels), a letter, or the choice text."""
    gold = get_path(record, spec.answer)
    index = -1
    if isinstance(gold, int) and not isinstance(gold, bool):
        index = gold
    elif isinstance(gold, str):
        g = gold.strip()
        labels = [str(x) for x in get_path(record, spec.answer_labels)] if spec.answer_labels else []
        if labels:
            index = labels.index(g) if g in labels else -1
        elif g.isdigit():
            index = int(g)
        elif len(g) == 1 and "A" <= g <= "Z":
            index = ord(g) - ord("A")
        elif g in choices:
            index = list(choices).index(g)
    if not 0 <= index < n_choices:
        raise ScratchError(f"{record.source}: answer {gold!r} does not name one of the "
                           f"{n_choices} choices", "use an index from 0, a letter A.., a label, or the choice text")
    return index
