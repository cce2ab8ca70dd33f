"""Training checkpoints: everything needed to continue a run exactly, written atomically.

Layout (``out_dir/checkpoints``)::

    latest                        name of the newest complete checkpoint (updated atomically)
    step_000200/
        config.json               the model config  } together a model directory:
        model.safetensors         the weights       } Transformer.from_pretrained(step_000200)
        optimizer.safetensors     AdamW moments and step counts, flattened to "<param name>/<key>"
        state.json                step, tokens, schedule, data-loader position, RNG states of every
                                  rank, the optimizer's param groups, the run config
        checksums.json            sha256 of the four files above; verified before loading

A checkpoint is written into a hidden temporary directory, fsynced and renamed into place, and only
then named in ``latest``; a crash or a full disk mid-save leaves the previous checkpoints untouched.
Only the newest ``keep_last`` complete checkpoints are kept. Nothing is pickled: tensors go to
safetensors, the rest (including RNG states, as lists of integers) to JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text, sha256_file
from scratchllm.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_json, read_safetensors, write_safetensors

FORMAT = "scratchllm-train-checkpoint"
VERSION = 1
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKSUMS_FILE = "checksums.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and (p / CHECKSUMS_FILE).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint named by ``latest``, or else the highest step present; None if there is none."""
    root = Path(root)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        name = (root / LATEST).read_text(encoding="utf-8").strip()
        if _STEP_DIR.fullmatch(name) and (root / name / CHECKSUMS_FILE).exists():
            return root / name
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def refuse_existing_run(root: Path, out_dir: Path, what: str = "run") -> None:
    """A new (not resumed) run must not write over an earlier one's checkpoints in ``root``."""
    existing = latest_checkpoint(root)
    if existing is not None:
        raise ScratchError(f"{out_dir} already holds a {what} (latest checkpoint: {existing.name})",
                           "continue it with --resume, or choose a new out_dir=... (or delete the old run)")


def remove_stale_temporaries(root: Path) -> None:
    """Delete half-written checkpoint directories left by a killed process."""
    if Path(root).is_dir():
        for p in Path(root).glob(".tmp_step_*"):
            shutil.rmtree(p, ignore_errors=True)


# --- JSON encoding of tensors and RNG states ------------------------------------------------------


