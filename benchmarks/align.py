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

``--mode rollout``: one GRPO-shaped rollout on the engine with a group's repeated prompt prefilled once
(prefix caching, what rollouts do) vs prefilled by every sample; same sampled tokens, median times.

    python benchmarks/align.py --mode rollout [--replies 64] [--group 8] [--new-tokens 16] [--system-prompt]

``--mode compare``: the comparison stage (``align/compare.py``, ``scratchllm align compare``) on a tiny SFT
model: DPO, PPO, GRPO and RLOO against the answer checker and a learned reward model at an equal budget of
generated reply tokens; held-out task accuracy, reward-model score, KL(policy || SFT) per reply, held-out
reply perplexity, generated tokens and wall time. ``--task embedded`` (default): an SFT model trained on
the embedded checkable tasks (add, sub, reverse), a ``--prefix-fraction`` of its answers prefixed
"Sure! " (which the checker refuses: a format flaw the RL methods can fix); ``--task parity``: the tests' parity task with a
format-only SFT model (random labels). Settings: configs/align/compare.toml plus ``--set key=value``.

    python benchmarks/align.py --mode compare [--budget-tokens 4096] [--plot docs/img/align_compare.png]
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


# --- rollouts: a group's repeated prompt prefilled once vs every sample prefilling it -------------------


def rollout_main(args, device) -> None:
    """One GRPO-shaped rollout (``--replies`` = prompts x ``--group``) on the engine, prefix caching on (the
    repeats copy the first sample's cached prompt) vs off (every sample prefills its prompt), alternating."""
    from scratchllm.align.grpo import prompt_ids
    from scratchllm.tokenizer.chat import END
    from scratchllm.infer.engine import Engine
    from scratchllm.infer.sampling import SamplingParams

    tok = train_bpe(["x"], vocab_size=263)
    model_cfg = ModelConfig(**{**read_toml(args.model), "vocab_size": tok.vocab_size})
    torch.manual_seed(0)
    model = Transformer(model_cfg).to(device).eval()
    g = args.group
    examples = embedded_instructions(args.replies // g, "train", seed=0, kinds=("add", "reverse"),
                                     system_prompt=args.system_prompt)
    prompts = [p for p in prompt_ids(tok, [e.prompt for e in examples]) for _ in range(g)]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=0,
                            stop_token_ids=[tok.special_tokens[END]])
    print(f"rollout: {args.replies} replies = {len(examples)} prompts x {g} (mean prompt {statistics.mean(map(len, prompts)):.0f} "
          f"tokens), {args.new_tokens} new tokens, {model_cfg.n_layers}-layer d={model_cfg.d_model} model, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for _ in range(args.repeats):
        for shared in (True, False):
            for _ in range(args.iterations):
                engine = Engine(model, tok, max_slots=len(prompts), prefix_caching=shared)
                sync(device)
                t0 = time.perf_counter()
                outputs[shared] = [c.tokens for c in engine.generate(prompts, params)]
                sync(device)
                times[shared].append(time.perf_counter() - t0)
    assert outputs[True] == outputs[False], "the shared prefill changed the samples"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"prompt prefilled once per group: {med[True] * 1e3:9.1f} ms (median of {len(times[True])})")
    print(f"prefilled by every sample:       {med[False] * 1e3:9.1f} ms")
    print(f"ratio shared/unshared: {med[True] / med[False]:.2f}x (< 1: the shared prefill is faster); same tokens")


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


def sft_model(tok, root: Path, chats: list, steps: int, d_model: int = 48) -> Path:
    """A 2-layer SFT model fitted to ``chats`` (policy and tokenizer directories under ``root``)."""
    from scratchllm.finetune.sft import SFTBatchSource, encode_conversations, sft_loss

    cfg = load_config(AlignConfig, None, [f'out_dir="{root / "sft"}"', f"train.max_steps={steps}", "optim.lr=3e-3",
                                          *FAST, "log.interval=50", "schedule.kind=cosine",
                                          "schedule.warmup_steps=30"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, context_length=96, d_model=d_model, n_layers=2,
                                    n_heads=4, n_kv_heads=2, d_ff=3 * d_model))
    Trainer(cfg, model, SFTBatchSource(encode_conversations(tok, chats, 96), 32, tok.pad_id, 0),
            loss_fn=sft_loss).fit()
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "tokenizer")
    return root


