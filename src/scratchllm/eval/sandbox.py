"""Run generated Python in a separate, limited process (never in the evaluator's own process).

Each candidate runs in a fresh temporary directory as ``python -I -B guard.py`` in its own session
(process group). Layers of protection:

* wall-clock timeout: the whole process group is killed with SIGKILL;
* resource limits set in the child before the candidate starts: CPU seconds (RLIMIT_CPU), address
  space (RLIMIT_AS), file size (RLIMIT_FSIZE, which also caps the captured output) and process count
  (RLIMIT_NPROC; the kernel does not apply it to root);
* an audit hook (``sys.addaudithook``, installed before the candidate's code is compiled) that
  blocks creating processes (fork, exec, spawn, subprocess, os.system), sockets, ctypes, changing
  resource limits, and opening files for writing or changing files outside the temporary directory.

The limits are set inside the child rather than in ``preexec_fn``, which is unsafe in a process with
threads (torch has thread pools). This is a guard against accidents and sloppy model output, as in
the HumanEval harness, not a security boundary against deliberately malicious code: run untrusted
models' code inside a container or VM as well.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

# The child's entry point. argv: sandbox_dir, candidate_file, limits as JSON.
GUARD = r'''
import os, resource, sys, json
sandbox, candidate, limits = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass

_limit(resource.RLIMIT_CPU, limits["cpu_seconds"])
_limit(resource.RLIMIT_AS, limits["memory_bytes"])
_limit(resource.RLIMIT_FSIZE, limits["file_bytes"])
_limit(resource.RLIMIT_NPROC, limits["nproc"])
_limit(resource.RLIMIT_CORE, 0)

_root = os.path.realpath(sandbox)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_BLOCKED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
            "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
            "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "resource.setrlimit", "resource.prlimit",
            "os.chroot"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                "os.link", "os.symlink", "os.utime", "os.chflags", "os.lchflags", "os.setxattr",
                "os.removexattr", "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copytree",
                "os.replace", "os.mkfifo", "os.mknod"}

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return p == _root or p.startswith(_root + os.sep)

def _hook(event, args):
    if event in _BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the sandbox directory is not allowed: {path}")
    elif event in _PATH_EVENTS:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        for p in paths[:2]:
            if not _inside(p):
                raise PermissionError(f"sandbox: {event} outside the sandbox directory is not allowed: {p}")

with open(candidate, encoding="utf-8") as f:
    source = f.read()
sys.addaudithook(_hook)
code = compile(source, "candidate.py", "exec")
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as e:  # sys.exit() before the tests ran must not count as passing
    print(f"[sandbox] the program called sys.exit({e.code!r})", file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)
'''


@dataclass(frozen=True)
class ExecResult:
    """``status``: passed, failed (exception / non-zero exit), timeout, or killed (a limit's signal)."""

    status: str
    returncode: int | None
    output: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
) -> ExecResult:
    """Run ``code`` as a script in the sandbox; passed means exit status 0 within the limits."""
    workdir = tempfile.mkdtemp(prefix="scratchllm-sandbox-")
    try:
        candidate = os.path.join(workdir, "candidate.py")
        with open(candidate, "w", encoding="utf-8") as f:
            f.write(code)
        limits = {
            "cpu_seconds": max(1, int(timeout + 1)),
            "memory_bytes": memory_mb * 1024 * 1024,
            "file_bytes": max_output_bytes,
            "nproc": 0,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        out_path = os.path.join(workdir, "output.txt")
        start = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", GUARD, workdir, candidate, json.dumps(limits)],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = time.monotonic() - start
        with open(out_path, "rb") as f:
            output = f.read()[-4000:].decode("utf-8", errors="replace")
        rc = proc.returncode
        if timed_out:
            return ExecResult("timeout", rc, output + f"\n[sandbox] killed after {timeout:g} s wall-clock", seconds)
        if rc == 0:
            return ExecResult("passed", rc, output, seconds)
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            return ExecResult("killed", rc, output + f"\n[sandbox] killed by {name} (a resource limit)", seconds)
        return ExecResult("failed", rc, output, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(programs: Sequence[str], timeout: float = 10.0, memory_mb: int = 1024, workers: int = 2,
             progress: bool = False) -> list[ExecResult]:
    """Run several programs, ``workers`` at a time (each in its own sandbox process), in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda c: run_python(c, timeout=timeout, memory_mb=memory_mb), programs)
        return list(tqdm(results, total=len(programs), desc="sandbox", unit="prog", disable=not progress,
                         leave=False))
