"""End to end on the micro preset: SIGKILL mid-training, resume, then check every artefact of every stage."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratchllm.cli import main
from scratchllm.pipeline.runner import STATE_DIR

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_checkpoint(proc: subprocess.Popen, ckpts: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((p / "checksums.json").exists() for p in ckpts.glob("step_*")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the pipeline exited ({proc.returncode}) before writing a checkpoint:\n{proc.stdout.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint within the timeout")


@pytest.mark.slow
def test_micro_pipeline_killed_resumed_and_every_artefact_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    args = ["pipeline", "--config", "configs/pipeline/micro.toml", f"run_dir={run_dir}"]

    # 1. kill -9 the pipeline as soon as pre-training has written its first checkpoint.
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_checkpoint(proc, run_dir / "pretrain" / "checkpoints")
    finally:
        proc.kill()
        proc.wait()
    state = run_dir / STATE_DIR
    assert (state / "tokenizer.done.json").exists() and (state / "data.done.json").exists()
    assert not (state / "pretrain.done.json").exists()

    # 2. Rerun: the finished stages are skipped, training continues from its checkpoint.
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "tokenizer: complete, skipped" in err and "data: complete, skipped" in err
    assert re.search(r"train: resuming at step \d+", err), err
    assert f"no checkpoint in {run_dir / 'pretrain' / 'checkpoints'} yet" not in err
    check_artefacts(run_dir, pretrain_steps=20)

    # 4. A rerun does nothing; --from report redoes only the report.
    check_rerun_and_from(args, capsys)


def test_micro_pipeline_every_artefact(tmp_path, capsys, monkeypatch):
    """The default-suite version: one uninterrupted run with fewer steps."""
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    args = ["pipeline", "--config", "configs/pipeline/micro.toml", f"run_dir={run_dir}", "pretrain.train.max_steps=10",
            "sft.train.max_steps=4", "dpo.train.max_steps=2", "pretrain.eval.interval=5"]
    monkeypatch.setenv("SCRATCHLLM_API_KEY", "sk-for-a-deployment")  # the serve stage's own server ignores it
    old_umask = os.umask(0o022)  # the usual umask, whatever the test runner's is
    try:
        assert main(args) == 0
    finally:
        os.umask(old_umask)
    check_readable_by_others(run_dir)
    check_artefacts(run_dir, pretrain_steps=10)
    check_rerun_and_from(args, capsys)


# The gpu-125m preset's own stage settings (bf16 autocast, torch.compile, WSD, grad accumulation, the
# hellaswag/arc eval tasks), with only the sizes shrunk and the device moved to the CPU.
GPU_PRESET_ON_CPU = [
    "device=cpu", "threads=1", "tokenizer.tokenizer.vocab_size=300", "tokenizer.corpus.max_bytes_per_domain=40000",
    'data.sources=[{kind="embedded", domains=["prose","code"], max_bytes_per_domain=60000}]',
    "pretrain.model={d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=96, context_length=64}",
    "pretrain.data.seq_len=64", "pretrain.train.batch_size=2", "pretrain.train.grad_accum=2",
    "pretrain.train.max_steps=4", "pretrain.schedule.warmup_steps=1", "pretrain.eval.interval=2",
    "pretrain.eval.batches=1", "pretrain.checkpoint.interval=2",
    "sft.train.max_steps=3", "sft.data.n_train=16", "sft.data.n_heldout=4", "sft.data.overflow=truncate",
    "sft.data.system_prompt=false",  # a 64-token context: no room for the system message
    "sft.eval.interval=3", "sft.eval.batches=1", "sft.eval.max_new_tokens=2",
    "dpo.train.max_steps=2", "dpo.data.n_train=8", "dpo.data.n_heldout=4", "dpo.train.batch_size=2",
    "dpo.rollout.max_new_tokens=2", "dpo.rollout.eval_max_new_tokens=2",
    "eval.heldout_documents=4", "eval.baseline_train_tokens=5000", "eval.limit=4", "serve.max_tokens=4",
]


@pytest.mark.slow
def test_gpu_preset_runs_every_stage_on_cpu_when_shrunk(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    assert main(["pipeline", "--config", "configs/pipeline/gpu-125m.toml", f"run_dir={run_dir}",
                 *GPU_PRESET_ON_CPU]) == 0
    resolved = json.loads((run_dir / "resolved.json").read_text())["pretrain"]
    assert resolved["train"]["precision"] == "bf16" and resolved["train"]["compile"] is True
    assert resolved["schedule"]["kind"] == "wsd"
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert {"heldout", "hellaswag", "arc"} <= set(summary["models"]["pretrain"]["tasks"])
    assert (run_dir / "serve" / "check.json").exists() and (run_dir / "report" / "report.html").exists()


def check_artefacts(run_dir: Path, pretrain_steps: int) -> None:
    state = run_dir / STATE_DIR

    # 3. Every artefact.
    from scratchllm.corpus.shards import load_manifest, verify
    from scratchllm.tokenizer import Tokenizer
    from scratchllm.train.checkpoint import latest_checkpoint, verify_checkpoint

    tok = Tokenizer.load(run_dir / "tokenizer")
    assert tok.decode(tok.encode("def f(x): return x + 1")) == "def f(x): return x + 1"
    assert verify(run_dir / "data") == []
    _, manifest = load_manifest(run_dir / "data")
    assert manifest["splits"]["train"]["tokens"] > 0 and manifest["splits"]["val"]["tokens"] > 0
    ckpt = latest_checkpoint(run_dir / "pretrain" / "checkpoints")
    assert ckpt.name == f"step_{pretrain_steps:06d}"
    verify_checkpoint(ckpt)
    rows = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    # No duplicated or missing steps after a resume.
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(5, pretrain_steps + 1, 5))

    from scratchllm.model.model import Transformer

    ablation = json.loads((state / "ablation.done.json").read_text())["summary"]
    assert list(ablation["schemes"]) == ["rope", "learned"]
    assert all(math.isfinite(v["final_val_loss"]) for v in ablation["schemes"].values())
    learned = Transformer.from_pretrained(latest_checkpoint(run_dir / "ablation" / "learned" / "checkpoints"))
    assert learned.cfg.pos_emb == "learned" and learned.cfg.d_model == Transformer.from_pretrained(ckpt).cfg.d_model


    sft = json.loads((state / "sft.done.json").read_text())["summary"]
    assert 0 < sft["trainable_params"] < sft["total_params"]  # LoRA: only the adapters train
    assert (run_dir / "sft" / "adapter" / "adapter.safetensors").exists()
    assert json.loads((run_dir / "sft" / "peft_adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    base = Transformer.from_pretrained(ckpt)
    tuned = Transformer.from_pretrained(run_dir / "sft" / "model")
    aligned = Transformer.from_pretrained(run_dir / "dpo" / "model")
    assert base.cfg == tuned.cfg == aligned.cfg
    w = "layers.0.attn.q_proj.weight"
    assert not base.state_dict()[w].equal(tuned.state_dict()[w])  # the merged adapter changed the weights
    assert not tuned.state_dict()[w].equal(aligned.state_dict()[w])

    compared = json.loads((run_dir / "align_compare" / "compare.json").read_text())["results"]
    assert list(compared) == ["sft", "dpo", "ppo-checkable", "ppo-model", "grpo-checkable", "grpo-model",
                              "rloo-checkable", "rloo-model"]
    assert all(math.isfinite(r["kl"]) and 0 <= r["task_accuracy"] <= 1 for r in compared.values())
    assert base.cfg == Transformer.from_pretrained(run_dir / "align_compare" / "ppo-model" / "model").cfg

    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert list(summary["models"]) == ["pretrain", "sft", "dpo"]
    held = summary["models"]["pretrain"]["tasks"]["heldout"]
    assert math.isfinite(held["token_perplexity"]) and 1 < held["token_perplexity"] < tok.vocab_size
    assert set(summary["baselines"]) == {"unigram", "bigram", "kneser_ney_3"}
    # Witten-Bell bigram and KN trigram beat add-one unigram on held-out text, as they must.
    ppl = {k: v["token_perplexity"] for k, v in summary["baselines"].items()}
    assert ppl["kneser_ney_3"] < ppl["unigram"] and ppl["bigram"] < ppl["unigram"]
    assert (run_dir / "eval" / "pretrain" / "results.json").exists()
    for label in ("pretrain", "sft", "dpo"):
        assert [s["prompt"] for s in summary["samples"][label]] == ["The ", "What is 2+3?"]
        assert (run_dir / "eval" / label / "results.json").exists()

    quant = json.loads((state / "quantize.done.json").read_text())["summary"]
    assert quant["mode"] == "int8" and quant["quantized_weight_bytes"] < quant["dense_weight_bytes"]
    assert json.loads((run_dir / "quantize" / "quantization.json").read_text())["mode"] == "int8"
    # INT8 per-channel weights barely move held-out perplexity.
    assert abs(quant["heldout_ppl_quantized"] / quant["heldout_ppl_dense"] - 1) < 0.05

    served = json.loads((run_dir / "serve" / "check.json").read_text())
    assert served["model_dir"] == str(run_dir / "quantize") and served["models"] == ["scratchllm"]
    assert served["completion"]["usage"]["completion_tokens"] >= 1  # a real completion, via the openai client
    assert served["completion"]["finish_reason"] in ("length", "stop")
    assert isinstance(served["chat"]["text"], str)
    log = (run_dir / "serve" / "server.log").read_text()
    assert '"path": "/v1/completions", "status": 200' in log

    export = json.loads((state / "export_hf.done.json").read_text())["summary"]
    assert export["max_logit_diff"] < 1e-3
    assert json.loads((run_dir / "export_hf" / "config.json").read_text())["model_type"] == "llama"

    report = (run_dir / "report" / "report.md").read_text()
    for heading in ("Held-out perplexity against n-gram baselines", "Training", "Sample generations",
                    "Position-scheme ablation", "Alignment methods compared",
                    "Quantized export", "Hugging Face export", "Served completion (openai client)",
                    "Post-mortem", "Reproduce"):
        assert f"## {heading}" in report
    assert "kneser_ney_3" in report and "git commit" in report
    assert re.search(r"Decontamination: [\d,]+ training documents checked for 13-gram overlap", report)
    for png in re.findall(r"\]\((\w+\.png)\)", report):
        assert (run_dir / "report" / png).read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (run_dir / "report" / "report.html").read_text()


def check_readable_by_others(run_dir: Path) -> None:
    """Under umask 022 every file is o+r and every folder o+rx, as with plain open() and mkdir: a model
    directory mounted into a container that runs as another user (or a shared volume) must be readable."""
    unreadable = []
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            p = Path(folder) / name
            need = stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0)
            if stat.S_IMODE(p.lstat().st_mode) & need != need:
                unreadable.append(f"{p.relative_to(run_dir)} {stat.filemode(p.lstat().st_mode)}")
    assert not unreadable, "not readable by other users:\n" + "\n".join(unreadable)
    assert (run_dir / "quantize" / "quantization.json").is_file()  # the file the container failed to read


def check_rerun_and_from(args: list[str], capsys) -> None:
    capsys.readouterr()
    state = Path(args[3].partition("=")[2]) / STATE_DIR
    assert main(args) == 0
    assert "running" not in capsys.readouterr().err
    before = (state / "eval.done.json").read_text()
    assert main([*args, "--from", "report"]) == 0
    err = capsys.readouterr().err
    assert "report: running" in err and "eval: complete, skipped" in err
    assert (state / "eval.done.json").read_text() == before
    # quantize scores the held-out task itself: it must not rely on the eval stage having written it
    # (eval can be skipped), so without eval's copy a quantize rerun still works.
    shutil.rmtree(state.parent / "eval" / "heldout")
    assert main([*args, "--from", "quantize"]) == 0
    assert "quantize: running" in capsys.readouterr().err
    assert (state.parent / "eval" / "heldout" / "task.toml").is_file()


def test_stage_failure_names_stage_and_resume_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["pipeline", "--config", "configs/pipeline/micro.toml", f"run_dir={tmp_path}",
            "data.sources=[{kind='files', domain='prose', paths=['/nonexistent/corpus/*.txt']}]",
            "data.mix.weights={prose=1.0}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: stage 'tokenizer' failed: input glob" in err and "matches no files" in err
    assert "resume with: scratchllm pipeline --config configs/pipeline/micro.toml" in err
    assert "data.sources=" in err  # the resume command repeats the overrides
