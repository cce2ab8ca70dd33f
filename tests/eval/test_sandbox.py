"""The code sandbox: candidates run in a separate limited process and cannot escape by accident."""

from __future__ import annotations

import os

import pytest

from scratchllm.eval.sandbox import run_many, run_python
from scratchllm.tasks.specs import get_path, resolve_tasks, task_records


def test_correct_solution_passes():
    r = run_python("def f(x):\n    return 2 * x\n\nassert f(3) == 6\nprint('ok')\n")
    assert r.passed and r.output.strip() == "ok"


def test_failing_assertion_fails():
    r = run_python("assert 1 == 2, 'wrong'\n")
    assert r.status == "failed" and "AssertionError: wrong" in r.output


def test_infinite_loop_is_killed():
    # How fast the kill comes is measured in benchmarks/eval.py; here only that it comes.
    r = run_python("while True:\n    pass\n", timeout=1.5)
    assert r.status == "timeout"


def test_sleeping_forever_is_killed_by_the_wall_clock():
    r = run_python("import time\ntime.sleep(1000)\n", timeout=1.0)
    assert r.status == "timeout"


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()\n",
    "import subprocess\nsubprocess.run(['sleep', '100'])\n",
    "import os\nos.system('sleep 100')\n",
    "import multiprocessing as mp\nmp.Process(target=print).start()\n",
    "import os\nos.execv('/bin/sh', ['sh'])\n",
])
def test_fork_bomb_and_process_creation_are_blocked(code):
    r = run_python(code, timeout=5)
    assert r.status == "failed" and "sandbox:" in r.output


def test_write_outside_the_temp_dir_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    code = (f"open({str(target)!r}, 'w').write('x')\n")
    r = run_python(code)
    assert r.status == "failed" and "outside the sandbox" in r.output
    assert not target.exists()
    r = run_python(f"import os\nos.remove({str(tmp_path)!r})\n")
    assert r.status == "failed" and "outside the sandbox" in r.output
    assert tmp_path.exists()


def test_writes_inside_the_temp_dir_are_allowed():
    r = run_python("import os\nopen('scratch.txt', 'w').write('hi')\nos.remove('scratch.txt')\nprint(os.getcwd())\n")
    assert r.passed
    assert not os.path.exists(r.output.strip())  # the temp dir is removed afterwards


def test_memory_hog_is_stopped():
    r = run_python("x = bytearray(8 * 1024 ** 3)\n", memory_mb=256)
    assert r.status in ("failed", "killed") and ("MemoryError" in r.output or r.status == "killed")


def test_network_and_ctypes_are_blocked():
    assert "sandbox:" in run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))\n").output
    assert "sandbox:" in run_python("import ctypes\n").output


def test_sys_exit_before_the_tests_does_not_pass():
    r = run_python("import sys\nsys.exit(0)\nassert False\n")
    assert not r.passed and "sys.exit" in r.output


def test_output_flood_is_capped():
    r = run_python("while True:\n    print('x' * 1000)\n", timeout=5)
    assert not r.passed and len(r.output) < 10_000


def test_embedded_humaneval_canonical_solutions_pass_and_empty_ones_fail():
    (spec,) = resolve_tasks(["humaneval"])
    records = task_records(spec)
    good = [get_path(r, "prompt") + get_path(r, "canonical_solution") + "\n\n" + get_path(r, "test")
            + f"\n\ncheck({get_path(r, 'entry_point')})\n" for r in records]
    bad = [get_path(r, "prompt") + "    return None\n\n" + get_path(r, "test")
           + f"\n\ncheck({get_path(r, 'entry_point')})\n" for r in records]
    results = run_many(good + bad, timeout=10, workers=2)
    assert [r.status for r in results[: len(good)]] == ["passed"] * len(good), [r.output for r in results if not r.passed]
    assert not any(r.passed for r in results[len(good):])
