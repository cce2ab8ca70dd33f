"""Metrics to ``metrics.jsonl`` (always), TensorBoard (if enabled) and Weights & Biases (if installed
and enabled), plus the run's record: resolved config, git commit, versions. Rank 0 only.

``metrics.jsonl`` holds one JSON object per line: ``{"step": 10, "kind": "train", "loss": ...}``,
``kind`` being "train", "val" or "sample". On resume, rows after the checkpoint's step (logged by
the interrupted run after its last checkpoint) are dropped, so the file is one clean curve; so is a
line cut short by a crash (readers skip it too).

A full disk on any of these writes (metrics, TensorBoard's event files, the run record) raises the
same "disk full" ScratchError as a checkpoint save, and a metrics line that did not fit is cut
back off the file, so the file never ends mid-line by our doing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratchllm.config import to_toml
from scratchllm.errors import ScratchError, disk_full, is_disk_full
from scratchllm.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD's hash, with "-dirty" if tracked files are modified; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


DISK_FULL_HINT = "free disk space (df -h; lower checkpoint.keep_last) and run again with --resume"


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (optionally of one kind). A last line cut short (a crash or a full
    disk mid-write) is skipped; an unreadable line elsewhere is an error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                break  # cut short by the writer's death: the rows before it are whole
            raise ScratchError(f"{path}:{lineno}: not a JSON line", "delete that line (or the file)") from None
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows


def training_metrics(out_dir: Path) -> dict[str, Any]:
    """A run's figures from its metrics.jsonl: final train and val loss, steps, tokens, median tokens/s
    and MFU (what a stage's result and the pipeline's report show). Empty when there is no file."""
    path = Path(out_dir) / METRICS_FILE
    rows = read_metrics(path) if path.exists() else []
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    out: dict[str, Any] = {}
    if train:
        out.update(final_train_loss=train[-1].get("loss"), steps=train[-1]["step"], tokens=train[-1].get("tokens"),
                   tokens_per_s=_median([r["tokens_per_s"] for r in train if "tokens_per_s" in r]),
                   mfu=_median([r["mfu"] for r in train if "mfu" in r]))
    if val:
        out["final_val_loss"] = val[-1]["loss"]
    return out


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


@contextlib.contextmanager
def _disk_full_as_error(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(what, DISK_FULL_HINT) from e
        raise


class Tracker:
    """Writes metrics on the main process; on other ranks every method does nothing."""

    def __init__(self, out_dir: Path, enabled: bool, config: dict[str, Any], resume_step: int | None = None,
                 tensorboard: bool = True, wandb: bool = False, wandb_project: str = "scratchllm",
                 run_info: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._tb = self._wandb = None
        self._fd: int | None = None
        self._hook: Any = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.metrics_path = self.out_dir / METRICS_FILE
        if path.exists():
            # Keep rows up to the step we resume from (none when starting over), drop the rest,
            # including a line cut short by a crash or a full disk.
            keep = [] if resume_step is None else [
                line for line in path.read_bytes().decode("utf-8", errors="replace").splitlines()
                if line.strip() and _row_step(line) <= resume_step
            ]
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        # A raw descriptor: one write() per row, and a row that did not fit can be cut back off.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        info = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_step": resume_step,
            "git_commit": git_commit(Path(__file__).parent),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "argv": sys.argv,
            **(run_info or {}),
        }
        history_path = self.out_dir / "run.json"
        history = []
        if resume_step is not None and history_path.exists():
            try:
                history = json.loads(history_path.read_text(encoding="utf-8")).get("runs", [])
            except (json.JSONDecodeError, AttributeError):
                history = []
        atomic_write_text(history_path, json.dumps({"runs": [*history, info]}, indent=1) + "\n")

        atomic_write_text(self.out_dir / "config.toml", to_toml(config))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ScratchError(
                    "log.tensorboard = true but the tensorboard package is not installed",
                    fix="pip install tensorboard   (or set log.tensorboard=false; metrics.jsonl is always written)",
                ) from exc

            # TensorBoard writes from its own thread, which prints a traceback before we see the error
            # (re-raised on our next call); a full disk gets our message instead of that traceback.
            self._hook = threading.excepthook

            def hook(args: Any, previous: Any = self._hook) -> None:
                if not (is_disk_full(args.exc_value) and type(args.thread).__name__ == "_AsyncWriterThread"):
                    previous(args)

            threading.excepthook = hook
            with _disk_full_as_error(f"TensorBoard logs in {self.out_dir / 'tensorboard'}"):
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                print("note: log.wandb = true but the wandb package is not installed; skipping it", file=sys.stderr)
            else:
                self._wandb = wandb_module.init(project=wandb_project, dir=str(self.out_dir),
                                                config=config, resume="allow", name=self.out_dir.name)

    def log(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "kind": kind, **metrics}
        data = (json.dumps(row) + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no half row left behind
            if is_disk_full(e):
                raise disk_full(f"{self.metrics_path} (step {step})", DISK_FULL_HINT) from e
            raise
        if self._tb is not None:
            with _disk_full_as_error(f"TensorBoard logs in {self.out_dir / 'tensorboard'} (step {step})"):
                for key, value in metrics.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        self._tb.add_scalar(f"{kind}/{key}", value, step)
                    elif isinstance(value, str):
                        self._tb.add_text(f"{kind}/{key}", value, step)
                self._tb.flush()  # surfaces a write error now, from the writer thread, not steps later
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self, quiet: bool = False) -> None:
        """Flush and close everything; ``quiet``: ignore write errors (closing after another error)."""
        error: BaseException | None = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            tb, self._tb = self._tb, None
            try:
                with _disk_full_as_error(f"TensorBoard logs in {self.out_dir / 'tensorboard'}"):
                    tb.close()
            except (ScratchError, OSError) as e:
                error = e
        if self._hook is not None:
            threading.excepthook, self._hook = self._hook, None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if error is not None and not quiet:
            raise error


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (half-written) line: drop it
