"""The orchestrator: run stages in order into one run directory, skip what is done, resume what is not.

Bookkeeping lives in ``run_dir/.pipeline/``:

* ``<stage>.started.json`` - written when a stage starts, with its fingerprint. A rerun with the same
  fingerprint lets the stage resume its partial outputs (the training stages continue from their
  last checkpoint); a different fingerprint (the config or an upstream stage changed) clears the
  stage's directory first.
* ``<stage>.done.json`` - written atomically only after the stage's outputs were verified: its
  fingerprint, seconds, peak memory and a summary the report reads. A rerun skips a stage whose
  marker matches the current fingerprint and whose outputs still verify.

A stage's fingerprint hashes its resolved config and the fingerprint of the stage before it, so a
change anywhere reruns that stage and everything after it. ``--from STAGE`` clears STAGE and every
later stage and runs them again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import resource
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError, is_disk_full
from scratchllm.io import atomic_write_text

STATE_DIR = ".pipeline"
LOG_FILE = "pipeline.log"


class StageInterrupted(Exception):
    """Ctrl-C, SIGTERM, or a training stage that stopped early on a signal (its checkpoint is saved)."""


@dataclass
class Stage:
    """One step of the pipeline.

    ``run(ctx)`` makes the outputs under ``ctx.dir(name)`` and returns a JSON-ready summary;
    ``verify(ctx)`` raises ScratchError if the outputs are missing or invalid.
    """

    name: str
    run: Callable[[Context], dict[str, Any]]
    verify: Callable[[Context], None]
    description: str = ""


@dataclass
class Context:
    cfg: Any  # PipelineConfig (or anything the stages understand, in tests)
    run_dir: Path
    resume_command: str
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
    tables: dict[str, Any] = field(default_factory=dict)  # stage -> resolved config (fingerprints)

    def dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def done(self, stage: str) -> dict[str, Any] | None:
        """A finished stage's marker (with its summary), or None."""
        return read_json(self.run_dir / STATE_DIR / f"{stage}.done.json")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fingerprint(name: str, table: Any, previous: str) -> str:
    blob = json.dumps([name, table, previous], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class MemoryMonitor:
    """Peak resident memory of this process during a block (sampled; /proc on Linux, else ru_maxrss)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            return pages * resource.getpagesize() / 2**20
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __enter__(self) -> MemoryMonitor:
        self.peak_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        _reset_cuda_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())

    @property
    def cuda_peak_mb(self) -> float | None:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return torch.cuda.max_memory_allocated() / 2**20


def _reset_cuda_peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill` (SIGTERM) stops the pipeline the way Ctrl-C does: with a message and the resume command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise StageInterrupted("SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_stages(stages: Sequence[Stage], ctx: Context, start_from: str | None = None,
               skip: Sequence[str] = ()) -> dict[str, str]:
    """Run ``stages`` in order; returns {stage: "skipped" | "done" | "left out"}.

    Raises ScratchError naming the failed stage, the reason and the resume command; StageInterrupted
    (after printing the resume command) when stopped by Ctrl-C or SIGTERM.
    """
    names = [s.name for s in stages]
    if start_from is not None and start_from not in names:
        raise ScratchError(f"--from: unknown stage {start_from!r}", f"stages, in order: {', '.join(names)}")
    state = ctx.run_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    if start_from is not None:
        for s in stages[names.index(start_from):]:
            _clear(ctx, s.name)

    outcome: dict[str, str] = {}
    previous = ""
    for stage in stages:
        # A left-out stage is part of the chain too: bringing it back reruns everything after it.
        fp = fingerprint(stage.name, "left out" if stage.name in skip else ctx.tables.get(stage.name), previous)
        previous = fp
        if stage.name in skip:
            outcome[stage.name] = "left out"
            ctx.log(f"[pipeline] {stage.name}: left out (skip)")
            continue
        marker = ctx.done(stage.name)
        if marker is not None and marker.get("fingerprint") == fp:
            try:
                stage.verify(ctx)
            except ScratchError as e:
                ctx.log(f"[pipeline] {stage.name}: outputs no longer valid ({e.message}); running it again")
            else:
                outcome[stage.name] = "skipped"
                ctx.log(f"[pipeline] {stage.name}: complete, skipped ({marker.get('seconds', 0):.1f}s last time)")
                continue
        _run_one(stage, ctx, fp)
        outcome[stage.name] = "done"
    return outcome


def _clear(ctx: Context, name: str) -> None:
    for suffix in ("done", "started"):
        (ctx.run_dir / STATE_DIR / f"{name}.{suffix}.json").unlink(missing_ok=True)
    shutil.rmtree(ctx.dir(name), ignore_errors=True)


def _run_one(stage: Stage, ctx: Context, fp: str) -> None:
    state = ctx.run_dir / STATE_DIR
    (state / f"{stage.name}.done.json").unlink(missing_ok=True)
    started = read_json(state / f"{stage.name}.started.json")
    if started is not None and started.get("fingerprint") != fp:
        ctx.log(f"[pipeline] {stage.name}: config or inputs changed since the last attempt; starting it afresh")
        shutil.rmtree(ctx.dir(stage.name), ignore_errors=True)
    elif started is not None and ctx.dir(stage.name).exists():
        ctx.log(f"[pipeline] {stage.name}: resuming an interrupted attempt")
    atomic_write_text(state / f"{stage.name}.started.json",
                      json.dumps({"fingerprint": fp, "started": _timestamp()}) + "\n")
    ctx.dir(stage.name).mkdir(parents=True, exist_ok=True)
    ctx.log(f"[pipeline] {stage.name}: running{' - ' + stage.description if stage.description else ''}")
    t0 = time.perf_counter()
    try:
        with _sigterm_as_interrupt(), MemoryMonitor() as mem:
            summary = stage.run(ctx) or {}
            stage.verify(ctx)
    except (KeyboardInterrupt, StageInterrupted) as e:
        ctx.log(f"[pipeline] {stage.name}: interrupted ({e or 'Ctrl-C'}); completed stages and checkpoints are kept")
        ctx.log(f"resume with: {ctx.resume_command}")
        raise StageInterrupted(stage.name) from None
    except ScratchError as e:
        raise ScratchError(
            f"stage {stage.name!r} failed: {e.message}",
            f"{e.hint + '; then ' if e.hint else 'fix the cause, then '}resume with: {ctx.resume_command}",
        ) from e
    except Exception as e:  # noqa: BLE001 - any failure must name the stage and the resume command
        if is_disk_full(e):  # a write path of the stage's that does not say it itself
            raise ScratchError(f"stage {stage.name!r} failed: disk full while writing {e.filename or 'a file'}",
                               f"free disk space (df -h), then resume with: {ctx.resume_command}") from e
        log = ctx.run_dir / LOG_FILE
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"--- {_timestamp()} stage {stage.name} failed\n{traceback.format_exc()}\n")
        raise ScratchError(
            f"stage {stage.name!r} failed: {type(e).__name__}: {e}",
            f"the traceback is in {log}; fix the cause, then resume with: {ctx.resume_command}",
        ) from e
    seconds = time.perf_counter() - t0
    marker = {
        "stage": stage.name, "fingerprint": fp, "finished": _timestamp(), "seconds": seconds,
        "peak_rss_mb": mem.peak_mb, "peak_cuda_mb": mem.cuda_peak_mb, "summary": summary,
    }
    atomic_write_text(state / f"{stage.name}.done.json", json.dumps(marker, indent=1, default=str) + "\n")
    ctx.log(f"[pipeline] {stage.name}: done in {seconds:.1f}s (peak RSS {mem.peak_mb:,.0f} MB)")


def resume_command(config: str | None, overrides: Sequence[str]) -> str:
    parts = ["scratchllm", "pipeline"] + (["--config", config] if config else []) + list(overrides)
    return shlex.join(parts)
