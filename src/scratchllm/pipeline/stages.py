"""The pipeline's stages: each calls its stage's Python API with paths inside the run directory.

    run_dir/tokenizer/   BPE tokenizer (ours + HF tokenizer.json)
    run_dir/data/        token shards + manifest.json
    run_dir/pretrain/    checkpoints/step_N (model dirs), metrics.jsonl, config.toml, tensorboard/
    run_dir/sft/ dpo/    the fine-tuning and alignment runs
    run_dir/eval/        held-out perplexity vs n-gram baselines, tasks, samples: summary.json + per model
    run_dir/quantize/    INT8/INT4 weights           run_dir/export_hf/   a transformers-loadable directory
    run_dir/serve/       check.json: the served completion, fetched with the openai client
    run_dir/report/      report.md, report.html and the plots

The tokenizer comes before the data stage because the data stage writes *token* shards.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scratchllm.align.compare import run as compare_run
from scratchllm.align.run import run_dpo as align_dpo
from scratchllm.config import parse_override
from scratchllm.corpus.shards import verify as verify_shards
from scratchllm.data.prepare import run as prepare_data
from scratchllm.errors import ScratchError
from scratchllm.eval.config import GenerationsConfig
from scratchllm.eval.run import run as eval_run
from scratchllm.eval.run import write_heldout_task
from scratchllm.finetune.run import run as finetune
from scratchllm.infer.load import load_model
from scratchllm.infer.quantize import QUANT_FILE
from scratchllm.infer.quantize import run as quantize_run
from scratchllm.io import atomic_write_text
from scratchllm.model.config import ExportHFConfig
from scratchllm.model.hf import run as export_run
from scratchllm.model.model import Transformer
from scratchllm.pipeline.report import write_report
from scratchllm.pipeline.runner import Context, Stage, StageInterrupted
from scratchllm.stage import StageResult
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.run import run as train_tokenizer
from scratchllm.train.checkpoint import latest_checkpoint, read_json, verify_checkpoint
from scratchllm.train.pretrain import run as pretrain

# ------------------------------------------------------------------------------------------------
# Where each model lives


def base_model_dir(ctx: Context) -> Path:
    path = latest_checkpoint(ctx.dir("pretrain") / "checkpoints")
    if path is None:
        raise ScratchError(f"no pre-training checkpoint in {ctx.dir('pretrain') / 'checkpoints'}",
                           "run the pretrain stage first")
    return path


def trained_models(ctx: Context) -> list[tuple[str, Path]]:
    """(label, model directory) of every model trained so far, in order: base, sft, dpo."""
    out = []
    for stage in ("pretrain", "sft", "dpo"):
        marker = ctx.done(stage) if stage not in ctx.cfg.skip else None  # not an old run's left-out stage
        if marker is not None and marker.get("summary", {}).get("model_dir"):
            out.append((stage, Path(marker["summary"]["model_dir"])))
    if not out:
        raise ScratchError("no trained model in this run yet", "run the pretrain stage first")
    return out


def final_model_dir(ctx: Context) -> Path:
    return trained_models(ctx)[-1][1]


def load_tokenizer(ctx: Context):
    return Tokenizer.load(ctx.dir("tokenizer"))


def _device(ctx: Context) -> str:
    if ctx.cfg.device != "auto":
        return ctx.cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _need(path: Path, what: str) -> None:
    if not path.exists():
        raise ScratchError(f"{what} missing: {path}", "the stage will be run again")


# ------------------------------------------------------------------------------------------------
# The training stages: each calls its stage's run(config) and keeps the figures the report shows.

TRAINING_METRICS = ("max_steps", "final_train_loss", "steps", "tokens", "tokens_per_s", "mfu", "final_val_loss")


def _complete(result: StageResult, what: str) -> StageResult:
    """A stage stopped by a signal (its checkpoint saved) stops the pipeline, resumably."""
    if result.stopped:
        raise StageInterrupted(f"{what} stopped by {result.stopped} at step {result.step}")
    return result


def _training_summary(result: StageResult, **extra: Any) -> dict[str, Any]:
    m = result.metrics
    return {"model_dir": str(result.outputs["model"]), **{k: m[k] for k in TRAINING_METRICS if k in m}, **extra}


# ------------------------------------------------------------------------------------------------
# tokenizer


def run_tokenizer(ctx: Context) -> dict[str, Any]:
    result = train_tokenizer(ctx.cfg.tokenizer_config(), progress=sys.stderr.isatty())
    return {k: result.metrics[k] for k in ("vocab_size", "documents", "bytes", "bytes_per_token")}


def verify_tokenizer(ctx: Context) -> None:
    tok = load_tokenizer(ctx)
    probe = "Hello, world! def f(x): return x"
    if tok.decode(tok.encode(probe)) != probe:
        raise ScratchError(f"the tokenizer in {ctx.dir('tokenizer')} does not round-trip text")


# ------------------------------------------------------------------------------------------------
# data


def run_data(ctx: Context) -> dict[str, Any]:
    return prepare_data(ctx.cfg.data_config(), progress=None, log=ctx.log).metrics


def verify_data(ctx: Context) -> None:
    _need(ctx.dir("data") / "manifest.json", "data manifest")
    problems = verify_shards(ctx.dir("data"))
    if problems:
        raise ScratchError(f"data shards in {ctx.dir('data')} are damaged: {problems[0]}")


# ------------------------------------------------------------------------------------------------
# pretrain


def run_pretrain(ctx: Context) -> dict[str, Any]:
    # resume=True: an interrupted attempt continues from its last checkpoint (none: from step 0).
    result = pretrain(ctx.cfg.train_config(), resume=True, resume_command=ctx.resume_command)
    return _training_summary(_complete(result, "training"))


def verify_pretrain(ctx: Context) -> None:
    path = base_model_dir(ctx)
    verify_checkpoint(path)
    want = ctx.cfg.train_config().total_steps()  # one process, as the pipeline trains
    state = read_json(path / "state.json")
    if int(state.get("step", -1)) < want:
        raise ScratchError(f"the last checkpoint {path} is at step {state.get('step')}, not {want}")


# ------------------------------------------------------------------------------------------------
# position-scheme ablation (optional)


def run_ablation(ctx: Context) -> dict[str, Any]:
    """Retrain the pretrain config for ablation.steps steps per position scheme; compare val losses."""
    out: dict[str, Any] = {"steps": ctx.cfg.ablation.steps, "schemes": {}}
    for scheme in ctx.cfg.ablation.pos_emb:
        result = pretrain(ctx.cfg.ablation_config(scheme), resume=True, resume_command=ctx.resume_command)
        m = _complete(result, f"ablation run {scheme}").metrics
        out["schemes"][scheme] = {k: m.get(k) for k in ("final_val_loss", "final_train_loss", "tokens_per_s", "tokens")}
    return out


def verify_ablation(ctx: Context) -> None:
    for scheme in ctx.cfg.ablation.pos_emb:
        if latest_checkpoint(ctx.dir("ablation") / scheme / "checkpoints") is None:
            raise ScratchError(f"ablation run {scheme} has no checkpoint")


# ------------------------------------------------------------------------------------------------
# sft (LoRA)


def run_sft(ctx: Context) -> dict[str, Any]:
    result = _complete(finetune(ctx.cfg.sft_config(), resume=True, progress=True), "fine-tuning")
    m = result.metrics
    out = _training_summary(result, **{k: m[k] for k in ("method", "trainable_params", "total_params", "before",
                                                          "after") if k in m})
    if "adapter" in result.outputs:
        out["adapter_dir"] = str(result.outputs["adapter"])
    return out


def verify_sft(ctx: Context) -> None:
    d = ctx.dir("sft")
    _need(d / "report.json", "fine-tuning report")
    Transformer.from_pretrained(d / "model")
    if ctx.cfg.sft_config().method != "full":
        _need(d / "adapter", "LoRA adapter")
        _need(d / "peft_adapter" / "adapter_config.json", "PEFT adapter")


# ------------------------------------------------------------------------------------------------
# dpo


def run_dpo(ctx: Context) -> dict[str, Any]:
    result = _complete(align_dpo(ctx.cfg.dpo_config(), resume=True), "DPO")
    return _training_summary(result, before=result.metrics.get("heldout_before"),
                             after=result.metrics.get("heldout_after"))


def verify_dpo(ctx: Context) -> None:
    _need(ctx.dir("dpo") / "report.json", "DPO report")
    Transformer.from_pretrained(ctx.dir("dpo") / "model")


# ------------------------------------------------------------------------------------------------
# alignment methods compared (optional: compare_alignment = true)


def run_align_compare(ctx: Context) -> dict[str, Any]:
    """DPO, PPO, GRPO, RLOO from the SFT model (align/compare.py); wiring only."""
    if not ctx.cfg.compare_alignment:
        return {"enabled": False}
    result = compare_run(ctx.cfg.align_compare_config())
    if not result.completed:
        raise StageInterrupted(f"the alignment comparison stopped by {result.stopped} (a rerun resumes it)")
    return {"enabled": True, **result.summary()}


def verify_align_compare(ctx: Context) -> None:
    if ctx.cfg.compare_alignment:
        for name in ("compare.json", "compare.png"):
            _need(ctx.dir("align_compare") / name, f"alignment comparison {name}")


# ------------------------------------------------------------------------------------------------
# eval


def heldout_task(ctx: Context) -> Path:
    """The val split's documents as a perplexity task, run_dir/eval/heldout (``scratchllm eval --tasks <it>``
    reruns it); scored by eval and by quantize (which writes it too when eval is left out)."""
    return write_heldout_task(ctx.dir("data"), ctx.dir("eval") / "heldout", ctx.cfg.eval_config().heldout_documents,
                              load_tokenizer(ctx))


def run_eval(ctx: Context) -> dict[str, Any]:
    """``scratchllm eval`` (eval.run) on every trained model with the run's paths; a summary across them."""
    e = replace(ctx.cfg.eval_config(), device=_device(ctx))
    tasks = [str(heldout_task(ctx)), *e.tasks]
    summary: dict[str, Any] = {"models": {}, "baselines": {}, "samples": {}}
    for i, (label, model_dir) in enumerate(trained_models(ctx)):
        # The baselines do not depend on the model: fit and score them once, with the first.
        cfg = replace(e, model=str(model_dir), name=label, out_dir=ctx.dir("eval") / label, tasks=tasks,
                      baselines=e.baselines if i == 0 else [],
                      generations=replace(e.generations, chat=label != "pretrain"))
        result = eval_run(cfg, log=lambda msg, lbl=label: ctx.log(f"eval {lbl}: {msg}"))
        results = json.loads(result.outputs["results"].read_text(encoding="utf-8"))
        held = results["tasks"]["heldout"]
        summary["models"][label] = {
            "path": str(model_dir), "parameters": results["model"]["parameters"],
            "tasks": result.metrics["tasks"],
        }
        if i == 0:
            summary["baselines"] = {k: v for k, v in held.get("baselines", {}).items() if not k.startswith("_")}
            summary["baseline_train_tokens"] = held.get("baselines", {}).get("_train_tokens")
            summary["heldout"] = {"documents": held["n"], "tokens": held["tokens"], "bytes": held["bytes"]}
        gens = result.outputs.get("generations")
        summary["samples"][label] = json.loads(gens.read_text(encoding="utf-8")) if gens else []
    ppl = {k: v["tasks"]["heldout"]["token_perplexity"] for k, v in summary["models"].items()}
    base = {k: v["token_perplexity"] for k, v in summary["baselines"].items()}
    summary["beats_baselines"] = {m: all(p < b for b in base.values()) if base else None for m, p in ppl.items()}
    atomic_write_text(ctx.dir("eval") / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return {"heldout_ppl": ppl, "baseline_ppl": base, "beats_baselines": summary["beats_baselines"]}


def verify_eval(ctx: Context) -> None:
    summary_path = ctx.dir("eval") / "summary.json"
    _need(summary_path, "eval summary")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    for label, _ in trained_models(ctx):
        _need(ctx.dir("eval") / label / "results.json", f"eval results of {label}")
        if label not in summary["models"]:
            raise ScratchError(f"the eval summary has no results for {label}")


# ------------------------------------------------------------------------------------------------
# export to Hugging Face


def run_export_hf(ctx: Context) -> dict[str, Any]:
    """``scratchllm export hf`` (model.hf.run) on the final model, then checked the way a user would load it."""
    src = final_model_dir(ctx)
    exported = export_run(ExportHFConfig(model=str(src), tokenizer=str(ctx.dir("tokenizer")),
                                         out_dir=ctx.dir("export_hf")))
    out = exported.outputs["model"]
    result: dict[str, Any] = {"source": str(src), "path": str(out)}
    if not ctx.cfg.export_hf.check_with_transformers:
        return result
    # Check the export the way a user would: transformers loads it offline and gives our logits.
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:  # a test extra, not a runtime dependency
        ctx.log("export_hf: transformers is not installed; the export is written but not checked with it")
        return {**result, "checked_with_transformers": False}

    model = Transformer.from_pretrained(src).eval()
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = torch.tensor([hf_tok("def main():\n    return 42")["input_ids"]])
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    if diff > 1e-3:
        raise ScratchError(f"the exported model's logits differ from ours by {diff:.2e}", "report this as a bug")
    return {**result, "checked_with_transformers": True, "max_logit_diff": diff}


def verify_export_hf(ctx: Context) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        _need(ctx.dir("export_hf") / name, f"exported {name}")


# ------------------------------------------------------------------------------------------------
# quantize


def run_quantize(ctx: Context) -> dict[str, Any]:
    """``scratchllm quantize`` (infer.quantize.run) on the final model; then held-out perplexity of the
    reloaded quantized model next to the model it came from (``scratchllm eval``, the held-out task only)."""
    src = final_model_dir(ctx)
    q = replace(ctx.cfg.quantize_config(), model=str(src))
    result = quantize_run(q)
    out = result.outputs["model"]
    task = heldout_task(ctx)  # the task eval scores (written here too if eval is left out)
    e = ctx.cfg.eval_config()
    ppl = {}
    for label, model in (("dense", src), (q.mode, out)):
        cfg = replace(e, model=str(model), name=label, out_dir=out / "eval" / label, tasks=[str(task)], limit=None,
                      baselines=[], device=_device(ctx), generations=GenerationsConfig())
        ppl[label] = eval_run(cfg, log=ctx.log).metrics["tasks"]["heldout"]["token_perplexity"]
    m = result.metrics
    return {"source": str(src), "path": str(out), "mode": q.mode, "group_size": m["group_size"],
            "dense_weight_bytes": m["dense_weight_bytes"], "quantized_weight_bytes": m["quantized_weight_bytes"],
            "heldout_ppl_dense": ppl["dense"], "heldout_ppl_quantized": ppl[q.mode]}


def verify_quantize(ctx: Context) -> None:
    _need(ctx.dir("quantize") / QUANT_FILE, "quantization info")
    load_model(ctx.dir("quantize"))


# ------------------------------------------------------------------------------------------------
# serve + check with the official openai client


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def served_model_dir(ctx: Context) -> Path:
    if ctx.cfg.serve.model == "quantized" and ctx.done("quantize") is not None:
        return Path(ctx.done("quantize")["summary"]["path"])
    return final_model_dir(ctx)


def serve_command(ctx: Context, model_dir: Path, host: str, port: int) -> list[str]:
    """``scratchllm serve key=value ...``, the command a user runs."""
    settings = {"model": str(model_dir), "tokenizer": str(ctx.dir("tokenizer")), "host": host,
                "device": _device(ctx), "model_name": ctx.cfg.serve.model_name}
    # Quote a value only where it would otherwise be read as a TOML number, boolean, ...
    args = [f"{k}={v}" if parse_override(f"{k}={v}")[1] == v else f"{k}={json.dumps(v)}" for k, v in settings.items()]
    return ["scratchllm", "serve", *args, f"port={port}"]


def run_serve(ctx: Context) -> dict[str, Any]:
    """Start `scratchllm serve` in a child process, query it with the openai client, stop it."""
    from openai import OpenAI

    s = ctx.cfg.serve
    port = s.port or _free_port(s.host)
    model_dir = served_model_dir(ctx)
    cmd = serve_command(ctx, model_dir, s.host, port)
    log_path = ctx.dir("serve") / "server.log"
    ctx.log(f"serve: {shlex.join(cmd)}  (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as server_log:
        # The check server is ours, on loopback: a deployment's key in the environment is not for it.
        env = {k: v for k, v in os.environ.items() if k not in ("SCRATCHLLM_API_KEY", "SCRATCHLLM_API_KEY_FILE")}
        proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *cmd[1:]], stdout=server_log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        client = OpenAI(base_url=f"http://{s.host}:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + s.startup_timeout
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise ScratchError(f"the server exited with status {proc.returncode} before answering:\n{tail}",
                                   f"see {log_path}")
            try:
                models = [m.id for m in client.models.list().data]
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise ScratchError(f"the server did not answer within {s.startup_timeout:.0f}s",
                                       f"see {log_path}; raise serve.startup_timeout") from None
                time.sleep(0.5)
        startup = time.monotonic() - t0
        model = models[0]
        t0 = time.monotonic()
        comp = client.completions.create(model=model, prompt=s.prompt, max_tokens=s.max_tokens, temperature=0.0)
        comp_s = time.monotonic() - t0
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": s.chat_prompt}],
                                              max_tokens=s.max_tokens, temperature=0.0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result = {
        "model_dir": str(model_dir), "models": models, "startup_seconds": round(startup, 2),
        "completion": {"prompt": s.prompt, "text": comp.choices[0].text, "finish_reason": comp.choices[0].finish_reason,
                       "usage": comp.usage.model_dump() if comp.usage else None, "seconds": round(comp_s, 3)},
        "chat": {"prompt": s.chat_prompt, "text": chat.choices[0].message.content,
                 "finish_reason": chat.choices[0].finish_reason},
        "serve_command": shlex.join(cmd),
    }
    atomic_write_text(ctx.dir("serve") / "check.json", json.dumps(result, indent=1) + "\n")
    return result


def verify_serve(ctx: Context) -> None:
    path = ctx.dir("serve") / "check.json"
    _need(path, "served-completion check")
    check = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(check.get("completion", {}).get("text"), str):
        raise ScratchError(f"{path} holds no completion")


# ------------------------------------------------------------------------------------------------


def run_report(ctx: Context) -> dict[str, Any]:
    return write_report(ctx)


def verify_report(ctx: Context) -> None:
    for name in ("report.md", "report.html"):
        _need(ctx.dir("report") / name, name)


def all_stages() -> list[Stage]:
    return [
        Stage("tokenizer", run_tokenizer, verify_tokenizer, "train the BPE tokenizer"),
        Stage("data", run_data, verify_data, "ingest, clean, filter, dedup, mix, shard"),
        Stage("pretrain", run_pretrain, verify_pretrain, "pre-train the model (resumes from its checkpoints)"),
        Stage("ablation", run_ablation, verify_ablation, "position-scheme ablation (when ablation.pos_emb is set)"),
        Stage("sft", run_sft, verify_sft, "instruction-tune with LoRA (resumes from its checkpoints)"),
        Stage("dpo", run_dpo, verify_dpo, "align the SFT model with DPO (resumes from its checkpoints)"),
        Stage("align_compare", run_align_compare, verify_align_compare,
              "DPO, PPO, GRPO, RLOO compared from the SFT model (when compare_alignment = true)"),
        Stage("eval", run_eval, verify_eval, "held-out perplexity vs n-gram baselines, tasks, samples"),
        Stage("quantize", run_quantize, verify_quantize, "INT8/INT4 weights for serving"),
        Stage("export_hf", run_export_hf, verify_export_hf, "export to Hugging Face Llama and check with transformers"),
        Stage("serve", run_serve, verify_serve, "start `scratchllm serve` and query it with the openai client"),
        Stage("report", run_report, verify_report, "write report.md / report.html with plots"),
    ]
