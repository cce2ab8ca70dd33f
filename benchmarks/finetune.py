"""Fine-tuning cost: full vs LoRA vs QLoRA (ours), and ours vs `peft` (+ bitsandbytes) on the same model.

For each variant: trainable parameters, resident weight bytes (parameters + buffers), peak memory
of one training step (forward + backward + AdamW step, after a warm-up step so the optimizer state
exists; CPU: live tensors tracked by PyTorch's MemTracker, CUDA: torch.cuda.max_memory_allocated)
and the median step time over ``--steps`` steps.

* ours:  our Transformer with ``scratchllm.finetune`` (nothing / LoRA / NF4 + LoRA), stepped by THE
         training loop (``Trainer.train_step``: grad clipping, NaN guard, AdamW on trainable params);
* peft:  the same weights exported to ``transformers`` Llama, ``peft.get_peft_model`` with the same
         rank/alpha/targets (QLoRA: loaded in 4-bit NF4 with double quantization by bitsandbytes),
         stepped by a plain loop (forward with labels, backward, clip, AdamW step, zero_grad).

Variants run one after another in this process, ``--repeats`` rounds; within a round each ours
variant is followed by its peft twin (full, lora, peft lora, qlora, peft qlora) and odd rounds run
in reverse order, so background load hits every side alike. Step time = median over all rounds;
the ours/peft ratio is also printed per round (ratio of that round's medians) to show its spread.
Ratios are printed against our full fine-tuning and against the peft twin. The 1-minute load
average is printed before and after.

    python benchmarks/finetune.py [--model configs/model/10m.toml] [--batch 4] [--seq 256] [--steps 5]
                                  [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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

from scratchllm.config import from_dict, load_config, read_toml  # noqa: E402
from scratchllm.finetune.config import FinetuneConfig  # noqa: E402
from scratchllm.finetune.lora import count_trainable  # noqa: E402
from scratchllm.finetune.run import prepare_model  # noqa: E402
from scratchllm.model.checkpoint import state_dict_bytes  # noqa: E402
from scratchllm.model.hf import export_hf  # noqa: E402
from scratchllm.model.model import ModelConfig, Transformer  # noqa: E402
from scratchllm.train.loop import Trainer  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_bytes(device: torch.device, model: torch.nn.Module, opt: torch.optim.Optimizer, step) -> int:
    """Peak live tensor bytes during one training step."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)
    from torch.distributed._tools.mem_tracker import MemTracker

    class FrozenAwareTracker(MemTracker):
        # MemTracker hooks every parameter's gradient and fails on frozen ones (LoRA bases); without
        # the hooks gradients are still counted in the total, only not labelled as gradients.
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    tracker = FrozenAwareTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def timed(device: torch.device, step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


class Ours:
    def __init__(self, method: str, args, model_cfg: ModelConfig, out_dir: Path) -> None:
        over = [f"method={method}", f'out_dir="{out_dir / method}"', f"lora.r={args.r}", f"lora.alpha={2 * args.r}",
                "lora.dropout=0.0", "optim.lr=1e-4", f"train.batch_size={args.batch}", "log.progress=false",
                'base.checkpoint=""']
        cfg = load_config(FinetuneConfig, None, over)
        torch.manual_seed(0)
        model = Transformer(model_cfg)
        prepare_model(model, cfg)
        self.trainer = Trainer(cfg, model, None, device=args.device)  # type: ignore[arg-type]
        self.model, self.opt = self.trainer.model, self.trainer.optimizer
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, model_cfg.vocab_size, (args.batch, args.seq + 1), generator=g).to(args.device)
        self.batch = (x[:, :-1], x[:, 1:])

    def step(self) -> None:
        self.trainer.train_step([self.batch])


