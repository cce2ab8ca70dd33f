"""DPO step time and memory: ours (DPOObjective on the one Trainer) vs trl's DPOTrainer, same model and pairs.

Both train the same tiny model (ours; trl gets it exported to Hugging Face Llama with the chat template
in its tokenizer) on the same preference pairs from the embedded checkable tasks, rendered in the same
chat format (trl's conversational path gives exactly our token ids), with a frozen reference model
computing its log-probs on the fly, AdamW, constant lr, gradient clipping 1.0, fp32:

* ours: ``Trainer.train_step`` with ``DPOObjective`` (policy forward/backward + reference forward);
* trl:  ``DPOTrainer.train()``, each optimizer step timed by a callback (on_step_begin -> on_step_end).

Runs alternate ours / trl ``--repeats`` times (other work on the machine hits both alike); we report
medians of the per-step times after ``--warmup`` steps. Peak memory of one step (after a first one
allocated the optimizer state): CUDA: torch.cuda.max_memory_allocated; CPU: live tensors tracked by
PyTorch's MemTracker.

    python benchmarks/align.py [--model configs/model/1m.toml] [--pairs 8] [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchllm.align.config import AlignConfig  # noqa: E402
from scratchllm.align.data import PairBatchSource, checkable_pairs, collate_pairs, encode_pairs  # noqa: E402
from scratchllm.align.dpo import DPOObjective  # noqa: E402
from scratchllm.config import load_config, read_toml  # noqa: E402
from scratchllm.finetune.instruct_data import embedded_instructions  # noqa: E402
from scratchllm.model.hf import export_hf  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.tokenizer import train_bpe  # noqa: E402
from scratchllm.train.loop import Trainer  # noqa: E402

LR, BETA = 1e-4, 0.1


def make_pairs(n: int):
    examples = embedded_instructions(n, "train", seed=0, kinds=("add", "reverse", "upper", "corpus_qa"),
                                     system_prompt=True)
    return checkable_pairs(examples, seed=0)


def ours(args, model_cfg, tok, pairs, device) -> tuple[list[float], int]:
    torch.manual_seed(0)
    policy, reference = Transformer(model_cfg), Transformer(model_cfg)
    reference.load_state_dict(policy.state_dict())
    encoded = encode_pairs(pairs, tok, model_cfg.context_length)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(AlignConfig, None, [f'out_dir="{out}"', f"optim.lr={LR}", "optim.weight_decay=0.0",
                                              "schedule.kind=constant", "schedule.warmup_steps=0",
                                              f"train.device={device.type}", "log.progress=false",
                                              "log.tensorboard=false"])
        src = PairBatchSource(encoded, args.pairs, tok.pad_id, 0)
        trainer = Trainer(cfg, policy, src, loss_fn=DPOObjective(reference.to(device), BETA), device=device)
        times = []
        for _ in range(args.warmup + args.steps):
            batch = {k: v.to(device) for k, v in src.next_batch().items()}
            sync(device)
            t0 = time.perf_counter()
            trainer.train_step([batch])
            sync(device)
            times.append(time.perf_counter() - t0)
        # Memory on the first `pairs` pairs: the batch trl's measurement uses (same token ids).
        batch = {k: v.to(device) for k, v in collate_pairs(encoded[: args.pairs], tok.pad_id).items()}
        memory = peak_memory(device, lambda: trainer.train_step([batch]), policy, trainer.optimizer, reference)
    return times[args.warmup:], memory


def trl(args, model_cfg, tok, pairs, device, hf_dir: Path) -> tuple[list[float], int]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    export_hf(Transformer(model_cfg), hf_dir, tok)
    policy = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    rows = [{"prompt": p.messages, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            times.append(time.perf_counter() - self.t0)

    steps = args.warmup + args.steps
    config = DPOConfig(output_dir=str(hf_dir / "trl"), report_to=[], use_cpu=device.type == "cpu", beta=BETA,
                       learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                       max_grad_norm=1.0, per_device_train_batch_size=args.pairs, max_steps=steps,
                       save_strategy="no", logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0,
                       seed=0, max_length=model_cfg.context_length)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(hf_dir), callbacks=[Timer()])
    trainer.train()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(args.pairs)]))
    optimizer = trainer.optimizer

    def step():
        trainer.training_step(trainer.model, batch)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    memory = peak_memory(device, step, trainer.model, optimizer, trainer.ref_model)
    return times[args.warmup:], memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device, step, model, optimizer, reference) -> int:
    """Peak bytes during one optimizer step (the optimizer state already exists), reference weights included."""
    if device.type == "cuda":
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated()
    from torch.distributed._tools.mem_tracker import MemTracker

    step()
    # MemTracker hooks the gradients of every module it sees run, so the frozen reference must look
    # trainable while it measures; it still runs under no_grad and is not in the optimizer.
    reference.requires_grad_(True)
    try:
        tracker = MemTracker()
        tracker.track_external(model, optimizer, reference)
        with tracker:
            step()
    finally:
        reference.requires_grad_(False)
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "configs/model/1m.toml"))
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per step (2x sequences)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    import transformers
    import trl as trl_pkg

    tok = train_bpe(["x"], vocab_size=263)  # bytes + the chat special tokens
    model_cfg = ModelConfig(**{**read_toml(args.model), "vocab_size": tok.vocab_size})
    pairs = make_pairs(max(64, args.pairs * 4))
    lengths = [len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids))
               for e in encode_pairs(pairs, tok, model_cfg.context_length)]
    print(f"DPO step: {Transformer(model_cfg).num_params() / 1e6:.2f}M-parameter model ({Path(args.model).name}, "
          f"vocab {tok.vocab_size}), {args.pairs} pairs/step, mean pair length {statistics.mean(lengths):.0f} "
          f"tokens, {args.device}, torch {torch.__version__}, trl {trl_pkg.__version__}, transformers "
          f"{transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    results: dict[str, list[float]] = {"ours": [], "trl": []}
    memory: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t, memory["ours"] = ours(args, model_cfg, tok, pairs, device)
            results["ours"] += t
            with contextlib.redirect_stdout(io.StringIO()):
                t, memory["trl"] = trl(args, model_cfg, tok, pairs, device, Path(tmp) / f"hf{r}")
            results["trl"] += t
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'':6} {'median step':>12} {'peak memory':>12}")
    for k in ("ours", "trl"):
        print(f"{k:6} {med[k] * 1e3:10.1f} ms {memory[k] / 2**20:9.1f} MiB")
    print(f"ratio ours/trl: step time {med['ours'] / med['trl']:.2f}x, memory {memory['ours'] / memory['trl']:.2f}x "
          f"(< 1: ours is faster / smaller)")


if __name__ == "__main__":
    main()
