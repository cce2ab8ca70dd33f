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

def test_no_gpu():
    pytest.skip("needs a GPU")
'''


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_library_fails_only_under_ci(tmp_path, ci):
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(TESTS)
    env = {**os.environ, "CI": ci}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if ci:
        assert r.returncode == 1, r.stdout
        assert "1 failed, 1 skipped" in r.stdout and "scratchllm_no_such_reference_library" in r.stdout
    else:
        assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout
