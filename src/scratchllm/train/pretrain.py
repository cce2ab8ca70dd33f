"""Pre-training from a TrainConfig: set up processes and torch, build model and data, run the Trainer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from scratchllm.corpus.shards import load_manifest
from scratchllm.errors import ScratchError
from scratchllm.model.checkpoint import check_vocab
from scratchllm.model.model import Transformer
from scratchllm.stage import StageResult
from scratchllm.tokenizer import Tokenizer
from scratchllm.train.config import TrainConfig
from scratchllm.train.data import ShardBatchSource, fixed_batches
from scratchllm.train.loop import Trainer, configure_torch, device_type, seed_everything, select_device
from scratchllm.train.mesh import build_layout
from scratchllm.train.packing import PackedBatchSource, fixed_packed_batches
from scratchllm.train.parallel import Dist, destroy_distributed, init_distributed
from scratchllm.train.tracking import training_metrics


def load_tokenizer_for_samples(cfg: TrainConfig, manifest: dict) -> object | None:
    """The tokenizer used to decode sample generations, or None (samples are then skipped)."""
    path = cfg.data.tokenizer or manifest.get("tokenizer")
    if not path:
        return None
    try:
        tok = Tokenizer.load(path)
    except (ScratchError, OSError) as e:
        print(f"note: no sample generations: cannot load the tokenizer at {path} ({e})", file=sys.stderr)
        return None
    return tok


def build_trainer(cfg: TrainConfig, d: Dist, resume: bool = False, resume_from: Path | None = None) -> Trainer:
    device = select_device(cfg.train.device, d)
    model_cfg = cfg.model
    _, manifest = load_manifest(cfg.data.path)

    # The data's vocabulary is its tokenizer's: a model of another size would fail in its sample
    # generations and be refused by generate/serve/eval, so it is refused before training.
    check_vocab(model_cfg.vocab_size, int(manifest["vocab_size"]), "the model config",
                f"the tokenizer of the data in {cfg.data.path}")
    t = cfg.train
    # Mesh checks first (tp/pp against the world size and the model): a bad layout fails before any work.
    layout = build_layout(t, model_cfg, d, device.type)
    t.max_steps = cfg.total_steps(layout.dp)
    # Data-parallel ranks read different rows; tp and pp peers of one dp rank read the same ones.
    packed = cfg.data.batching == "packed"
    if packed:
        train = PackedBatchSource(cfg.data.path, cfg.data.train_split, t.batch_size, cfg.data.seq_len, cfg.seed,
                                  layout.dp_rank, layout.dp, cfg.data.doc_mask, cfg.data.pack_buffer)
        if d.is_main:
            s = train.packer.stats()
            print(f"data: packed {len(train.packer.docs):,} documents into {s['rows']:,} rows per epoch: "
                  f"{s['padding_share']:.1%} padding, {s['bos_share']:.1%} BOS tokens, "
                  f"{s['split_documents']:,} documents split across rows", file=sys.stderr)
    else:
        train = ShardBatchSource(cfg.data.path, cfg.data.train_split, t.batch_size, cfg.data.seq_len, cfg.seed,
                                 layout.dp_rank, layout.dp)
    val = []
    if cfg.eval.batches:
        try:
            if packed:  # validation on the same kind of rows as training
                val = fixed_packed_batches(cfg.data.path, cfg.data.val_split, cfg.eval.batches, t.batch_size,
                                           cfg.data.seq_len, cfg.seed + 1, layout.dp_rank, layout.dp,
                                           cfg.data.doc_mask)
            else:
                val = fixed_batches(cfg.data.path, cfg.data.val_split, cfg.eval.batches, t.batch_size,
                                    cfg.data.seq_len, cfg.seed + 1, layout.dp_rank, layout.dp)
        except ScratchError as e:
            if d.is_main:
                print(f"note: no validation loss: {e.message}", file=sys.stderr)
    tokenizer = load_tokenizer_for_samples(cfg, manifest) if cfg.eval.sample_tokens else None

    seed_everything(cfg.seed)  # identical initial weights on every process
    with torch.device("cpu"):
        model = Transformer(model_cfg)
    trainer = Trainer(cfg, model, train, val_batches=val, tokenizer=tokenizer, dist_info=d, device=device,
                      layout=layout)

    trainer.start(resume, resume_from)
    return trainer


def run(cfg: TrainConfig, resume: bool = False, resume_from: Path | None = None,
        resume_command: str = "scratchllm train ... --resume") -> StageResult:
    """Train as configured (one process, or one of torchrun's): the pre-training stage.

    outputs: "run" (out_dir) and "model" (the last checkpoint, also a model directory); metrics: the final
    losses, steps, tokens and throughput (rank 0); stopped: the signal that stopped it, if any."""
    configure_torch(cfg)
    d = init_distributed(device_type(cfg.train.device))
    try:
        trainer = build_trainer(cfg, d, resume, resume_from)
        trainer.resume_command = resume_command
        if d.is_main:
            n = trainer.num_params
            per_step = cfg.tokens_per_step(trainer.layout.dp)
            start = f"resuming at step {trainer.step}" if trainer.resumed_from else "starting"
            print(f"train: {start}: {n / 1e6:.2f}M parameters on {d.world_size} x {trainer.device} "
                  f"({trainer.parallel}), {per_step:,} tokens/step, {cfg.train.max_steps} steps -> {cfg.out_dir}",
                  file=sys.stderr)
        stopped = trainer.fit()
        if d.is_main:
            if stopped.reason == "done":
                print(f"done: step {stopped.step}; last checkpoint {stopped.checkpoint} "
                      "(also a model directory for Transformer.from_pretrained)", file=sys.stderr)
            else:
                print(f"stopped by {stopped.reason} after step {stopped.step}; checkpoint saved to "
                      f"{stopped.checkpoint}\ncontinue with: {resume_command}", file=sys.stderr)
        outputs = {"run": Path(cfg.out_dir)}
        if stopped.checkpoint is not None:
            outputs["model"] = Path(stopped.checkpoint)
        metrics = {"max_steps": cfg.train.max_steps, **(training_metrics(cfg.out_dir) if d.is_main else {})}
        return stopped.result(outputs, metrics)
    finally:
        destroy_distributed()
