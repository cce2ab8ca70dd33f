"""SIGKILL mid-run, then --resume: the loss curve equals an uninterrupted run's, bit for bit (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from scratchllm.config import to_toml
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.tracking import read_metrics

STEPS = 40
KILL_IN = 13  # the victim SIGKILLs itself in the middle of this step (after checkpoint 10, before 15)

# The victim: the real CLI in a process that kills itself inside step KILL_IN's forward/backward -
# an exact point, where polling from outside could miss its window on a loaded machine.
VICTIM = """
import os, signal, sys
from scratchllm.cli import main
from scratchllm.train.loop import Trainer
step = Trainer.accumulate_gradients
def dying(self, batches):
    if self.step + 1 == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batches)
Trainer.accumulate_gradients = dying
sys.exit(main(sys.argv[2:]))
"""


def train_cmd(preset, *extra):
    return [sys.executable, "-m", "scratchllm", "train", "--config", str(preset), *extra]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def test_sigkill_then_resume_is_bit_identical(make_cfg, tmp_path):
    common = ("train.deterministic=true", "model.dropout=0.1", f"train.max_steps={STEPS}", "train.batch_size=16",
              "data.seq_len=64", "model.d_model=64", "checkpoint.interval=5", "eval.interval=10", "eval.batches=1")
    presets = {}
    for name in ("full", "killed"):
        presets[name] = tmp_path / f"{name}.toml"
        presets[name].write_text(to_toml(make_cfg(*common, out=tmp_path / name)))
    # Both start together (two cores); one is killed, the other runs to the end.
    full = subprocess.Popen(train_cmd(presets["full"]), env=env(), stderr=subprocess.PIPE, text=True)
    victim_cmd = [sys.executable, "-c", VICTIM, str(KILL_IN), "train", "--config", str(presets["killed"])]
    victim = subprocess.Popen(victim_cmd, env=env(), stderr=subprocess.PIPE, text=True)
    root = tmp_path / "killed" / "checkpoints"
    assert victim.wait(300) == -signal.SIGKILL, victim.stderr.read()  # killed mid-run, not finished
    assert full.wait(300) == 0, full.stderr.read()
    killed_at = ckpt.latest_checkpoint(root)
    assert killed_at.name == "step_000010"

    resumed = subprocess.run(train_cmd(presets["killed"], "--resume"), env=env(), capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {int(killed_at.name.split('_')[1])}" in resumed.stderr

    def curve(kind):
        return [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full", kind)], \
               [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "killed", kind)]

    a, b = curve("train")
    assert [s for s, _ in a] == list(range(1, STEPS + 1))
    assert a == b  # exact float equality of every step's loss
    a, b = curve("val")
    assert a == b and len(a) == STEPS // 10
