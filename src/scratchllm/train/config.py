"""The ``scratchllm train`` config: one dataclass per section, loaded from configs/train/*.toml.

    out_dir = "runs/train/cpu-tiny"
    seed = 1337
    [model]       preset = "configs/model/1m.toml", plus any ModelConfig key to override it
    [data]        prepared shard directory, sequence length
    [optim]       AdamW: lr, betas, weight decay (and what is exempt from it), gradient clipping
    [schedule]    warmup + cosine | wsd | constant
    [train]       batch size, accumulation, length, precision, compile, activation checkpointing, parallel
    [eval]        validation loss and sample generations
    [checkpoint]  interval, keep_last
    [log]         JSONL / TensorBoard / Weights & Biases, progress bar
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.errors import ScratchError
from scratchllm.model.model import ModelConfig

NO_DECAY_KINDS = ("norm", "bias", "embedding")


@dataclass
class DataSection:
    path: Path = Path("runs/data")  # a directory written by `scratchllm data prepare`
    seq_len: int = 256  # tokens per training sequence (at most the model's context_length)
    train_split: str = "train"
    val_split: str = "val"
    tokenizer: Path | None = None  # for sample generations; None: the one named in the data manifest
    # "windows": random windows of the token stream (rows start anywhere); "packed": BOS-aligned
    # best-fit packing of whole documents (train/packing.py), with padding instead of cut documents.
    batching: Literal["windows", "packed"] = "windows"
    doc_mask: bool = False  # packed only: attention within each document, positions restarting at it
    pack_buffer: int = 1000  # packed: documents considered at once by best fit (more: less padding)

    def validate(self) -> None:
        if self.doc_mask and self.batching != "packed":
            raise ScratchError("data.doc_mask needs data.batching = \"packed\"", 'set data.batching="packed"')
        if self.pack_buffer < 1:
            raise ScratchError(f"data.pack_buffer must be >= 1, got {self.pack_buffer}")


@dataclass
class OptimConfig:
    # "adamw" for every parameter, or "muon": Muon for the 2-D hidden weights (attention and MLP
    # matrices), AdamW at ``lr`` for embeddings, an untied head, norms and biases.
    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3  # peak learning rate (after warmup); with muon, the AdamW groups' lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    # Parameters exempt from weight decay: "norm" (RMSNorm gains), "bias", "embedding" (token and
    # position tables, and a head tied to them). Decaying gains and biases only hurts; embeddings
    # are usually exempt too, as in nanoGPT/OLMo.
    no_decay: list[str] = field(default_factory=lambda: list(NO_DECAY_KINDS))
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping (the norm is still logged)
    fused: bool | None = None  # fused AdamW kernel; None: on CUDA only
    # Muon (name = "muon"): peak lr of the hidden matrices (the schedule scales it like lr), Nesterov
    # momentum, Newton-Schulz iterations, decoupled weight decay, and the shape-dependent lr scaling:
    # "original" sqrt(max(1, rows/cols)) (Keller Jordan) or "match_rms_adamw" 0.2 sqrt(max(rows, cols)).
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_weight_decay: float = 0.0
    muon_lr_scale: Literal["original", "match_rms_adamw"] = "original"
    # Newton-Schulz precision: bf16 as in the records (fast on GPUs); fp32 is bit-stabler (and on CPUs
    # without bf16 matmul units, faster).
    muon_ns_dtype: Literal["bf16", "fp32"] = "bf16"

    def validate(self) -> None:
        if self.muon_lr <= 0 or not 0.0 <= self.muon_momentum < 1.0 or self.muon_ns_steps < 1 \
                or self.muon_weight_decay < 0:
            raise ScratchError("optim: muon_lr must be > 0, muon_momentum in [0, 1), muon_ns_steps >= 1 and "
                               "muon_weight_decay >= 0")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ScratchError("optim: lr and eps must be > 0, weight_decay and grad_clip >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ScratchError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        bad = [k for k in self.no_decay if k not in NO_DECAY_KINDS]
        if bad:
            raise ScratchError(f"optim.no_decay: unknown kind {bad[0]!r}", f"choose from {', '.join(NO_DECAY_KINDS)}")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100  # linear warmup from lr/warmup_steps to lr
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * lr (cosine and wsd)
    decay_fraction: float = 0.2  # wsd: the last fraction of the steps decays to the minimum
    decay_shape: Literal["linear", "cosine", "sqrt"] = "sqrt"  # wsd decay: "sqrt" is 1 - sqrt(progress)

    def validate(self) -> None:
        if self.warmup_steps < 0:
            raise ScratchError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ScratchError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ScratchError(f"schedule.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclass
class TrainSection:
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    max_tokens: int = 0  # if > 0, overrides max_steps: steps = ceil(max_tokens / tokens per step)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (CUDA, and CPU where supported)
    compile: bool = False  # torch.compile (needs a C++ compiler on CPU; first steps are slow)
    compile_scope: Literal["model", "blocks"] = "model"  # whole model, or each block (torchtitan style)
    # "none", "full" (every block), or "every-N" (every N-th block): recompute activations in backward.
    activation_checkpointing: str = "none"
    parallel: Literal["ddp", "fsdp", "none"] = "ddp"  # used when launched by torchrun on >1 processes
    # Device mesh (train/mesh.py): tensor- and pipeline-parallel sizes; data parallel takes the rest of
    # the processes (world / (tp * pp)), with FSDP2 (train.parallel = "fsdp") when tp or pp > 1.
    tp: int = 1  # tensor parallel: heads, MLP and vocabulary split over tp ranks (train/tp.py)
    pp: int = 1  # pipeline parallel: layers split into pp stages (train/pp.py)
    pp_microbatches: int = 4  # pipeline micro-batches per micro-batch (must divide batch_size)
    pp_schedule: Literal["gpipe", "1f1b", "interleaved-1f1b"] = "1f1b"
    pp_stages_per_rank: int = 1  # >1 only with "interleaved-1f1b" (then pp_microbatches % pp == 0)
    deterministic: bool = False  # torch.use_deterministic_algorithms + fixed seeds: bit-exact CPU reruns
    # torch CPU threads per process. 0 = auto: one per idle core (cores minus the 1-minute load average,
    # at least 1), or OMP_NUM_THREADS when set (torchrun sets 1). On a busy 2-core machine torch's
    # default (2) ran 0.15x as fast as 1 thread (docs/benchmarks.md).
    num_threads: int = 0
    # --resume with a different max_steps, lr or [schedule] changes the learning-rate schedule mid-run;
    # refused unless this is true (then the run continues on the new schedule from the saved step).
    allow_schedule_change: bool = False

    def validate(self) -> None:
        for key in ("batch_size", "grad_accum", "max_steps"):
            if getattr(self, key) < 1:
                raise ScratchError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_tokens < 0 or self.num_threads < 0:
            raise ScratchError("train.max_tokens and train.num_threads must be >= 0")
        for key in ("tp", "pp", "pp_microbatches", "pp_stages_per_rank"):
            if getattr(self, key) < 1:
                raise ScratchError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if (self.pp_schedule == "interleaved-1f1b") != (self.pp_stages_per_rank > 1):
            raise ScratchError(
                f"train.pp_schedule={self.pp_schedule!r} with train.pp_stages_per_rank={self.pp_stages_per_rank}",
                'use pp_schedule="interleaved-1f1b" with pp_stages_per_rank >= 2, or another schedule with 1',
            )
        ac_every(self.activation_checkpointing)


def ac_every(mode: str) -> int:
    """0 for "none", 1 for "full", N for "every-N": activation checkpointing of every N-th block."""
    if mode == "none":
        return 0
    if mode == "full":
        return 1
    m = re.fullmatch(r"every-([1-9][0-9]*)", mode)
    if not m:
        raise ScratchError(
            f"train.activation_checkpointing: bad value {mode!r}",
            'use "none", "full" (every block) or "every-N" (every N-th block, e.g. "every-2")',
        )
    return int(m.group(1))


@dataclass
class EvalSection:
    interval: int = 100  # steps between validation losses (0: never; always at the end)
    batches: int = 8  # validation micro-batches per evaluation (the same windows every time)
    sample_interval: int = 0  # steps between sample generations (0: only at the end; needs a tokenizer)
    sample_prompts: list[str] = field(default_factory=lambda: ["def ", "The "])
    sample_tokens: int = 48
    temperature: float = 0.8
    top_k: int = 50

    def validate(self) -> None:
        if self.interval < 0 or self.batches < 0 or self.sample_interval < 0 or self.sample_tokens < 0:
            raise ScratchError("eval: interval, batches, sample_interval and sample_tokens must be >= 0")
        if self.temperature <= 0 or self.top_k < 1:
            raise ScratchError("eval: temperature must be > 0 and top_k >= 1")


@dataclass
class CheckpointSection:
    interval: int = 200  # steps between checkpoints (0: only at the end and on SIGTERM/Ctrl-C)
    keep_last: int = 3  # older checkpoints are deleted

    def validate(self) -> None:
        if self.interval < 0 or self.keep_last < 1:
            raise ScratchError("checkpoint: interval must be >= 0 and keep_last >= 1")


@dataclass
class LogSection:
    interval: int = 10  # steps between metric rows (loss, lr, grad norm, tokens/s, memory)
    tensorboard: bool = True
    wandb: bool = False  # only if the wandb package is installed
    wandb_project: str = "scratchllm"
    progress: bool = True  # tqdm progress bar (rank 0)
    peak_flops: float = 0.0  # accelerator peak FLOP/s for MFU; 0: known GPUs' bf16 dense peak

    def validate(self) -> None:
        if self.interval < 1:
            raise ScratchError(f"log.interval must be >= 1, got {self.interval}")


@dataclass
class TrainingConfig:
    """The sections every training stage shares and the one Trainer reads: where the run goes, its seed,
    the optimizer, schedule, batch/precision/device/threads ([train]), evaluation, checkpoints and logs.

    Pre-training (TrainConfig), fine-tuning (FinetuneConfig) and each alignment command extend it with
    their own sections; the TOML keys stay top-level tables (``[optim]``, ``[train]``, ...)."""

    out_dir: Path = Path("runs/train")
    seed: int = 1337
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)


@dataclass
class TrainConfig(TrainingConfig):
    # A model preset plus overrides in TOML: [model] preset = "configs/model/1m.toml", context_length = 128.
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)

    def validate(self) -> None:
        ctx = self.model.context_length
        if not 1 <= self.data.seq_len <= ctx:
            raise ScratchError(
                f"data.seq_len={self.data.seq_len} must be between 1 and the model's context_length={ctx}",
                "lower data.seq_len or raise model.context_length",
            )

    def tokens_per_step(self, dp: int = 1) -> int:
        """Tokens one optimizer step trains on, over ``dp`` data-parallel ranks."""
        t = self.train
        return t.batch_size * self.data.seq_len * t.grad_accum * dp

    def total_steps(self, dp: int = 1) -> int:
        """The steps the run trains for: train.max_tokens, when set, decides them (rounded up)."""
        if self.train.max_tokens:
            return max(1, math.ceil(self.train.max_tokens / self.tokens_per_step(dp)))
        return self.train.max_steps
