"""One run per output directory: an exclusive ``flock`` on ``<out_dir>/.lock``.

Two processes training into one directory (a second ``--resume`` while the first still runs, or
workers left behind by a killed ``torchrun`` launcher) would both write checkpoints and metrics and
lose each other's. The lock file records the holder's PID and host for the message; the lock itself
is the kernel's, so it goes away with its process however that ends (even SIGKILL), and a stale
file from a dead run never blocks anything. Within one process the lock is re-entrant (counted),
so stages run in-process one after another (the pipeline, tests) share it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from scratchllm.errors import ScratchError

LOCK_FILE = ".lock"
_held: dict[str, list[int]] = {}  # real path -> [fd, count] for locks this process holds


def holder(out_dir: str | os.PathLike[str]) -> dict:
    """What the lock file says about its holder ({} when unreadable); informative only."""
    try:
        return json.loads((Path(out_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def acquire(out_dir: str | os.PathLike[str]) -> Path:
    """Lock ``out_dir`` for this process, or raise a ScratchError naming the process holding it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out_dir)
    if key in _held:
        _held[key][1] += 1
        return out_dir / LOCK_FILE
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        h = holder(out_dir)
        who = (f"process {h.get('pid', '?')} on host {h.get('host', '?')} (started {h.get('started', '?')})"
               if h else "another process")
        same_host = h.get("host") == socket.gethostname()
        raise ScratchError(
            f"{out_dir} is in use by another run: {who} holds {out_dir / LOCK_FILE}",
            "wait for that run to finish, or stop it"
            + (f" (kill {h['pid']}; it saves a checkpoint on SIGTERM)" if same_host and "pid" in h else "")
            + ", then continue with --resume; or use another out_dir=...",
        ) from None
    except OSError as e:  # a filesystem without flock: run unlocked rather than not at all
        os.close(fd)

        print(f"note: cannot lock {out_dir} ({e}); make sure no other run writes there", file=sys.stderr)
        return out_dir / LOCK_FILE
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    _held[key] = [fd, 1]
    return out_dir / LOCK_FILE


def release(out_dir: str | os.PathLike[str]) -> None:
    """Undo one ``acquire``; the last one unlocks (the file stays: its content is only a note)."""
    key = os.path.realpath(out_dir)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        os.close(entry[0])  # closing the descriptor releases the flock