def to_json(obj: Any) -> Any:
    """JSON-safe copy of nested dicts/lists/tuples with tensors and numpy arrays as tagged lists."""
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": obj.cpu().flatten().tolist(), "dtype": str(obj.dtype).removeprefix("torch."),
                "shape": list(obj.shape)}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.flatten().tolist(), "dtype": obj.dtype.name, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def from_json(obj: Any) -> Any:
    """Inverse of ``to_json`` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return torch.tensor(obj["__tensor__"], dtype=getattr(torch, obj["dtype"])).reshape(obj["shape"])
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (CPU) and CUDA generator states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return to_json(state)


def set_rng_state(state: Mapping[str, Any]) -> None:
    state = from_json(state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys, pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- model and optimizer state ----------------------------------------------------------------------


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: canonical name} for parameters shared under several names (a head tied to the embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def flatten_optimizer(osd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a name-keyed optimizer state dict into tensors ("<param>/<key>") and JSON metadata."""
    tensors, scalars = {}, {}
    for pname, entry in osd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pname}/{key}"] = value
            else:
                scalars[f"{pname}/{key}"] = value
    return tensors, {"param_groups": to_json(osd["param_groups"]), "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        pname, _, key = flat.rpartition("/")
        state.setdefault(pname, {})[key] = value
    groups = from_json(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# --- save ---------------------------------------------------------------------------------------------


def save_checkpoint(
    root: Path,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    optim_state: Mapping[str, Any],
    state: dict[str, Any],
    model_config: Mapping[str, Any],
    aliases: Mapping[str, str] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, delete all but ``keep_last``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".tmp_{step_name(step)}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        weights = {k: v for k, v in model_state.items() if k not in (aliases or {})}
        write_safetensors(tmp / WEIGHTS_FILE, weights)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(dict(model_config), indent=2) + "\n")
        opt_tensors, opt_meta = flatten_optimizer(optim_state)
        write_safetensors(tmp / OPTIM_FILE, opt_tensors)
        full_state = {"format": FORMAT, "version": VERSION, "step": step, **state,
                      "aliases": dict(aliases or {}), "optimizer": opt_meta, "model_config": dict(model_config)}
        atomic_write_text(tmp / STATE_FILE, json.dumps(full_state, indent=1) + "\n")
        files = (WEIGHTS_FILE, CONFIG_FILE, OPTIM_FILE, STATE_FILE)
        atomic_write_text(tmp / CHECKSUMS_FILE, json.dumps({f: sha256_file(tmp / f) for f in files}, indent=1) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after resuming from an earlier checkpoint)
            old = root / f".tmp_old_{step_name(step)}_{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
        atomic_write_text(root / LATEST, final.name + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ScratchError) and "disk full" in e.message:
            previous = latest_checkpoint(root)
            raise ScratchError(
                f"disk full while saving checkpoint {final.name}; the partial copy was removed and "
                + (f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"),
                "free disk space (df -h; lower checkpoint.keep_last) and run again with --resume",
            ) from e
        raise
    for _, old_path in list_checkpoints(root)[:-keep_last]:
        if old_path != final:
            shutil.rmtree(old_path, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem supports fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- load ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any]
    state: dict[str, Any]  # state.json


def _others(path: Path) -> str:
    found = [p.name for _, p in list_checkpoints(path.parent) if p != path]
    return ", ".join(found) if found else "none"


def _corrupt(path: Path, what: str) -> ScratchError:
    return ScratchError(
        f"checkpoint {path} is unusable: {what}",
        f"resume from an earlier checkpoint with --resume-from {path.parent}/<step_dir> "
        f"(other checkpoints here: {_others(path)}), or start a new run",
    )


def verify_checkpoint(path: Path) -> dict[str, str]:
    """Check every file against checksums.json; a missing, truncated or altered file is an error."""
    path = Path(path)
    if not path.is_dir():
        raise ScratchError(f"checkpoint directory not found: {path}",
                           f"checkpoints in {path.parent}: {_others(path)}")
    try:
        sums = json.loads((path / CHECKSUMS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _corrupt(path, f"{CHECKSUMS_FILE} is missing (an incomplete copy?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _corrupt(path, f"{CHECKSUMS_FILE} is corrupt") from None
    if not isinstance(sums, dict) or set(sums) != {WEIGHTS_FILE, CONFIG_FILE, OPTIM_FILE, STATE_FILE}:
        raise _corrupt(path, f"{CHECKSUMS_FILE} does not list the expected files")
    for name, digest in sums.items():
        file = path / name
        if not file.exists():
            raise _corrupt(path, f"{name} is missing")
        if sha256_file(file) != digest:
            raise _corrupt(path, f"{name} is truncated or corrupt (sha256 differs from {CHECKSUMS_FILE})")
    return sums


def load_checkpoint(path: Path) -> Checkpoint:
    """Verify checksums, then read the model and optimizer tensors and state.json (no pickle)."""
    path = Path(path)
    verify_checkpoint(path)
    state = read_json(path / STATE_FILE)
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise _corrupt(path, f"{STATE_FILE} is not a version-{VERSION} scratchllm training checkpoint")
    # safetensors returns tensors in an arbitrary order that differs between processes; FSDP2's
    # loading runs one collective per tensor in dict order, so every rank must use the same order.
    model_state = dict(sorted(read_safetensors(path / WEIGHTS_FILE).items()))
    for alias, canonical in state.get("aliases", {}).items():
        model_state[alias] = model_state[canonical]
    optim_tensors = dict(sorted(read_safetensors(path / OPTIM_FILE).items()))
    optim_state = unflatten_optimizer(optim_tensors, state["optimizer"])
    return Checkpoint(path, int(state["step"]), model_state, optim_state, state)


def check_model_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """A checkpoint only resumes into the model shape it was saved from; name every difference."""
    keys = sorted(set(saved) | set(current))
    diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} in the config"
            for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise ScratchError(
            f"checkpoint {path} was saved from a different model config ({'; '.join(diff)})",
            "resume with the model settings the checkpoint was trained with (see its config.json), "
            "or start a new run in a different out_dir",
        )
