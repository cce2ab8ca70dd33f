"""The one training loop, shared by pre-training, fine-tuning and alignment.

The Trainer owns what every stage needs - device and precision, activation checkpointing,
compile, DDP/FSDP2, AdamW over the trainable parameters, the lr schedule, gradient accumulation
and clipping, validation, sample generations, checkpoints and exact resume, signals, NaN guard,
tracking - and takes from its caller only:

* ``model``: an ``nn.Module`` (with ``.layers`` for activation checkpointing / FSDP per block);
* ``train_source``: an object with ``next_batch()``, ``state_dict()``, ``load_state_dict()``;
* ``loss_fn(model, batch) -> (loss, metrics)``: default ``lm_loss``, next-token cross-entropy;
* optionally ``val_batches`` (a list of batches) and a tokenizer for sample generations.

One optimizer step = ``grad_accum`` micro-batches, each backpropagated with loss / grad_accum
(under DDP the gradient all-reduce runs on the last one only), then the global gradient norm is
computed (and clipped), the loss and norm are all-reduced and checked, and AdamW steps.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from scratchllm.config import to_dict
from scratchllm.errors import Interrupted, ScratchError
from scratchllm.infer.generate import sample as sample_tokens
from scratchllm.model.checkpoint import check_state
from scratchllm.stage import StageResult
from scratchllm.train import checkpoint as ckpt, runlock
from scratchllm.train.config import TrainingConfig
from scratchllm.train.mesh import Layout, parallelize
from scratchllm.train.optim import build_optimizer
from scratchllm.train.parallel import Dist, all_reduce_sum, apply_ac, apply_compile, apply_ddp, apply_fsdp
from scratchllm.train.pp import gather_full_states, optimizer_part
from scratchllm.train.schedule import lr_factor
from scratchllm.train.tp import loss_parallel_context, to_local
from scratchllm.train.tracking import Tracker

Batch = Any
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]

# bf16 dense peak FLOP/s (no sparsity) for MFU, matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "L4": 121e12}


def lm_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy: batch = (x, y) with y = x shifted by one (targets -100 are ignored), or
    (x, y, doc_ids) for packed rows with document masking."""
    x, y, *doc_ids = batch
    _, loss = model(x, targets=y, doc_ids=doc_ids[0]) if doc_ids else model(x, targets=y)
    return loss, {}


def count_tokens(batch: Batch) -> int:
    """Tokens in a micro-batch, for tokens/s: the input ids' element count."""
    x = batch[0] if isinstance(batch, tuple | list) else batch["input_ids"]
    return int(x.numel())


def to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@dataclass
class Stopped:
    """How ``fit`` ended: "done", or the signal name that stopped it (a checkpoint was saved)."""

    reason: str
    step: int
    checkpoint: Path | None

    @property
    def exit_code(self) -> int:
        return 0 if self.reason == "done" else 128 + int(getattr(signal, self.reason, signal.SIGTERM))

    def result(self, outputs: dict[str, Path] | None = None, metrics: dict[str, Any] | None = None) -> StageResult:
        """The training stage's result: stopped early (a signal) or complete, at which step, from where."""
        return StageResult(outputs=outputs or {}, metrics=metrics or {},
                           stopped=None if self.reason == "done" else self.reason, step=self.step,
                           checkpoint=self.checkpoint)


class NonFiniteLoss(ScratchError):
    pass


