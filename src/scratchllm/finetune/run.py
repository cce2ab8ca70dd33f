"""Fine-tuning from a FinetuneConfig: load the base, add LoRA / NF4 as asked, run THE Trainer, report.

Outputs in ``out_dir``:

    checkpoints/        the Trainer's resumable checkpoints (as in `scratchllm train`)
    model/              the fine-tuned model, adapters merged (config.json, model.safetensors, tokenizer):
                        a plain model directory for eval/serve/align and `scratchllm export hf`
    adapter/            lora/qlora: our adapter (adapter.safetensors + adapter.json)
    peft_adapter/       lora/qlora: the same adapter for `peft` (adapter_config.json + adapter_model.safetensors)
    report.json         held-out loss and accuracy before and after, parameter counts, memory
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import ScratchError
from scratchllm.finetune.chat_files import load_chat_jsonl
from scratchllm.finetune.config import FinetuneConfig
from scratchllm.finetune.lora import (
    apply_lora,
    count_trainable,
    merged_model,
    save_adapter,
    save_peft_adapter,
)
from scratchllm.finetune.nf4 import NF4Linear, quantize_model_nf4
from scratchllm.finetune.sft import (
    SFTBatchSource,
    accuracy,
    encode_conversations,
    fixed_sft_batches,
    mean_loss,
    sft_loss,
)
from scratchllm.io import atomic_write_text
from scratchllm.model.checkpoint import state_dict_bytes
from scratchllm.model.model import ModelConfig, Transformer
from scratchllm.model.paths import resolve_model_dir
from scratchllm.stage import StageResult
from scratchllm.tasks.instruct import InstructExample, embedded_instructions
from scratchllm.tokenizer import Tokenizer
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.loop import Trainer, configure_torch, seed_everything, select_device
from scratchllm.train.parallel import Dist
from scratchllm.train.tracking import training_metrics

WHAT = "fine-tuning run"  # what an out_dir holding checkpoints already holds, in the refusal


def resolve_base(path: str) -> Path:
    """A model directory, a fine-tuning run's merged ``model/``, or the latest checkpoint of a run."""
    try:
        return resolve_model_dir(path)
    except ScratchError as e:
        raise ScratchError(f"base model not found: {e.message}",
                           "point base.checkpoint at a model directory or a `scratchllm train` run directory") from None


def load_base(cfg: FinetuneConfig, tokenizer: Any) -> Transformer:
    if cfg.base.checkpoint:
        model = Transformer.from_pretrained(resolve_base(cfg.base.checkpoint))
    else:
        seed_everything(cfg.seed)
        model = Transformer(cfg.model or ModelConfig())
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ScratchError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the base model's vocab_size is "
            f"{model.cfg.vocab_size}", "use the tokenizer the base model was trained with (base.tokenizer)")
    return model


def prepare_model(model: Transformer, cfg: FinetuneConfig) -> Transformer:
    """Full: everything trains. LoRA: adapters on a frozen base. QLoRA: NF4 base + adapters."""
    if cfg.method == "qlora":
        quantize_model_nf4(model, cfg.lora.target_modules, cfg.qlora.blocksize, cfg.qlora.double_quant)
    if cfg.method in ("lora", "qlora"):
        apply_lora(model, cfg.lora)
    return model


@dataclass
class SFTData:
    train: list[tuple[list[int], list[int]]]
    heldout: list[tuple[list[int], list[int]]]
    checkable: list[InstructExample]  # held-out examples with exact answers (embedded source only)


def load_sft_data(cfg: FinetuneConfig, tokenizer: Any, context_length: int) -> SFTData:
    d = cfg.data
    max_len = d.max_len or context_length
    if max_len > context_length:
        raise ScratchError(f"data.max_len={max_len} is longer than the model's context_length={context_length}",
                           "lower data.max_len (0 means the context length)")
    if d.source == "embedded":
        kinds = tuple(d.kinds)
        train = embedded_instructions(d.n_train, "train", cfg.seed, kinds, d.system_prompt)
        held = embedded_instructions(d.n_heldout, "heldout", cfg.seed, kinds, d.system_prompt)
        train_convs, held_convs, checkable = [e.messages for e in train], [e.messages for e in held], held
    else:
        convs = load_chat_jsonl(d.path, skip_bad=d.skip_bad)
        n_held = int(len(convs) * d.heldout_fraction)
        if len(convs) - n_held < 1:
            raise ScratchError(f"{d.path}: too few conversations ({len(convs)}) to train on",
                               "add data or lower data.heldout_fraction")
        train_convs, held_convs, checkable = convs[: len(convs) - n_held], convs[len(convs) - n_held :], []
    enc = encode_conversations(tokenizer, train_convs, max_len, d.overflow)
    held_enc = encode_conversations(tokenizer, held_convs, max_len, d.overflow) if held_convs else []
    return SFTData(enc, held_enc, checkable)


