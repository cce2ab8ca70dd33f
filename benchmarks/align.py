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

``--mode rl-step``: one RL iteration (rollout through the generation engine + optimisation of that batch)
of PPO, GRPO and RLOO on the same model and the same number of replies, alternating methods; median
iteration time, the rollout share (sampling + scoring), and peak memory of one iteration.

    python benchmarks/align.py --mode rl-step [--replies 32] [--group 4] [--iterations 5] [--repeats 2]

``--mode compare``: DPO, PPO, GRPO and RLOO from the same SFT model (a 2-layer model fitted to the
format of the parity task "Even or odd: N" with random labels: right by chance) against the same
checker reward, at an equal budget of replies (RL: sampled replies; DPO: training sequences). Reports
held-out task accuracy, KL(policy || SFT) per reply, held-out conversation perplexity, generated tokens
and wall time; ``--plot`` writes the reward curves and final metrics as a PNG.

    python benchmarks/align.py --mode compare [--budget 3072] [--plot docs/img/align_compare.png]
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

from scratchllm.align.config import COMMAND_CONFIGS, AlignConfig, DPOConfig  # noqa: E402
from scratchllm.align.data import PairBatchSource, checkable_pairs, collate_pairs, encode_pairs  # noqa: E402
from scratchllm.align.dpo import DPOObjective  # noqa: E402
from scratchllm.config import load_config, read_toml  # noqa: E402
from scratchllm.tasks.instruct import embedded_instructions  # noqa: E402
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
        cfg = load_config(DPOConfig, None, [f'out_dir="{out}"', f"optim.lr={LR}", "optim.weight_decay=0.0",
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


# --- RL iteration: PPO vs GRPO vs RLOO ----------------------------------------------------------------


def rl_parts(method: str, args, model_cfg, tok, device, out: str):
    """(trainer, source, tracked modules) for one RL method with ``args.replies`` replies per iteration."""
    from scratchllm.align.grpo import GRPOObjective, RolloutSource, checkable_reward, group_advantages
    from scratchllm.align.ppo import ActorCritic, PPOObjective, PPORolloutSource
    from scratchllm.align.reward import RewardModel
    from scratchllm.align.rloo import RLOOObjective, rloo_prepare

    torch.manual_seed(0)
    policy, reference = Transformer(model_cfg), Transformer(model_cfg)
    reference.load_state_dict(policy.state_dict())
    reference.to(device).requires_grad_(False).eval()
    examples = embedded_instructions(256, "train", seed=0, kinds=("add", "reverse"), system_prompt=False)
    n, g = args.replies, args.group
    ppo = [f"ppo.minibatch_size={n // args.ppo_minibatches}", f"ppo.epochs={args.ppo_epochs}"]
    cfg = load_config(COMMAND_CONFIGS[method], None, [
        f'out_dir="{out}"', f"optim.lr={LR}", "optim.weight_decay=0.0", "schedule.kind=constant",
        "schedule.warmup_steps=0", f"train.device={device.type}", "log.progress=false", "log.tensorboard=false",
        f"rollout.max_new_tokens={args.new_tokens}", f"rollout.prompts_per_step={n if method == 'ppo' else n // g}",
        *(ppo if method == "ppo" else [])])
    if method == "ppo":
        critic = RewardModel.from_policy(policy)
        model = ActorCritic(policy, critic)
        src = PPORolloutSource(model, reference, tok, examples, checkable_reward, cfg.rollout, cfg.ppo, 0)
        trainer = Trainer(cfg, model, src, loss_fn=PPOObjective(cfg.ppo, 1.0, src), device=device)
        return trainer, src, (model, reference)
    if method == "grpo":
        src = RolloutSource(policy, tok, examples, checkable_reward, cfg.rollout, 0, g, 1,
                            lambda b: {**b, "advantages": group_advantages(b["rewards"], g)})
        loss = GRPOObjective(reference, 0.05)
    else:
        src = RolloutSource(policy, tok, examples, checkable_reward, cfg.rollout, 0, g, 1,
                            rloo_prepare(policy, reference, g, 0.05))
        loss = RLOOObjective()
    trainer = Trainer(cfg, policy, src, loss_fn=loss, device=device)
    return trainer, src, (policy, reference)


def rl_iteration(trainer, src, device) -> tuple[float, float]:
    """One rollout and every optimizer step on it: (seconds, rollout seconds)."""
    rollout0 = src.rollout_seconds
    sync(device)
    t0 = time.perf_counter()
    trainer.train_step([{k: v.to(device) for k, v in src.next_batch().items()}])
    from scratchllm.align.ppo import PPORolloutSource

    while isinstance(src, PPORolloutSource) and src._pending and not src._skip:  # PPO: the rest of this rollout
        trainer.train_step([{k: v.to(device) for k, v in src.next_batch().items()}])
    sync(device)
    return time.perf_counter() - t0, src.rollout_seconds - rollout0


class LiveBytes:
    """Peak bytes of live tensor storages while active: a small dispatch-mode tracker (MemTracker refuses
    modules called repeatedly, as generation does). Counts every storage an op creates until it is freed,
    plus ``base`` bytes (weights, optimizer state) that exist throughout."""

    def __init__(self, base: int) -> None:
        self.live, self.peak, self.seen = base, base, set()

    def __enter__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        st = t.untyped_storage()
                        key = st.data_ptr()
                        if key and key not in tracker.seen:
                            tracker.seen.add(key)
                            tracker.live += st.nbytes()
                            tracker.peak = max(tracker.peak, tracker.live)
                            weakref.finalize(st, tracker._free, key, st.nbytes())
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def _free(self, key: int, nbytes: int) -> None:
        if key in self.seen:
            self.seen.discard(key)
            self.live -= nbytes

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def rl_memory(trainer, src, tracked, device) -> int:
    """Peak bytes of one iteration (rollout included), weights, optimizer state and frozen models included."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        rl_iteration(trainer, src, device)
        return torch.cuda.max_memory_allocated()
    tensors = {id(p): p for m in tracked for p in m.parameters()}
    tensors.update({id(t): t for st in trainer.optimizer.state.values() for t in st.values()
                    if isinstance(t, torch.Tensor)})
    base = sum(t.numel() * t.element_size() for t in tensors.values())
    with LiveBytes(base) as live:
        rl_iteration(trainer, src, device)
    return live.peak


def rl_step_main(args, device) -> None:
    tok = train_bpe(["x"], vocab_size=263)
    model_cfg = ModelConfig(**{**read_toml(args.model), "vocab_size": tok.vocab_size})
    methods = ("ppo", "grpo", "rloo")
    print(f"RL iteration: {Transformer(model_cfg).num_params() / 1e6:.2f}M-parameter model ({Path(args.model).name}), "
          f"{args.replies} replies/iteration of {args.new_tokens} new tokens (GRPO/RLOO: {args.replies // args.group} "
          f"prompts x {args.group}; PPO: {args.replies} prompts, {args.ppo_epochs} epoch(s) x {args.ppo_minibatches} "
          f"minibatch(es), separate critic), {device}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    times: dict[str, list[float]] = {m: [] for m in methods}
    shares: dict[str, list[float]] = {m: [] for m in methods}
    memory: dict[str, int] = {}
    for _ in range(args.repeats):
        for m in methods:
            with tempfile.TemporaryDirectory() as out:
                trainer, src, tracked = rl_parts(m, args, model_cfg, tok, device, out)
                rl_iteration(trainer, src, device)  # warm-up: optimizer state, caches
                for _ in range(args.iterations):
                    t, r = rl_iteration(trainer, src, device)
                    times[m].append(t)
                    shares[m].append(r / t)
                memory[m] = rl_memory(trainer, src, tracked, device)
    med = {m: statistics.median(times[m]) for m in methods}
    print(f"{'':6} {'median iteration':>17} {'rollout share':>14} {'peak memory':>12}")
    for m in methods:
        print(f"{m:6} {med[m] * 1e3:14.1f} ms {statistics.median(shares[m]) * 100:12.0f} % "
              f"{memory[m] / 2**20:9.1f} MiB")
    for m in ("grpo", "rloo"):
        print(f"ratio ppo/{m}: iteration time {med['ppo'] / med[m]:.2f}x, memory {memory['ppo'] / memory[m]:.2f}x")


# --- the comparison: DPO, PPO, GRPO, RLOO from one SFT model -----------------------------------------


def parity_sets():
    import random

    from scratchllm.tasks.instruct import InstructExample

    def ex(n: int) -> InstructExample:
        a = "even" if n % 2 == 0 else "odd"
        return InstructExample([{"role": "user", "content": f"Even or odd: {n}"},
                                {"role": "assistant", "content": a}], a, "parity")

    nums = list(range(1000))
    random.Random(0).shuffle(nums)
    return [ex(n) for n in nums[:600]], [ex(n) for n in nums[600:700]]


FAST = ["train.device=cpu", "log.progress=false", "log.tensorboard=false", "eval.interval=0",
        "checkpoint.interval=0", "log.interval=1", "schedule.kind=constant", "schedule.warmup_steps=5",
        "eval.sample_tokens=0", "optim.weight_decay=0.0", "rollout.max_new_tokens=6",
        "rollout.eval_max_new_tokens=6"]


def sft_model(tok, root: Path, train) -> Path:
    import random

    from scratchllm.finetune.sft import SFTBatchSource, encode_conversations, sft_loss

    rng = random.Random(1)
    chats = [[*e.prompt, {"role": "assistant", "content": rng.choice(["even", "odd"])}] for e in train]
    cfg = load_config(AlignConfig, None, [f'out_dir="{root / "sft"}"', "train.max_steps=150", "optim.lr=3e-3",
                                          *FAST, "log.interval=50"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, context_length=96, d_model=48, n_layers=2, n_heads=4,
                                    n_kv_heads=2, d_ff=128))
    Trainer(cfg, model, SFTBatchSource(encode_conversations(tok, chats, 96), 16, tok.pad_id, 0),
            loss_fn=sft_loss).fit()
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "tokenizer")
    return root


def compare_main(args) -> None:
    import json

    from scratchllm.align import run
    from scratchllm.align.compare import drift

    train, heldout = parity_sets()
    tok = train_bpe(["x"], vocab_size=263)
    b = args.budget
    # Replies per optimizer step: PPO 32 per rollout in 4 minibatches x 2 epochs; GRPO 8 x 8; RLOO 16 x 4.
    methods = {
        "dpo": (run.run_dpo, [f"train.max_steps={max(1, b // 32)}", "train.batch_size=16", "optim.lr=2e-3",
                              "dpo.beta=0.1", "dpo.sft_coef=1.0", "data.policy_negatives=false"]),
        "ppo": (run.run_ppo, [f"train.max_steps={max(1, b // 32) * 8}", "optim.lr=1e-3", "rollout.prompts_per_step=32",
                              "ppo.minibatch_size=8", "ppo.epochs=2", "ppo.kl_coef=0.05"]),
        "grpo": (run.run_grpo, [f"train.max_steps={max(1, b // 64)}", "optim.lr=1e-3", "rollout.prompts_per_step=8",
                                "grpo.group_size=8", "grpo.kl_coef=0.05"]),
        "rloo": (run.run_rloo, [f"train.max_steps={max(1, b // 64)}", "optim.lr=1e-3", "rollout.prompts_per_step=16",
                                "rloo.group_size=4", "rloo.kl_coef=0.05"]),
    }
    chosen = [m for m in methods if m in args.methods.split(",")]
    print(f"compare: parity task, 600 training / 100 held-out prompts, budget {b} replies per method "
          f"(DPO: {b} training sequences), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    results, curves = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = sft_model(tok, Path(tmp), train)
        sft = Transformer.from_pretrained(root / "policy")
        base = [f'models.policy="{root / "policy"}"', f'models.tokenizer="{root / "tokenizer"}"', *FAST]
        for m in chosen:
            fn, extra = methods[m]
            cfg = load_config(COMMAND_CONFIGS[m], None, [*base, f'out_dir="{Path(tmp) / m}"', *extra])
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                report = fn(cfg, examples=(train, heldout)).metrics
            seconds = time.perf_counter() - t0
            trained = Transformer.from_pretrained(Path(tmp) / m / "model")
            d = drift(trained, sft, tok, heldout, 6, seed=1)
            if "sft" not in results:
                results["sft"] = {"task_accuracy": report["heldout_before"]["task_accuracy"],
                                  **drift(sft, sft, tok, heldout, 6, seed=1)}
            results[m] = {"task_accuracy": report["heldout_after"]["task_accuracy"], **d, "seconds": seconds,
                          "steps": report["steps"], "generated_tokens": report.get("generated_tokens", 0),
                          "rollout_seconds": report.get("rollout_seconds", 0.0)}
            rows = [json.loads(line) for line in (Path(tmp) / m / "metrics.jsonl").read_text().splitlines()]
            curves[m] = [(r["step"], r.get("reward", r.get("rewards/accuracies"))) for r in rows
                         if r.get("kind") == "train"]
    print(f"{'':6} {'accuracy':>9} {'KL to SFT':>10} {'held-out ppl':>13} {'gen. tokens':>12} {'wall':>8}")
    for m, r in results.items():
        print(f"{m:6} {r['task_accuracy']:9.2f} {r['kl']:10.3f} {r['heldout_ppl']:13.3f} "
              f"{r.get('generated_tokens', 0):12d} {r.get('seconds', 0):7.0f}s")
    if args.plot:
        plot(results, curves, methods, b, Path(args.plot))


def plot(results, curves, methods, budget, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, pts in curves.items():
        if not pts or m == "dpo":
            continue
        steps = max(s for s, _ in pts)
        axes[0].plot([s / steps * budget for s, _ in pts], [r for _, r in pts], label=m.upper(), lw=1)
    axes[0].set(xlabel="replies sampled", ylabel="training reward (checker)", title="reward during training")
    axes[0].legend()
    names = list(results)
    for i, key in enumerate(("task_accuracy", "kl")):
        axes[1].bar([j + i * 0.4 for j in range(len(names))], [results[n][key] for n in names], width=0.4,
                    label={"task_accuracy": "held-out accuracy", "kl": "KL to SFT (nats/reply)"}[key])
    axes[1].set_xticks([j + 0.2 for j in range(len(names))], [n.upper() for n in names])
    axes[1].set(title=f"after {budget} replies (DPO: sequences)")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "configs/model/1m.toml"))
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per step (2x sequences)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--mode", choices=("dpo", "rl-step", "compare"), default="dpo")
    p.add_argument("--replies", type=int, default=32, help="rl-step: replies per iteration")
    p.add_argument("--group", type=int, default=4, help="rl-step: GRPO/RLOO replies per prompt")
    p.add_argument("--new-tokens", type=int, default=32, help="rl-step: max new tokens per reply")
    p.add_argument("--ppo-epochs", type=int, default=1, help="rl-step: PPO epochs per rollout")
    p.add_argument("--ppo-minibatches", type=int, default=1, help="rl-step: PPO minibatches per epoch")
    p.add_argument("--iterations", type=int, default=5, help="rl-step: timed iterations per repeat")
    p.add_argument("--budget", type=int, default=3072, help="compare: replies (DPO: sequences) per method")
    p.add_argument("--methods", default="dpo,ppo,grpo,rloo", help="compare: which methods")
    p.add_argument("--plot", default="", help="compare: write the figure here (PNG)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.mode == "rl-step":
        return rl_step_main(args, device)
    if args.mode == "compare":
        return compare_main(args)

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
