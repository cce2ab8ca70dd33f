"""Under CI=true a test skipped for a missing library fails the run; other skips stay skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = '''
import pytest

def test_reference():
    pytest.importorskip("scratchllm_no_such_reference_library")

def test_reference_with_reason():
    pytest.importorskip("scratchllm_no_such_reference_library", reason="a custom reason")

def test_no_gpu():
    pytest.skip("needs a GPU")
'''

MODULE_LEVEL = '''
import pytest

mod = pytest.importorskip("scratchllm_no_such_module_level_library", reason="a custom reason")

def test_never_runs():
    pass
'''


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_library_fails_only_under_ci(tmp_path, ci):
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(TESTS)
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    env = {**os.environ, "CI": ci}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                        "--continue-on-collection-errors", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if ci:  # both reference tests fail, the module-level one fails collection, "no GPU" stays a skip
        assert r.returncode != 0, r.stdout
        assert "2 failed, 1 skipped, 1 error" in r.stdout, r.stdout
        assert "scratchllm_no_such_module_level_library" in r.stdout and "CI=true" in r.stdout
    else:
        assert r.returncode == 0 and "4 skipped" in r.stdout, r.stdout