def compare_main(args) -> None:
    """The comparison stage (align/compare.py run) on a tiny SFT model: the parity task (format-only SFT,
    random labels) or the embedded checkable tasks (SFT on add/sub/reverse for ``--sft-steps``)."""
    import random
    import shutil

    from scratchllm.align.compare import CompareConfig, run

    tok = train_bpe(["x"], vocab_size=263)
    kinds = tuple(args.kinds.split(","))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        if args.task == "parity":
            train, heldout = parity_sets()
            examples = (train, heldout)
            rng = random.Random(1)
            chats = [[*e.prompt, {"role": "assistant", "content": rng.choice(["even", "odd"])}] for e in train]
            steps = args.sft_steps or 150
        else:  # a fraction of the SFT answers carry a "Sure! " prefix the checker refuses: a format flaw to fix
            examples = None
            rng = random.Random(2)
            chats = [[*e.prompt, {"role": "assistant", "content": ("Sure! " if rng.random() < args.prefix_fraction
                                                                   else "") + e.answer}]
                     for e in embedded_instructions(3000, "train", 0, kinds, False)]
            steps = args.sft_steps or 2000
        if not (root / "policy").is_dir():
            with contextlib.redirect_stderr(io.StringIO()):
                sft_model(tok, root, chats, steps, args.d_model)
        sft_seconds = time.perf_counter() - t0
        if args.sft_only:
            print(f"SFT model -> {root / 'policy'} ({steps} steps, {sft_seconds:.0f} s)")
            return
        overrides = [f'out_dir="{root / "compare"}"', f'models.policy="{root / "policy"}"',
                     f'models.tokenizer="{root / "tokenizer"}"', "train.device=cpu", "log.progress=false",
                     f"compare.budget_tokens={args.budget_tokens}", f"compare.methods={args.methods.split(',')!r}",
                     f"compare.rewards={args.rewards.split(',')!r}", f"data.kinds={list(kinds)!r}",
                     *args.set]
        cfg = load_config(CompareConfig, ROOT / "configs/align/compare.toml", overrides)
        print(f"compare: {args.task} task{'' if args.task == 'parity' else ' ' + ','.join(kinds)}, SFT model "
              f"{steps} steps ({sft_seconds:.0f} s), budget {args.budget_tokens} reply tokens per RL run, "
              f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads; overrides: {' '.join(args.set) or '-'}", flush=True)
        lines: list[str] = []
        with contextlib.redirect_stderr(io.StringIO()):
            result = run(cfg, examples=examples, say=lines.append)
        print(lines[0])
        print(lines[-1])
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.outputs["plot"], args.plot)
            print(f"plot -> {args.plot}")
    print(f"total {time.perf_counter() - t0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "configs/model/1m.toml"))
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per step (2x sequences)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--mode", choices=("dpo", "rl-step", "rollout", "compare"), default="dpo")
    p.add_argument("--system-prompt", action="store_true", help="rollout: prompts with the system message")
    p.add_argument("--replies", type=int, default=32, help="rl-step: replies per iteration")
    p.add_argument("--group", type=int, default=4, help="rl-step: GRPO/RLOO replies per prompt")
    p.add_argument("--new-tokens", type=int, default=32, help="rl-step: max new tokens per reply")
    p.add_argument("--ppo-epochs", type=int, default=1, help="rl-step: PPO epochs per rollout")
    p.add_argument("--ppo-minibatches", type=int, default=1, help="rl-step: PPO minibatches per epoch")
    p.add_argument("--iterations", type=int, default=5, help="rl-step: timed iterations per repeat")
    p.add_argument("--budget-tokens", type=int, default=4096, help="compare: reply tokens each RL run samples")
    p.add_argument("--methods", default="dpo,ppo,grpo,rloo", help="compare: which methods")
    p.add_argument("--rewards", default="checkable,model", help="compare: which rewards (checkable, model)")
    p.add_argument("--task", choices=("parity", "embedded"), default="embedded", help="compare: prompts and SFT model")
    p.add_argument("--kinds", default="add,sub,reverse", help="compare (embedded): the checkable task kinds")
    p.add_argument("--sft-steps", type=int, default=0, help="compare: SFT steps (0: 150 parity, 2000 embedded)")
    p.add_argument("--d-model", type=int, default=64, help="compare: the SFT model's width")
    p.add_argument("--prefix-fraction", type=float, default=0.5,
                   help="compare (embedded): SFT answers prefixed \"Sure! \" (wrong for the checker)")
    p.add_argument("--sft-only", action="store_true", help="compare: train the SFT model into --out and stop")
    p.add_argument("--out", default="", help="compare: keep the SFT model and runs here (reused if present)")
    p.add_argument("--set", nargs="*", default=[], help="compare: key=value overrides of configs/align/compare.toml")
    p.add_argument("--plot", default="", help="compare: copy the figure here (PNG)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.mode == "rl-step":
        return rl_step_main(args, device)
    if args.mode == "rollout":
        return rollout_main(args, device)
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