def device_type(name: str) -> str:
    """"cuda" or "cpu" for train.device ("auto": CUDA when available)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def select_device(name: str, d: Dist) -> torch.device:
    if device_type(name) == "cuda":
        if not torch.cuda.is_available():
            raise ScratchError("train.device = \"cuda\" but no CUDA GPU is available",
                               "use train.device=cpu (or auto), or install a CUDA build of torch")
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def auto_threads() -> int:
    """train.num_threads=0: one thread per idle core, or 0 (torch's own choice) when OMP_NUM_THREADS is set.

    Oversubscribed cores make torch's worker threads wait on each other: on a 2-core machine with a load
    of 12, 2 threads trained 0.15x as fast as 1 (docs/benchmarks.md)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return 0  # the launcher decided (torchrun: 1 per process)
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return 0
    return max(1, min(cores, cores - round(busy)))


def configure_torch(cfg: TrainingConfig) -> None:
    """Threads, determinism and matmul precision; call before building the model."""
    t = cfg.train
    threads = t.num_threads or auto_threads()
    if threads:
        torch.set_num_threads(threads)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required for deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them


class Trainer:
    def __init__(
        self,
        cfg: TrainingConfig,
        model: nn.Module,
        train_source: Any,
        *,
        loss_fn: LossFn = lm_loss,
        val_batches: list[Batch] | None = None,
        tokenizer: Any = None,
        dist_info: Dist | None = None,
        device: torch.device | None = None,
        token_counter: Callable[[Batch], int] = count_tokens,
        model_config: dict[str, Any] | None = None,
        layout: Layout | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or Dist()
        self.device = device or torch.device("cpu")
        self.train_source = train_source
        self.loss_fn = loss_fn
        self.val_batches = val_batches or []
        self.tokenizer = tokenizer
        self.token_counter = token_counter
        self.model_config = model_config if model_config is not None else to_dict(getattr(model, "cfg", {}))
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.step = 0
        self.tokens_seen = 0
        self.last_val: float | None = None
        self._stop: str | None = None
        self.resumed_from: Path | None = None
        # Shown when a run must be restarted (a dead peer); pre-training sets the exact command.
        self.resume_command = "the same command with --resume"
        self._collective = "start-up"  # what the processes were doing together, for a dead-peer message
        self._lock_out_dir()
        self.peers = self._gather_peers()

        t = cfg.train
        self.parallel = t.parallel if self.dist.enabled else "none"
        self.aliases = ckpt.tied_aliases(model)
        self.num_params = sum(p.numel() for p in model.parameters())
        bf16 = t.precision == "bf16"
        if layout is None and (t.tp > 1 or t.pp > 1):
            raise ScratchError(f"train.tp={t.tp}, train.pp={t.pp}: tensor/pipeline parallelism is for "
                               "`scratchllm train` (pre-training) only", "set train.tp=1 and train.pp=1 here")
        self.layout = layout or Layout(dp=self.dist.world_size, dp_rank=self.dist.rank)
        self.pipeline = None
        if self.layout.nd:  # train/mesh.py: pp stages, tp, AC, compile, FSDP2 over "dp"
            lo = self.layout
            self.parallel = f"tp{lo.tp}-pp{lo.pp}-dp{lo.dp}" + (" fsdp" if lo.dp > 1 else "")
            pdtype = torch.bfloat16 if bf16 and self.device.type == "cuda" else None
            self.model, self.pipeline = parallelize(model, lo, t, self.device, pdtype)
            self.train_model = self.model
            model = self.model
        else:
            model.to(self.device)
            apply_ac(model, t.activation_checkpointing)
            if t.compile:
                apply_compile(model, t.compile_scope)
            self.model = model  # unwrapped (FSDP2 shards it in place; names never change)
            if self.parallel == "fsdp":
                apply_fsdp(model, torch.bfloat16 if bf16 and self.device.type == "cuda" else None)
                self.train_model: nn.Module = model
            elif self.parallel == "ddp":
                self.train_model = apply_ddp(model, self.dist, self.device)
            else:
                self.train_model = model
        self.optimizer = build_optimizer(model, cfg.optim, self.device.type)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # Each group's peak lr (Muon's matrices and AdamW's have their own); the schedule scales them all.
        self.peak_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        )
        # Each process gets its own stream for dropout and sampling.
        seed_everything(cfg.seed + 1000 * self.dist.rank)

    # --- one run per directory; naming a dead peer --------------------------------------------------

    def _lock_out_dir(self) -> None:
        """Rank 0 locks out_dir (one run per directory); every rank learns whether it could."""
        error = None
        if self.dist.is_main:
            try:
                runlock.acquire(self.out_dir)
            except ScratchError as e:
                error = e
        if self.dist.enabled:
            failed = all_reduce_sum(torch.tensor([1.0 if error else 0.0], device=self.device), self.dist)
            if failed.item() and error is None:
                error = ScratchError(f"{self.out_dir} is in use by another run", "see rank 0's message")
        if error is not None:
            raise error

    def _gather_peers(self) -> list[tuple[int, str]]:
        """(pid, host) of every rank, so that a dead one can be named later."""
        me = (os.getpid(), socket.gethostname())
        if not self.dist.enabled:
            return [me]
        peers: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(peers, me)
        return peers

    def _dead_peer(self, e: BaseException, last_ckpt: Path | None) -> ScratchError | None:
        """A ScratchError naming the lost rank and the collective, if ``e`` is a peer's failure."""
        text = str(e)
        markers = ("closed by peer", "reset by peer", "Broken pipe", "Connection refused", "NCCL", "gloo",
                   "timed out", "Timed out")
        if not self.dist.enabled or not (isinstance(e, dist.DistError) or any(m in text for m in markers)):
            return None

        others = [r for r in range(len(self.peers)) if r != self.dist.rank]
        # The peer's sockets close while it is still exiting: give it a moment to be gone. torchrun
        # SIGTERMs the survivors meanwhile; this process is stopping anyway, so let it say why first.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if main_thread else None
        try:
            for _ in range(50):
                dead = [r for r in others if not _alive(*self.peers[r])]
                if dead:
                    break
                time.sleep(0.1)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        who = (", ".join(f"rank {r} (pid {self.peers[r][0]})" for r in dead) + (" has" if len(dead) == 1 else " have")
               + " exited" if dead else "another rank stopped answering (on another host, or stuck)")
        where = f"the last checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        return ScratchError(
            f"rank {self.dist.rank} lost its peers during {self._collective}: {who}; {where} "
            f"({type(e).__name__}: {text.splitlines()[0][:200] if text else ''})",
            "see the dead rank's own output for why it stopped (killed, out of memory, crashed), fix that, "
            f"then restart every process with: {self.resume_command}",
        )

    # --- one optimizer step -------------------------------------------------------------------------

    def _grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        if self.parallel == "ddp" and not enabled:
            return self.train_model.no_sync()
        if self.layout.nd:
            if self.pipeline is None and self.layout.dp > 1:
                self.train_model.set_requires_gradient_sync(enabled)
            return contextlib.nullcontext()
        if self.parallel == "fsdp":
            self.train_model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def _grad_norm(self) -> torch.Tensor:
        clip = self.cfg.optim.grad_clip
        if self.pipeline is not None:
            return self.pipeline.grad_norm(self.params, clip)
        grads = [p.grad for p in self.params if p.grad is not None]
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor partial over the shards
            norm = norm.full_tensor()
        return norm

    def accumulate_gradients(self, batches: list[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward and backward over the micro-batches of one step, each weighted 1/len(batches).

        Gradients end up as those of the mean loss over all micro-batches (and, after the DDP/FSDP
        reduction on the last one, over all processes). Returns this process's mean loss (a tensor).
        """
        self.train_model.train()
        k = len(batches)
        if self.pipeline is not None:
            with self.autocast():
                return self.pipeline.forward_backward(batches, k), {}
        loss_sum = torch.zeros((), device=self.device)
        extra: dict[str, float] = {}
        for i, batch in enumerate(batches):
            # tp: the loss is computed on vocab-sharded logits, forward and backward (train/tp.py)
            with self._grad_sync(i == k - 1), loss_parallel_context(self.layout.tp > 1):
                with self.autocast():
                    loss, metrics = self.loss_fn(self.train_model, batch)
                (loss / k).backward()
            loss_sum += to_local(loss.detach()).float()
            for key, value in metrics.items():
                extra[key] = extra.get(key, 0.0) + float(value) / k
        return loss_sum / k, extra

    def train_step(self, batches: list[Batch]) -> dict[str, Any]:
        """One optimizer step over the micro-batches; returns loss, grad_norm, lr, finite and loss_fn metrics.

        The update is skipped (weights untouched) when the loss or gradient norm is not finite.
        """
        factor = lr_factor(self.step, self.cfg.schedule, self.cfg.train.max_steps)
        lr = self.cfg.optim.lr * factor
        for g, peak in zip(self.optimizer.param_groups, self.peak_lrs, strict=True):
            g["lr"] = peak * factor
        step = self.step + 1
        comm = "FSDP all-gather/reduce-scatter" if self.parallel == "fsdp" else "DDP gradient all-reduce"
        self._collective = f"step {step}'s forward/backward ({comm})"
        loss, extra = self.accumulate_gradients(batches)
        self._collective = f"step {step}'s gradient-norm and loss all-reduce"
        norm = self._grad_norm()
        stop = torch.tensor(1.0 if self._stop else 0.0, device=self.device)
        # One collective per step: mean loss, grad norm (equal on all ranks) and "a rank was signalled".
        summary = all_reduce_sum(torch.stack([loss, norm.float().to(self.device), stop]), self.dist)
        loss_v, norm_v, stop_v = summary.tolist()
        loss_v /= self.dist.world_size // self.layout.pp  # pp: only last-stage ranks hold a loss
        norm_v /= self.dist.world_size
        finite = math.isfinite(loss_v) and math.isfinite(norm_v)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if stop_v > 0 and not self._stop:
            self._stop = "SIGTERM"  # another rank was signalled
        return {"loss": loss_v, "grad_norm": norm_v, "lr": lr, "finite": finite, **extra}

    # --- validation and samples ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the validation batches, averaged over all processes."""
        if not self.val_batches:
            return None
        self._collective = f"validation at step {self.step}"
        self.model.eval()
        total = torch.zeros(2, device=self.device)
        counts = self.pipeline is None or self.pipeline.has_last
        for batch in self.val_batches:
            with self.autocast():
                if self.pipeline is not None:
                    loss = self.pipeline.eval_loss(to_device(batch, self.device))
                else:
                    with loss_parallel_context(self.layout.tp > 1):
                        loss, _ = self.loss_fn(self.model, to_device(batch, self.device))
            total += torch.stack([to_local(loss).float(), torch.full((), float(counts), device=self.device)])
        self.model.train()
        total = all_reduce_sum(total, self.dist)
        return float(total[0] / total[1])

    @torch.no_grad()
    def sample(self) -> list[str]:
        """Continuations of the configured prompts, one engine batch (scratchllm.infer); prompt j seeded seed + j."""
        if self.tokenizer is None or not self.cfg.eval.sample_prompts or not self.cfg.eval.sample_tokens:
            return []
        if self.layout.nd:
            if self.dist.is_main:
                print("note: no sample generations under train.tp/train.pp (the sampler needs the whole model); "
                      "sample from the saved checkpoint with `scratchllm generate`", file=sys.stderr)
            return []
        if self.parallel != "fsdp" and not self.dist.is_main:
            return []  # with FSDP every rank must run the forward (it all-gathers weights); seeds match on all ranks
        e = self.cfg.eval
        stance = getattr(torch.compiler, "set_stance", None)
        ctx = stance("force_eager") if stance and self.cfg.train.compile else contextlib.nullcontext()
        ids = [self.tokenizer.encode(p) or [self.tokenizer.eos_id] for p in e.sample_prompts]
        with ctx:
            new = sample_tokens(self.model, ids, e.sample_tokens, e.temperature, e.top_k, self.cfg.seed,
                                getattr(self.tokenizer, "eos_id", None), self.autocast)
        self.model.train()
        return [p + self.tokenizer.decode(n) for p, n in zip(e.sample_prompts, new, strict=True)]

    # --- checkpoints --------------------------------------------------------------------------------

    def _gather_states(self) -> tuple[dict, dict]:
        if self.pipeline is not None:  # each rank holds a stage: merge the pieces on rank 0
            return gather_full_states(self.model, self.optimizer)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=opts), get_optimizer_state_dict(
            self.model, self.optimizer, options=opts
        )

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank takes part in gathering)."""
        check_data = getattr(self.train_source, "check_verified", None)
        if check_data is not None:
            check_data()  # never save a checkpoint that trained on data failing its checksums
        self._collective = f"the checkpoint gather at step {self.step}"
        model_state, optim_state = self._gather_states()
        rngs = [ckpt.rng_state()]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        path, error = None, None
        if self.dist.is_main:
            state = {
                "tokens_seen": self.tokens_seen,
                "schedule": {"kind": self.cfg.schedule.kind, "lr": self.optimizer.param_groups[0]["lr"]},
                "data": ckpt.to_json(self.train_source.state_dict()),
                "rng": rngs,
                "world_size": self.dist.world_size,
                "val_loss": self.last_val,
                "config": to_dict(self.cfg),
            }
            try:
                path = ckpt.save_checkpoint(self.ckpt_root, self.step, model_state, optim_state, state,
                                            self.model_config, self.aliases, self.cfg.checkpoint.keep_last)
            except ScratchError as e:
                error = e
        if self.dist.enabled:  # every rank learns whether rank 0 managed to save
            failed = all_reduce_sum(torch.tensor([1.0 if error else 0.0], device=self.device), self.dist)
            if failed.item() and error is None:
                error = ScratchError("rank 0 failed to save a checkpoint", "see rank 0's message above")
        if error is not None:
            raise error
        return path

    def start(self, resume: bool = False, path: Path | None = None, what: str = "run") -> Path | None:
        """Where the run starts: the checkpoint ``path``, the latest one in out_dir (``resume``; none yet:
        step 0), or step 0 in an out_dir that holds no earlier run. Returns the checkpoint resumed."""
        if path is not None:
            return self.resume(path)
        if not resume:
            ckpt.refuse_existing_run(self.ckpt_root, self.out_dir, what)
            return None
        found = self.resume()
        if found is None and self.dist.is_main:
            print(f"note: --resume: no checkpoint in {self.ckpt_root} yet, starting from step 0", file=sys.stderr)
        return found

    def resume(self, path: Path | None = None) -> Path | None:
        """Load ``path`` (default: the latest checkpoint in out_dir); returns it, or None if none exists."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(path) if path is not None else ckpt.latest_checkpoint(self.ckpt_root)
        if path is None:
            return None
        c = ckpt.load_checkpoint(path)
        ckpt.check_model_config(c.state["model_config"], self.model_config, path)
        self._check_schedule(c.state.get("config"), path)
        expected = {k: v for k, v in self.model.state_dict().items() if k not in self.aliases}
        found = {k: v for k, v in c.model_state.items() if k not in self.aliases}
        optim_state = c.optim_state
        if self.pipeline is not None:  # this rank's stage: its own part of the full checkpoint
            found = {k: v for k, v in found.items() if k in expected}
            optim_state = optimizer_part(optim_state, set(self.model.state_dict()))
        check_state(expected, found, path / "model.safetensors")
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, {k: c.model_state[k] for k in self.model.state_dict()}, options=opts)
        try:
            set_optimizer_state_dict(self.model, self.optimizer, optim_state, options=opts)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ScratchError(
                f"checkpoint {path}: the optimizer state does not match this run's trainable parameters ({e})",
                "resume with the same model and the same frozen/trainable parameters, or start a new run",
            ) from None
        self.step, self.tokens_seen = c.step, int(c.state["tokens_seen"])
        self.last_val = c.state.get("val_loss")
        self.train_source.load_state_dict(ckpt.from_json(c.state["data"]))
        rngs = c.state["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        elif self.dist.is_main:
            print(f"note: checkpoint was written by {len(rngs)} processes, this run has {self.dist.world_size}: "
                  "random streams (dropout) are re-seeded, the data order is unchanged", file=sys.stderr)
        self.resumed_from = path
        return path

    def _check_schedule(self, saved: dict[str, Any] | None, path: Path) -> None:
        """Refuse to resume on a different learning-rate schedule unless train.allow_schedule_change."""
        if not isinstance(saved, dict):
            return
        now = to_dict(self.cfg)
        keys = [("train", "max_steps"), ("optim", "lr"), ("optim", "muon_lr"), ("schedule", None)]
        changed = []
        for section, key in keys:
            old, new = saved.get(section, {}), now.get(section, {})
            old, new = (old.get(key), new.get(key)) if key else (old, new)
            if old != new:
                changed.append(f"{section}.{key}: {old} -> {new}" if key else f"[{section}]: {old} -> {new}")
        if not changed:
            return
        if not getattr(self.cfg.train, "allow_schedule_change", False):
            raise ScratchError(
                f"checkpoint {path} was trained on a different learning-rate schedule ({'; '.join(changed)}); "
                "resuming would change the schedule mid-run",
                "resume with the original values, or add train.allow_schedule_change=true to continue on the new "
                "schedule from this step",
            )
        if self.dist.is_main:
            print(f"note: resuming on a changed schedule ({'; '.join(changed)}): from the checkpoint's step on, "
                  "the learning rate follows the new one", file=sys.stderr)

    # --- the loop -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop:  # a second signal: stop now, without a checkpoint (exit 128 + signum)
                signal.signal(signum, signal.SIG_DFL)
                raise Interrupted(signum)
            self._stop = name
            if self.dist.is_main:
                print(f"\n{name} received: saving a checkpoint after this step, then stopping "
                      "(send it again to stop at once)", file=sys.stderr, flush=True)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _memory(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"mem_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
        return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def _peak_flops(self) -> float:
        if self.cfg.log.peak_flops:
            return self.cfg.log.peak_flops
        if self.device.type != "cuda":
            return 0.0
        name = torch.cuda.get_device_name(self.device)
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 0.0)

    def fit(self) -> Stopped:
        cfg, main = self.cfg, self.dist.is_main
        max_steps = cfg.train.max_steps
        if main:
            ckpt.remove_stale_temporaries(self.ckpt_root)
        tracker = Tracker(
            self.out_dir, main, to_dict(cfg), resume_step=self.step if self.resumed_from else None,
            tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb, wandb_project=cfg.log.wandb_project,
            run_info={"world_size": self.dist.world_size, "device": str(self.device), "parallel": self.parallel,
                      "torch": torch.__version__, "resumed_from": str(self.resumed_from or "")},
        )
        seq_tokens = None
        flops_fn = getattr(self.model, "flops_per_token", None)
        peak = self._peak_flops()
        bar = tqdm(total=max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (main and cfg.log.progress), file=sys.stderr)
        window_tokens, window_time = 0, 0.0  # tokens/s counts training only, not eval/samples/saving
        last_ckpt: Path | None = self.resumed_from

        def due(interval: int) -> bool:
            return bool(interval) and self.step % interval == 0

        ok = False
        try:
            with self._signals():
                while self.step < max_steps:
                    t0 = time.perf_counter()
                    batches = [to_device(self.train_source.next_batch(), self.device)
                               for _ in range(cfg.train.grad_accum)]
                    tokens = sum(self.token_counter(b) for b in batches) * self.layout.dp
                    if seq_tokens is None and isinstance(batches[0], tuple | list):
                        seq_tokens = batches[0][0].shape[-1]
                    result = self.train_step(batches)
                    if not result.pop("finite"):
                        raise self._non_finite(result, last_ckpt)
                    self.step += 1
                    self.tokens_seen += tokens
                    window_tokens += tokens
                    window_time += time.perf_counter() - t0
                    tok_s = window_tokens / max(window_time, 1e-9)
                    bar.update(1)
                    bar.set_postfix_str(f"loss {result['loss']:.4f}  {tok_s:,.0f} tok/s", refresh=False)
                    final = self.step == max_steps
                    if due(cfg.log.interval) or final or self._stop:
                        row = {**result, "tokens": self.tokens_seen, "tokens_per_s": tok_s, **self._memory()}
                        if flops_fn is not None and peak and seq_tokens:
                            row["mfu"] = flops_fn(seq_tokens) * tok_s / (peak * self.dist.world_size)
                        tracker.log(self.step, "train", row)
                        window_tokens, window_time = 0, 0.0
                    if due(cfg.eval.interval) or final:
                        self.last_val = self.evaluate()
                        if self.last_val is not None:
                            tracker.log(self.step, "val", {"loss": self.last_val})
                            if main:
                                bar.write(f"step {self.step}: train loss {result['loss']:.4f}, "
                                          f"val loss {self.last_val:.4f}, lr {result['lr']:.2e}")
                    if due(cfg.checkpoint.interval) or final or self._stop:
                        last_ckpt = self.save()
                    # Samples after the save: a failure while sampling must never cost the checkpoint.
                    if due(cfg.eval.sample_interval) or final:
                        for prompt, text in zip(cfg.eval.sample_prompts, self.sample(), strict=False):
                            tracker.log(self.step, "sample", {"prompt": prompt, "text": text})
                            if main:
                                bar.write(f"sample @ step {self.step}: {text!r}")
                    if self._stop:
                        ok = True
                        return Stopped(self._stop, self.step, last_ckpt)
            ok = True
            return Stopped("done", self.step, last_ckpt)
        except RuntimeError as e:
            error = self._dead_peer(e, last_ckpt)
            if error is None:
                raise
            raise error from e
        finally:
            bar.close()
            tracker.close(quiet=not ok)  # after another error, a write error in closing is not news
            if main:
                runlock.release(self.out_dir)

    def close(self) -> None:
        """Release out_dir without running ``fit`` (``fit`` releases it itself)."""
        if self.dist.is_main:
            runlock.release(self.out_dir)

    def _non_finite(self, result: dict[str, Any], last_ckpt: Path | None) -> NonFiniteLoss:
        step = self.step + 1
        where = (f"the last good checkpoint {last_ckpt} is kept" if last_ckpt
                 else "no checkpoint was written before it")
        return NonFiniteLoss(
            f"loss is {result['loss']} (grad norm {result['grad_norm']}) at step {step}: training stopped "
            f"without applying this update; {where}",
            "lower optim.lr or raise schedule.warmup_steps (bf16: try precision=fp32), check the data, then "
            "rerun with --resume to continue from the last checkpoint",
        )


def _alive(pid: int, host: str) -> bool:
    """Whether process ``pid`` still runs (True when it is on another host: we cannot tell)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its launcher) is dead too
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