def evaluate(model: nn.Module, tokenizer: Any, data: SFTData, cfg: FinetuneConfig, device: torch.device) -> dict:
    out: dict[str, Any] = {}
    if data.heldout:
        out["heldout_loss"] = mean_loss(model, fixed_sft_batches(data.heldout, cfg.train.batch_size, tokenizer.pad_id),
                                        device)
    if data.checkable:
        acc, per_kind = accuracy(model, tokenizer, data.checkable, device, cfg.eval.max_new_tokens)
        out["heldout_accuracy"], out["accuracy_by_kind"] = acc, per_kind
    return out


def run(cfg: FinetuneConfig, resume: bool = False, progress: bool = True) -> StageResult:
    """Fine-tune as configured: the fine-tuning stage.

    outputs: "run", "model" (merged), "adapter" and "peft_adapter" (lora/qlora), "report"; metrics: the
    report (also out_dir/report.json: held-out loss/accuracy before and after, parameter counts) and the
    training figures of metrics.jsonl. A run stopped by a signal has no model and no "after" yet."""
    configure_torch(cfg)
    log = print if progress else (lambda *a, **k: None)
    device = select_device(cfg.train.device, Dist())
    tokenizer = Tokenizer.load(cfg.base.tokenizer)
    model = load_base(cfg, tokenizer)
    data = load_sft_data(cfg, tokenizer, model.cfg.context_length)
    out_dir = Path(cfg.out_dir)
    if not resume:  # before the slow evaluation of the base model
        ckpt.refuse_existing_run(out_dir / "checkpoints", out_dir, WHAT)

    model.to(device)
    report: dict[str, Any] = {"method": cfg.method, "base": cfg.base.checkpoint or "fresh",
                              "train_examples": len(data.train), "heldout_examples": len(data.heldout)}
    log(f"finetune: evaluating the base model on {len(data.heldout)} held-out examples", file=sys.stderr)
    report["before"] = evaluate(model, tokenizer, data, cfg, device)
    dense_bytes = state_dict_bytes(model)
    prepare_model(model, cfg)
    trainable, total = count_trainable(model)
    report.update(trainable_params=trainable, total_params=total, base_weight_bytes=dense_bytes,
                  weight_bytes=state_dict_bytes(model),
                  nf4_layers=sum(isinstance(m, NF4Linear) for m in model.modules()))

    source = SFTBatchSource(data.train, cfg.train.batch_size, tokenizer.pad_id, cfg.seed)
    val = fixed_sft_batches(data.heldout[: cfg.eval.batches * cfg.train.batch_size], cfg.train.batch_size,
                            tokenizer.pad_id) if cfg.eval.batches else []
    cfg.log.progress = cfg.log.progress and progress
    trainer = Trainer(cfg, model, source, loss_fn=sft_loss, val_batches=val, device=device)
    trainer.start(resume, what=WHAT)
    log(f"finetune ({cfg.method}): {trainable:,} trainable of {total:,} parameters, {len(data.train)} "
        f"conversations, {cfg.train.max_steps} steps -> {out_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    stopped = trainer.fit()
    report["train_seconds"] = round(time.perf_counter() - t0, 2)
    report["steps"] = stopped.step
    if stopped.reason != "done":
        return stopped.result({"run": out_dir}, {**report, **training_metrics(out_dir),
                                                 "max_steps": cfg.train.max_steps})

    report["after"] = evaluate(model, tokenizer, data, cfg, device)
    save_outputs(model, tokenizer, cfg, out_dir)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    outputs = {"run": out_dir, "model": out_dir / "model", "report": out_dir / "report.json"}
    if cfg.method != "full":
        outputs.update(adapter=out_dir / "adapter", peft_adapter=out_dir / "peft_adapter")
    return stopped.result(outputs, {**report, **training_metrics(out_dir), "max_steps": cfg.train.max_steps})


def save_outputs(model: Transformer, tokenizer: Any, cfg: FinetuneConfig, out_dir: Path) -> None:
    """The merged model directory, plus the adapter in both formats for lora/qlora."""
    if cfg.method != "full":
        save_adapter(model, out_dir / "adapter")
        save_peft_adapter(model, out_dir / "peft_adapter", base_model_name=cfg.base.checkpoint)
        plain = merged_model(model)
    else:
        plain = model
    plain.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model", model_max_length=plain.cfg.context_length)
