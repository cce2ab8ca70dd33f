"""2 processes with gloo on CPU, launched by torchrun exactly as a user would."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from scratchllm.config import to_toml
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.parallel import Dist
from scratchllm.train.pretrain import build_trainer
from scratchllm.train.tracking import read_metrics

B = 4  # per-process micro-batch; the single-process reference uses 2 * B


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(preset, *extra, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "scratchllm", "train",
           "--config", str(preset), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def final_weights(out_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(out_dir / "checkpoints")).model_state


def reference(make_cfg, tmp_path, *common):
    """The same global batch in one process: batch 2B, run in this process."""
    cfg = make_cfg(*common, f"train.batch_size={2 * B}", out=tmp_path / "single")
    build_trainer(cfg, Dist()).fit()
    return cfg.out_dir


def write_preset(make_cfg, tmp_path, name, *common):
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(make_cfg(*common, f"train.batch_size={B}", out=tmp_path / name)))
    return path


COMMON = ("train.max_steps=4", "train.grad_accum=2", "checkpoint.interval=2", "eval.batches=0", "optim.grad_clip=0.5")


def assert_same_training(dir_a, dir_b, rtol=1e-5, atol=1e-6, steps=4):
    wa, wb = final_weights(dir_a), final_weights(dir_b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=rtol, atol=atol, msg=name)
    la = [r["loss"] for r in read_metrics(dir_a, "train")]
    lb = [r["loss"] for r in read_metrics(dir_b, "train")]
    assert len(la) == steps
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-5, atol=1e-6)


def test_ddp_two_processes_equal_one_process_with_the_global_batch(make_cfg, tmp_path):
    preset = write_preset(make_cfg, tmp_path, "ddp", *COMMON, "train.parallel=ddp")
    result = torchrun(preset)
    assert "on 2 x cpu (ddp)" in result.stderr
    assert result.stderr.count("train: starting") == 1  # rank 0 alone logs
    single = reference(make_cfg, tmp_path, *COMMON)
    assert_same_training(single, tmp_path / "ddp")
    # only rank 0 wrote: one metrics file, checkpoints in the single-process format
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "ddp" / "checkpoints")] == [2, 4]
    assert ckpt.load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step_000004").state["world_size"] == 2


def test_fsdp2_two_processes_equal_one_process(make_cfg, tmp_path):
    """The fast FSDP2 check of the default run (the slow test below adds checkpoints and resume)."""
    common = ("train.max_steps=2", "train.grad_accum=2", "checkpoint.interval=0", "eval.batches=0",
              "optim.grad_clip=0.5")
    preset = write_preset(make_cfg, tmp_path, "fsdp", *common, "train.parallel=fsdp")
    assert "on 2 x cpu (fsdp)" in torchrun(preset).stderr
    assert_same_training(reference(make_cfg, tmp_path, *common), tmp_path / "fsdp", steps=2)


@pytest.mark.slow
def test_fsdp2_trains_checkpoints_and_resumes(make_cfg, tmp_path):
    preset = write_preset(make_cfg, tmp_path, "fsdp", *COMMON, "train.parallel=fsdp")
    result = torchrun(preset)
    assert "(fsdp)" in result.stderr
    single = reference(make_cfg, tmp_path, *COMMON)
    assert_same_training(single, tmp_path / "fsdp")  # FSDP2 computes the same steps

    # Resume from step 2 in a fresh out_dir: steps 3-4 repeat the uninterrupted FSDP run exactly.
    assert_resume_from_step2_repeats(preset, tmp_path / "fsdp")



def assert_resume_from_step2_repeats(preset, run_dir):
    """Resume from run_dir's step-2 checkpoint in a fresh out_dir: the later steps' losses and the final
    weights equal the uninterrupted run's, bit for bit."""
    resumed = run_dir.with_name(run_dir.name + "_resumed")
    shutil.copytree(run_dir / "checkpoints" / "step_000002", resumed / "checkpoints" / "step_000002")
    torchrun(preset, f'out_dir="{resumed}"', "--resume")
    full = [(r["step"], r["loss"]) for r in read_metrics(run_dir, "train")]
    assert [(r["step"], r["loss"]) for r in read_metrics(resumed, "train")] == full[2:]
    a, b = final_weights(run_dir), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fsdp2_muon_resumes_exactly(make_cfg, tmp_path):
    """FSDP2 + Muon: the momentum buffers and AdamW moments are sharded DTensors in the optimizer and
    whole tensors in the checkpoint; a run resumed from step 2 repeats the uninterrupted one bit for bit."""
    preset = write_preset(make_cfg, tmp_path, "fsdp", *COMMON, *MUON, "train.parallel=fsdp")
    torchrun(preset)
    state = ckpt.load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "step_000002").optim_state["state"]
    bufs = [v["momentum_buffer"] for v in state.values() if "momentum_buffer" in v]
    assert len(bufs) == 7 * 2 and all(b.ndim == 2 and b.abs().sum() > 0 for b in bufs)  # whole, trained matrices
    assert_resume_from_step2_repeats(preset, tmp_path / "fsdp")

DYING_RANK = """
import os, signal, sys
from scratchllm.cli import main
from scratchllm.train.loop import Trainer
step = Trainer.accumulate_gradients
def dying(self, batches):
    if self.dist.rank == 1 and self.step + 1 == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batches)
Trainer.accumulate_gradients = dying
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_dead_rank_is_named_with_the_torchrun_resume_command(make_cfg, tmp_path):
    preset = write_preset(make_cfg, tmp_path, "ddp", *COMMON, "train.max_steps=50", "checkpoint.interval=2",
                          "train.parallel=ddp")
    script = tmp_path / "dying.py"
    script.write_text(DYING_RANK)
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(script), "train", "--config", str(preset)]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "rank 0 lost its peers during step 3" in out and "rank 1 (pid" in out, out
    assert "internal error" not in out
    assert f"--master_port={port} {script} train --config {preset} --resume" in out, out


# fp32 Newton-Schulz: in bf16 a last-bit difference between the all-reduced and the single-process
# gradient can flip a rounding and the comparison would test bf16, not the distribution.
MUON = ("optim.name=muon", "optim.muon_lr=0.02", 'optim.muon_ns_dtype="fp32"')


@pytest.mark.parametrize("parallel", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp"])
def test_muon_two_processes_equal_one_process(make_cfg, tmp_path, parallel):
    """Muon under DDP (whole matrices everywhere) and FSDP2 (each shard's update is all-gathered for
    Newton-Schulz): 2 gloo processes give the parameters of one process on the same global batch."""
    common = ("train.max_steps=3", "train.grad_accum=1", "checkpoint.interval=0", "eval.batches=0",
              "optim.grad_clip=0.5", *MUON)
    preset = write_preset(make_cfg, tmp_path, parallel, *common, f"train.parallel={parallel}")
    assert f"on 2 x cpu ({parallel})" in torchrun(preset).stderr
    assert_same_training(reference(make_cfg, tmp_path, *common), tmp_path / parallel, steps=3, rtol=1e-4, atol=1e-5)
