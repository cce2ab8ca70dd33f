"""Metrics to ``metrics.jsonl`` (always), TensorBoard (if enabled) and Weights & Biases (if installed
and enabled), plus the run's record: resolved config, git commit, versions. Rank 0 only.

``metrics.jsonl`` holds one JSON object per line: ``{"step": 10, "kind": "train", "loss": ...}``,
``kind`` being "train", "val" or "sample". On resume, rows after the checkpoint's step (logged by
the interrupted run after its last checkpoint) are dropped, so the file is one clean curve.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError
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


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file (optionally of one kind)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows


class Tracker:
    """Writes metrics on the main process; on other ranks every method does nothing."""

    def __init__(self, out_dir: Path, enabled: bool, config: dict[str, Any], resume_step: int | None = None,
                 tensorboard: bool = True, wandb: bool = False, wandb_project: str = "scratchllm",
                 run_info: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._tb = self._wandb = None
        self._file = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / METRICS_FILE
        if path.exists():
            # Keep rows up to the step we resume from (none when starting over), drop the rest.
            keep = [] if resume_step is None else [
                line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _row_step(line) <= resume_step
            ]
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
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
        from scratchllm.config import to_toml

        atomic_write_text(self.out_dir / "config.toml", to_toml(config))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ScratchError(
                    "log.tensorboard = true but the tensorboard package is not installed",
                    fix="pip install tensorboard   (or set log.tensorboard=false; metrics.jsonl is always written)",
                ) from exc

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
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                if self._tb is not None:
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            elif isinstance(value, str) and self._tb is not None:
                self._tb.add_text(f"{kind}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (half-written) line: drop it
