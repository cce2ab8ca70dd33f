"""One config system for every stage: dataclasses, TOML presets, dotted command-line overrides.

A stage declares its config as a (nested) dataclass. ``load_config(Cls, path, overrides)`` reads the
TOML preset, applies ``section.key=value`` overrides and checks every key and type, so a typo or a
wrong type fails early with the offending key named::

    cfg = load_config(TrainConfig, "configs/train/cpu-tiny.toml", ["optim.lr=3e-4"])

Override values are parsed as TOML literals (``3e-4``, ``true``, ``[1, 2]``, ``"text"``); anything
that is not a TOML literal is taken as a bare string (``tokenizer.pattern=gpt4``).

Any table may start from a preset: ``preset = "configs/model/1m.toml"`` plus keys to change on top of
it (``[model]`` in a training config, a stage's table in the pipeline's, a whole file). The merge is
written once, :func:`apply_preset`, and ``from_dict`` applies it to every table it builds.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from scratchllm.errors import ScratchError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional TOML file plus ``key=value`` overrides, validating everything.

    ``path`` is a file or a shipped preset's name (see :func:`find_config`)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
    for item in overrides:
        key, value = parse_override(item)
        if key.split(".")[-1] == "preset" and isinstance(value, str):
            # A preset named on the command line is relative to where the command runs.
            value = str(find_config(value, named_by=f"the override {item!r}").resolve())
        set_dotted(data, key, value)
    return from_dict(cls, data)


def preset_root() -> Path:
    """The shipped presets (configs/<stage>/<name>.toml), installed inside the package."""
    return Path(__file__).resolve().parent / "configs"


def shipped_presets(stage: str | None = None) -> list[str]:
    """Names (``stage/name``) of the shipped presets, optionally of one stage only."""
    return [f"{p.parent.name}/{p.stem}" for p in sorted(preset_root().glob(f"{stage or '*'}/*.toml"))]


def find_config(ref: str | Path, base: Path | None = None, named_by: str | None = None) -> Path:
    """Where the config file ``ref`` is: one rule for ``--config``, nested presets and overrides.

    First ``ref`` as a path relative to ``base`` (the folder of the file that names it; the current
    directory on the command line), then as a shipped preset: ``configs/train/cpu-tiny.toml``,
    ``train/cpu-tiny`` or just ``cpu-tiny`` when only one stage has that name. A miss names the file
    that pointed there.
    """
    ref_path = Path(ref).expanduser()
    path = ref_path if ref_path.is_absolute() or base is None else base / ref_path
    if path.is_file():
        return path
    parts = ref_path.parts[1:] if ref_path.parts[:1] == ("configs",) else ref_path.parts
    if parts and not ref_path.is_absolute():
        rel = Path(*parts)
        rel = rel if rel.suffix == ".toml" else rel.with_name(rel.name + ".toml")
        candidates = [preset_root() / rel] if len(parts) > 1 else sorted(preset_root().glob(f"*/{rel.name}"))
        if len(candidates) > 1:
            names = [f"{c.parent.name}/{c.stem}" for c in candidates]
            raise ScratchError(f"config {str(ref)!r} is ambiguous: shipped presets {', '.join(names)}",
                               f"name it with its stage, e.g. {names[0]}")
        if candidates and candidates[0].is_file():
            return candidates[0]
    where = f" (named by {named_by})" if named_by else ""
    raise ScratchError(
        f"config file not found: {ref}{where}",
        "give a path (relative to the file that names it) or a shipped preset: " + ", ".join(shipped_presets()),
    )


def read_toml(path: str | Path, named_by: str | None = None) -> dict[str, Any]:
    """Read a TOML config (a path or a shipped preset's name). Its ``preset`` keys, at any depth, become
    absolute paths resolved relative to this file, so nested presets work from any directory."""
    path = find_config(path, named_by=named_by)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScratchError(f"config file {path} is not valid UTF-8", "save it as UTF-8") from None
    except OSError as e:
        raise ScratchError(f"cannot read config file {path}: {e.strerror or e}", "check the path") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScratchError(f"config file {path} is not valid TOML: {e}", "fix the syntax at that line") from None
    _resolve_presets(data, path, "")
    return data


def _resolve_presets(table: dict[str, Any], file: Path, where: str) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _resolve_presets(value, file, _join(where, key))
        elif key == "preset" and isinstance(value, str):
            named_by = f"{file}, key {_join(where, key)!r}"
            table[key] = str(find_config(value, base=file.parent, named_by=named_by).resolve())


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value`` and parse ``value`` as a TOML literal, falling back to a plain string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScratchError(f"bad override {item!r}: expected key=value", "write it like train.lr=3e-4")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, making the tables on the way (overrides, forced paths)."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScratchError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Construct dataclass ``cls`` from a mapping; unknown keys and wrong types name the key."""
    if not isinstance(data, Mapping):
        raise ScratchError(f"config key {where or '<root>'!r} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if "preset" in data and "preset" not in fields:
        data = apply_preset(cls, data, where)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = _join(where, unknown[0])
        raise ScratchError(
            f"unknown config key {name!r}",
            f"valid keys{' in ' + repr(where) if where else ''}: {', '.join(sorted(fields))}",
        )
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ScratchError(f"config {where or '<root>'!r}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def apply_preset(cls: type, data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``data`` with the file named by its ``preset`` key underneath (and that file's own preset, ...).

    Sections (dataclass fields) merge key by key; a value that is itself a table, such as
    ``mix.weights`` (typed ``dict[str, X]``), replaces the preset's whole, as an override does."""
    out = copy.deepcopy(dict(data))
    for _ in range(16):  # a preset may name another; a cycle is a user error, not a hang
        preset = out.pop("preset", None)
        if preset is None:
            return out
        if not isinstance(preset, str):
            raise ScratchError(f"config key {_join(where, 'preset')!r} must be a path string, got {preset!r}")
        out = merge_tables(read_toml(preset, named_by=f"the key {_join(where, 'preset')!r}"), out, cls)
    raise ScratchError(f"config key {_join(where, 'preset')!r}: presets name each other in a cycle")


def merge_tables(base: Mapping[str, Any], top: Mapping[str, Any], cls: type | None = None) -> dict[str, Any]:
    """``top`` over ``base``: sections of ``cls`` (and tables of unknown type) merge, other values replace."""
    out = copy.deepcopy(dict(base))
    hints = typing.get_type_hints(cls) if cls is not None and dataclasses.is_dataclass(cls) else {}
    for k, v in top.items():
        tp = _section_type(hints.get(k))
        # Open tables (dict[str, Any], e.g. a pipeline's stage table) merge too; value maps replace.
        section = k not in hints or tp is not None or hints[k] == dict[str, Any]
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and section:
            out[k] = merge_tables(out[k], v, tp)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field's type (``X`` or ``X | None``), or None for a plain value or map."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ScratchError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ScratchError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise ScratchError(f"config key {key!r} must be a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ScratchError(f"config key {key!r} must be a table, got {type(value).__name__}")
        val_tp = args[1] if args else Any
        return {str(k): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str):
            return Path(value)
    else:
        raise TypeError(f"config type {tp!r} for {key!r} is not supported")
    raise ScratchError(f"config key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp: Any) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string", Path: "a path"}.get(
        tp, str(tp)
    )


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data view of a config (Paths as strings, None dropped) suitable for TOML/JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v) if getattr(v, f.name) is not None}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(obj)


def to_toml(obj: Any) -> str:
    """Serialise a config to TOML (scalars first, then one table per nested section)."""
    lines: list[str] = []
    _emit_table(to_dict(obj), [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit_table(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append(f"\n[{'.'.join(prefix)}]")
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        _emit_table(v, [*prefix, k], lines)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else _toml_value(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # inside a list (e.g. a tokenizer's corpus.sources): an inline table
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