class Peft:
    def __init__(self, method: str, args, hf_dir: Path, vocab: int) -> None:
        import peft
        import transformers

        kw = {}
        if method == "qlora":
            kw["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32)
            kw["device_map"] = str(args.device)
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, **kw)
        hf = hf.to(args.device) if method != "qlora" else hf
        lcfg = peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules=TARGETS)
        self.model = peft.get_peft_model(hf, lcfg)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(args.device)

    def step(self) -> None:
        loss = self.model(input_ids=self.x, labels=self.x).loss  # HF shifts labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def describe(runner, name: str, device: torch.device) -> dict:
    from scratchllm.finetune.nf4 import NF4Linear

    model = runner.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if name.startswith("ours"):
        _, total = count_trainable(model)
    else:
        import bitsandbytes as bnb

        total = sum(p.numel() * (2 if isinstance(p, bnb.nn.Params4bit) else 1) for p in model.parameters())
    assert not any(isinstance(m, NF4Linear) for m in model.modules()) or name == "ours qlora"
    runner.step()  # warm-up: allocates the optimizer state
    peak = peak_bytes(device, model, runner.opt, runner.step)
    return {"trainable": trainable, "total": total, "weights": state_dict_bytes(model), "peak": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="configs/model/10m.toml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r), on all attention/MLP projections")
    ap.add_argument("--no-peft", action="store_true", help="skip the peft/bitsandbytes variants")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import transformers.utils.logging as hf_logging

    hf_logging.disable_progress_bar()

    model_cfg = from_dict(ModelConfig, read_toml(args.model))
    import bitsandbytes
    import peft
    import transformers

    load0 = os.getloadavg()
    print(f"fine-tuning benchmark: model {args.model} ({Transformer(model_cfg).num_params() / 1e6:.1f}M params), "
          f"batch {args.batch} x seq {args.seq}, LoRA r={args.r} on {len(TARGETS)} projections/layer, "
          f"device {args.device}, torch {torch.__version__}, peft {peft.__version__}, "
          f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}, "
          f"Python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    export_hf(Transformer(model_cfg), tmp / "hf")

    names = ["ours full", "ours lora", "ours qlora"] + ([] if args.no_peft else ["peft lora", "peft qlora"])
    order = ["ours full", "ours lora", "peft lora", "ours qlora", "peft qlora"]  # each twin right after ours
    order = [n for n in order if n in names]
    stats: dict[str, dict] = {}
    times: dict[str, list[list[float]]] = {n: [] for n in names}  # per round
    for rep in range(args.repeats):
        for name in (order if rep % 2 == 0 else order[::-1]):
            who, method = name.split()
            runner = (Ours(method, args, model_cfg, tmp) if who == "ours"
                      else Peft(method, args, tmp / "hf", model_cfg.vocab_size))
            if name not in stats:
                stats[name] = describe(runner, name, args.device)
            else:
                runner.step()
            times[name].append(timed(args.device, runner.step, args.steps))
            del runner
            gc.collect()
    load1 = os.getloadavg()
    full = stats["ours full"]
    step_s = {n: statistics.median([x for r in t for x in r]) for n, t in times.items()}
    round_s = {n: [statistics.median(r) for r in t] for n, t in times.items()}
    print(f"\n{'variant':<12}{'trainable':>12}{'% of all':>9}{'weights MiB':>13}{'peak MiB':>10}{'step ms':>9}"
          f"{'peak/full':>10}{'time/full':>10}")
    for n in names:
        s = stats[n]
        print(f"{n:<12}{s['trainable']:>12,}{100 * s['trainable'] / s['total']:>8.2f}%{s['weights'] / 2**20:>13.1f}"
              f"{s['peak'] / 2**20:>10.1f}{1000 * step_s[n]:>9.0f}{s['peak'] / full['peak']:>10.2f}"
              f"{step_s[n] / step_s['ours full']:>10.2f}")
    if not args.no_peft:
        print("\nours / peft (same model, rank, targets):")
        for method in ("lora", "qlora"):
            o, p = stats[f"ours {method}"], stats[f"peft {method}"]
            print(f"  {method:<6} trainable {o['trainable'] / p['trainable']:.2f}x  weights "
                  f"{o['weights'] / p['weights']:.2f}x  peak {o['peak'] / p['peak']:.2f}x  step time "
                  f"{step_s[f'ours {method}'] / step_s[f'peft {method}']:.2f}x")
        print("\nper-round step ms (median of each round) and ratios:")
        for n in names:
            print(f"  {n:<12}" + " ".join(f"{1000 * x:8.0f}" for x in round_s[n]))
        for method in ("lora", "qlora"):
            r = [o / p for o, p in zip(round_s[f"ours {method}"], round_s[f"peft {method}"])]
            print(f"  ours/peft {method:<6}" + " ".join(f"{x:.2f}x" for x in r) + f"  (range {min(r):.2f}-{max(r):.2f}x)")
        for n in names[1:]:
            r = [a / b for a, b in zip(round_s[n], round_s["ours full"])]
            print(f"  {n}/full  " + " ".join(f"{x:.2f}x" for x in r) + f"  (range {min(r):.2f}-{max(r):.2f}x)")
    print(f"\nload average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
