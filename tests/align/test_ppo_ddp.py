"""PPO under DDP: 2 gloo processes launched by torchrun train exactly as one process on the same global batch.

Each rank samples its contiguous share of a rollout with the seeds one process gives those rows, the
rollout is gathered (KL, whitening and GAE over all of it), and each global minibatch is split between
the ranks with its loss weighted by the global token count, so the update is the single-process one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchllm.align.config import PPOConfig
from scratchllm.config import load_config, to_toml
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ppo_cfg(sft_dirs, tmp_path):
    def make(name: str, *overrides: str) -> PPOConfig:
        return load_config(PPOConfig, ROOT / "configs/align/ppo.toml", [
            f'out_dir="{tmp_path / name}"', f'models.policy="{sft_dirs["policy"]}"',
            f'models.tokenizer="{sft_dirs["tokenizer"]}"', "train.device=cpu", "train.num_threads=1",
            "log.progress=false", "log.interval=1", "eval.interval=0", "rollout.prompts_per_step=8",
            "rollout.max_new_tokens=6",            "rollout.eval_max_new_tokens=4", "ppo.minibatch_size=4", "ppo.epochs=2", "ppo.target_kl=0.5",
            "ppo.kl_horizon=100", "optim.lr=1e-3", "schedule.warmup_steps=0", "checkpoint.interval=2",
            "checkpoint.keep_last=5", "train.parallel=ddp", *overrides])

    return make


WORKER = """
import json, sys
from scratchllm.align.config import PPOConfig
from scratchllm.align.run import run_ppo
from scratchllm.config import load_config
from scratchllm.tasks.instruct import InstructExample

config, examples, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
train, heldout = ([InstructExample(**e) for e in part] for part in json.load(open(examples)))
sys.exit(run_ppo(load_config(PPOConfig, config, []), resume=resume, examples=(train, heldout)).exit_code)
"""


def _torchrun(cfg: PPOConfig, tmp_path: Path, examples, resume: bool = False) -> str:
    """``run_ppo`` (what ``scratchllm align ppo`` runs) in 2 processes, on the parity examples."""
    preset = tmp_path / f"{Path(cfg.out_dir).name}.toml"
    preset.write_text(to_toml(cfg))
    worker, data = tmp_path / "worker.py", tmp_path / "examples.json"
    worker.write_text(WORKER)
    data.write_text(json.dumps([[{"messages": e.messages, "answer": e.answer, "kind": e.kind} for e in part]
                                for part in examples]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(worker), str(preset), str(data),
           "resume" if resume else "fresh"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr


def _assert_same_run(single: Path, ddp: Path, steps: int) -> None:
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(single / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(ddp / "checkpoints"))
    assert a.state["step"] == b.state["step"] == steps and b.state["world_size"] == 2
    assert a.model_state.keys() == b.model_state.keys()
    moved = 0.0
    for name, w in a.model_state.items():  # policy and critic
        torch.testing.assert_close(b.model_state[name], w, rtol=1e-4, atol=1e-5, msg=name)
    ra, rb = read_metrics(single, "train"), read_metrics(ddp, "train")
    assert [r["step"] for r in rb][-1] == steps
    ra = {r["step"]: r for r in ra}
    for r in rb:  # the rollout's statistics (gathered) and the minibatch diagnostics (all-reduced)
        for key in ("loss", "reward", "kl", "kl_coef", "approx_kl", "pg_loss", "vf_loss", "entropy", "clip_frac"):
            assert r[key] == pytest.approx(ra[r["step"]][key], rel=1e-3, abs=1e-5), (r["step"], key)
        moved = max(moved, abs(r["approx_kl"]))
    assert moved > 0  # the policy did move within the rollouts (the test can fail)


def test_ppo_ddp_two_processes_equal_one_process(ppo_cfg, tmp_path, parity_sets):
    from scratchllm.align.run import run_ppo

    examples = (parity_sets[0][:64], parity_sets[1][:8])
    err = _torchrun(ppo_cfg("ddp", "train.max_steps=6"), tmp_path, examples)
    assert "2 x cpu (ddp)" in err and err.count("held-out before") == 1  # rank 0 alone measures and logs
    result = run_ppo(ppo_cfg("single", "train.max_steps=6"), examples=examples)
    assert result.exit_code == 0
    report = result.metrics
    _assert_same_run(tmp_path / "single", tmp_path / "ddp", 6)
    assert (tmp_path / "ddp" / "model").is_dir()
    ddp_report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert ddp_report["generated_tokens"] == report["generated_tokens"] > 0  # both ranks' replies counted


@pytest.mark.slow
def test_ppo_ddp_with_lora_and_a_shared_value_head(ppo_cfg, tmp_path, parity_sets):
    """LoRA adapters on the policy (frozen base weights under DDP) and the value head on the policy."""
    from scratchllm.align.run import run_ppo

    examples = (parity_sets[0][:64], parity_sets[1][:8])
    extra = ("train.max_steps=4", "ppo.lora=true", "lora.r=2", "ppo.value_model=shared")
    _torchrun(ppo_cfg("ddp", *extra), tmp_path, examples)
    run_ppo(ppo_cfg("single", *extra), examples=examples)
    _assert_same_run(tmp_path / "single", tmp_path / "ddp", 4)


@pytest.mark.slow
def test_ppo_ddp_resumes_exactly_in_the_middle_of_a_rollout(ppo_cfg, tmp_path, parity_sets):
    """Stopped after step 2 of a rollout's 4 minibatch steps, resumed under DDP: the uninterrupted run's weights."""
    from scratchllm.align.run import run_ppo

    examples = (parity_sets[0][:64], parity_sets[1][:8])
    _torchrun(ppo_cfg("ddp", "train.max_steps=2"), tmp_path, examples)
    # constant lr: the longer run has the same schedule
    _torchrun(ppo_cfg("ddp", "train.max_steps=6", "train.allow_schedule_change=true"), tmp_path, examples,
              resume=True)
    run_ppo(ppo_cfg("single", "train.max_steps=6"), examples=examples)
    _assert_same_run(tmp_path / "single", tmp_path / "ddp", 6)


def test_ppo_ddp_shares_must_divide(make_model, tokenizer, parity_sets):
    from types import SimpleNamespace

    from scratchllm.align.grpo import checkable_reward
    from scratchllm.align.ppo import ActorCritic, PPORolloutSource
    from scratchllm.errors import ScratchError
    from scratchllm.train.parallel import Dist

    model = make_model()
    rollout = SimpleNamespace(prompts_per_step=6)
    cfg = SimpleNamespace(minibatch_size=3, kl_coef=0.05, target_kl=0.0, kl_horizon=100)
    with pytest.raises(ScratchError, match="multiples of 4"):
        PPORolloutSource(ActorCritic(model, None), model, tokenizer, parity_sets[0], checkable_reward, rollout, cfg,
                         0, Dist(0, 4))
