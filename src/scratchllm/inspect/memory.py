"""``inspect memory``: how many bytes one training step needs, and the largest model of the same shape
family that fits a device (the "train a 10x larger model on the same hardware" exercise).

Peak = weights + gradients + optimizer state + activations (+ the transients of the loss head and
of the optimizer update), counted tensor by tensor from what autograd keeps for backward:

  per block (x: B*T*d_model elements, f: B*T*d_ff, kv: B*T*n_kv_heads*head_dim)
    attention (math path): norm 2x, q 1x, repeated k and v 2x, probabilities B*H*T*T, output 1x
    attention (SDPA / flash): norm 2x, q 1x, k and v 2*kv, output 1x, log-sum-exp B*H*T, output copy 1x
    residual 2x, MLP norm 2x, SwiGLU 4f
  head: final norm 2x, log-softmax B*T*vocab; backward briefly adds 2 * B*T*vocab (gradients of it)
  AdamW (foreach): two fp32 moments per trainable weight, one temporary of that size in the update

bf16 autocast keeps fp32 master weights, stores most saved activations in 2 bytes and adds a bf16
copy of every matrix for the step. Activation checkpointing keeps one tensor per block and
recomputes one block at a time. FSDP over N ranks divides weights, gradients and optimizer state by
N (plus one gathered block). LoRA trains r*(in+out) weights per adapted matrix; QLoRA also stores
the frozen matrices in 4 bits (0.5 byte + one fp32 scale per 64 weights, less with double
quantization). The estimate is checked against the measured peak of a real CPU training step (see
docs/inspect.md for the margin); ``--measure`` repeats that check on your machine.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from scratchllm.config import from_dict, read_toml
from scratchllm.errors import ScratchError
from scratchllm.inspect import report
from scratchllm.inspect.config import MemoryConfig
from scratchllm.io import atomic_write_text
from scratchllm.model.checkpoint import read_json
from scratchllm.model.model import ModelConfig, Transformer
from scratchllm.model.paths import resolve_model_dir
from scratchllm.stage import StageResult
from scratchllm.train.config import OptimConfig
from scratchllm.train.optim import build_optimizer
from scratchllm.train.parallel import apply_ac

UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 10**3, "KIB": 2**10, "M": 2**20, "MB": 10**6, "MIB": 2**20,
         "G": 2**30, "GB": 10**9, "GIB": 2**30, "T": 2**40, "TB": 10**12, "TIB": 2**40}
LORA_TARGETS = 7  # q, k, v, o, gate, up, down: the default LoRA targets (finetune.lora.ALL_LINEAR)


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int  # saved for backward at the end of the forward pass
    transient: int  # loss-head gradients at the start of backward, or the optimizer's temporary
    peak: int

    def parts(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "transient": self.transient}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS:
        raise ScratchError(f"cannot read the memory size {text!r}", "write it like 24GiB, 80GB or 512MiB")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def param_counts(c: ModelConfig) -> dict[str, int]:
    """Parameters by place, without building the model (so 70B-sized configs cost nothing)."""
    hd = c.head_dim
    attn = c.d_model * c.n_heads * hd * 2 + c.d_model * c.n_kv_heads * hd * 2
    mlp = 3 * c.d_model * c.d_ff
    block = attn + mlp + 2 * c.d_model
    emb = c.vocab_size * c.d_model
    head = 0 if c.tie_embeddings else c.vocab_size * c.d_model
    pos = c.context_length * c.d_model if c.pos_emb == "learned" else 0
    lora = c.n_layers * (LORA_TARGETS and (  # r*(in+out) per adapted matrix, per unit of rank
        (c.d_model + c.n_heads * hd) * 2 + (c.d_model + c.n_kv_heads * hd) * 2 + 3 * (c.d_model + c.d_ff)))
    return {"embedding": emb + pos, "head": head, "blocks": c.n_layers * block,
            "matrices": c.n_layers * (attn + mlp), "largest_block": block, "final_norm": c.d_model,
            "total": emb + pos + head + c.n_layers * block + c.d_model, "lora_per_rank": lora}


def activation_elements(c: ModelConfig, B: int, T: int, ac: bool, bf16: bool) -> tuple[float, float]:
    """(bytes saved for backward at the end of forward, bytes of the loss head's backward transient)."""
    hd, H, KV = c.head_dim, c.n_heads, c.n_kv_heads
    x, f, kv = B * T * c.d_model, B * T * c.d_ff, B * T * KV * hd
    # Bytes per element: fp32 everywhere, or under bf16 autocast 2 bytes for matmul inputs/outputs while
    # the residual stream, norms and softmax stay fp32.
    w, lo = (4, 2) if bf16 else (4, 4)
    if c.attn_impl == "math":
        attn = 2 * x * w + x * lo + 2 * x * lo + B * H * T * T * (w + lo if bf16 else w) + x * lo
    else:
        attn = 2 * x * w + x * lo + 2 * kv * lo + B * H * T * 4 + 2 * x * lo
    mlp = 2 * x * w + 4 * f * lo
    block = attn + x * w + mlp + x * w  # + the residual after attention and the block's output
    logits = B * T * c.vocab_size
    head = 2 * x * w + logits * 4 + (logits * 2 if bf16 else 0)  # log-softmax (fp32), bf16 logits
    if ac:
        saved = c.n_layers * x * w + x * w + head
        return saved, max(2 * logits * 4, block)  # recomputing one block, or the head's gradients
    return c.n_layers * block + x * w + head, 2 * logits * 4


def estimate(c: ModelConfig, batch_size: int, seq_len: int, precision: str = "fp32", ac: str = "none",
             fsdp_ranks: int = 1, method: str = "full", lora_rank: int = 8) -> Estimate:
    pc = param_counts(c)
    P = pc["total"]
    bf16 = precision == "bf16"
    N = max(1, fsdp_ranks)
    if method == "full":
        trainable = P
        weights = 4 * P / N + (4 * pc["largest_block"] * 2 if N > 1 else 0)  # + two gathered blocks
    else:
        trainable = lora_rank * pc["lora_per_rank"]
        frozen = pc["matrices"]
        if method == "qlora":  # NF4 codes + fp32 block scales (double quantization shrinks the scales ~4x)
            frozen_bytes = frozen * 0.5 + frozen / 64 * 1.0
        else:
            frozen_bytes = frozen * 4
        weights = (frozen_bytes + 4 * (P - frozen) + 4 * trainable) / N
    if bf16:
        weights += 2 * (pc["matrices"] + pc["embedding"] + pc["head"])  # bf16 copies cached by autocast
    grads = 4 * trainable / N
    optim = 8 * trainable / N
    saved, head_transient = activation_elements(c, batch_size, seq_len, ac == "full", bf16)
    if method == "full":  # the output head's weight gradient is made by the very first backward op
        head_transient += 4 * c.vocab_size * c.d_model / N
    fwd_bwd = weights + optim + saved + head_transient
    update = weights + grads + optim + 4 * trainable / N  # foreach AdamW's temporary (sqrt of the 2nd moment)
    peak = max(fwd_bwd, update)
    transient = head_transient if fwd_bwd >= update else 4 * trainable / N
    return Estimate(P, trainable, int(weights), int(grads), int(optim), int(saved), int(transient), int(peak))


def family(c: ModelConfig, heads: int) -> ModelConfig:
    """The config of the same shape family with `heads` query heads: same head_dim, GQA ratio, vocabulary,
    context and depth-to-width ratio; d_ff scaled with d_model."""
    group = c.n_heads // c.n_kv_heads
    d = heads * c.head_dim
    layers = max(1, round(c.n_layers * d / c.d_model))
    d_ff = max(32, 32 * round(c.d_ff * d / c.d_model / 32))
    return replace(c, d_model=d, n_heads=heads, n_kv_heads=heads // group, n_layers=layers, d_ff=d_ff)


def largest_fitting(c: ModelConfig, budget: int, **kw: Any) -> tuple[ModelConfig, Estimate] | None:
    group = c.n_heads // c.n_kv_heads
    best = None
    heads = group
    while heads <= 4096:
        cand = family(c, heads)
        est = estimate(cand, **kw)
        if est.peak > budget:
            break
        best = (cand, est)
        heads += group
    return best


def load_model_config(cfg: MemoryConfig) -> ModelConfig:
    data: dict[str, Any] = {}
    if cfg.model:
        p = Path(cfg.model)
        if p.is_dir():
            data = read_json(resolve_model_dir(p) / "config.json")
        else:
            data = read_toml(p)
            # A stage preset with a [model] table (a model preset plus overrides: from_dict merges them),
            # or a model preset.
            data = dict(data.get("model", data))
    data.update(cfg.model_keys)
    model_cfg = from_dict(ModelConfig, data, "model")
    model_cfg.validate()
    return model_cfg


def check(cfg: MemoryConfig, c: ModelConfig) -> int:
    T = cfg.seq_len or c.context_length
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.fsdp_ranks < 1 or cfg.lora_rank < 1:
        raise ScratchError("batch size, grad accumulation, FSDP ranks and LoRA rank must be at least 1")
    if not 1 <= T <= c.context_length:
        raise ScratchError(f"sequence length {T} does not fit the model's context_length={c.context_length}",
                           "pass --seq-len between 1 and the context length")
    if cfg.precision not in ("fp32", "bf16"):
        raise ScratchError(f"unknown precision {cfg.precision!r}", "use fp32 or bf16")
    if cfg.activation_checkpointing not in ("none", "full"):
        raise ScratchError(f"unknown activation checkpointing {cfg.activation_checkpointing!r}", "use none or full")
    if cfg.method not in ("full", "lora", "qlora"):
        raise ScratchError(f"unknown method {cfg.method!r}", "use full, lora or qlora")
    return T


def run(cfg: MemoryConfig) -> StageResult:
    """Write memory.png, memory.html and memory.json under cfg.out_dir; metrics: the figures the summary
    reports (``metrics["summary"]``: the summary's text, as the command prints it)."""
    c = load_model_config(cfg)
    T = check(cfg, c)
    budget = parse_bytes(cfg.device_memory) if cfg.device_memory else 0
    kw = dict(batch_size=cfg.batch_size, seq_len=T, precision=cfg.precision, ac=cfg.activation_checkpointing,
              fsdp_ranks=cfg.fsdp_ranks, method=cfg.method, lora_rank=cfg.lora_rank)
    est = estimate(c, **kw)
    pc = param_counts(c)
    if budget:
        frozen_weights = est.weights
        if frozen_weights > budget:
            raise ScratchError(f"the weights alone take {human(frozen_weights)}, more than the device memory "
                               f"{human(budget)}",
                               "use a smaller model, --fsdp-ranks N, --method qlora, or a device with more memory")
    # The same step under each technique, one change at a time, for the comparison table and chart.
    base = dict(kw, precision="fp32", ac="none", fsdp_ranks=1, method="full")
    k = max(2, cfg.grad_accum)
    variants = {
        "fp32": estimate(c, **base),
        "bf16 autocast": estimate(c, **dict(base, precision="bf16")),
        "activation ckpt": estimate(c, **dict(base, ac="full")),
        # The same sequences per step in k micro-batches: activations shrink k times, the rest stays.
        f"grad accum x{k} (micro-batch {max(1, cfg.batch_size // k)})": estimate(
            c, **dict(base, batch_size=max(1, cfg.batch_size // k))),
        f"FSDP x{max(2, cfg.fsdp_ranks)}": estimate(c, **dict(base, fsdp_ranks=max(2, cfg.fsdp_ranks))),
        f"LoRA r={cfg.lora_rank}": estimate(c, **dict(base, method="lora")),
        f"QLoRA r={cfg.lora_rank}": estimate(c, **dict(base, method="qlora")),
        "this config": est,
    }
    out = Path(cfg.out_dir)
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(variants)
    colours = {"weights": "#2563eb", "gradients": "#f59e0b", "optimizer": "#16a34a", "activations": "#dc2626",
               "transient": "#a855f7"}
    left = [0.0] * len(names)
    for part, colour in colours.items():
        vals = [variants[n].parts()[part] / 2**30 for n in names]
        ax.barh(names, vals, left=left, color=colour, label=part)
        left = [a + b for a, b in zip(left, vals)]
    ax.scatter([variants[n].peak / 2**30 for n in names], names, marker="|", s=400, color="black", zorder=3,
               label="peak")
    if budget:
        ax.axvline(budget / 2**30, color="black", linestyle="--", label=f"device {human(budget)}")
    ax.invert_yaxis()
    ax.set_xlabel("GiB (bars: every component; |: the peak, when activations and gradients do not coexist)")
    ax.set_title(f"{pc['total'] / 1e6:.1f}M params, batch {cfg.batch_size} x {T} tokens", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=7, frameon=False)
    png = report.save_figure(fig, out / "memory.png")

    rows = [[n, human(e.weights), human(e.gradients), human(e.optimizer), human(e.activations),
             human(e.transient), human(e.peak)] for n, e in variants.items()]
    lines = [f"model: {pc['total'] / 1e6:.2f}M params ({c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, "
             f"vocab {c.vocab_size}); batch {cfg.batch_size} x {T} tokens"
             + (f", {cfg.grad_accum} micro-batches per step" if cfg.grad_accum > 1 else ""),
             f"{cfg.precision}, checkpointing {cfg.activation_checkpointing}, {cfg.method}"
             + (f", FSDP x{cfg.fsdp_ranks}" if cfg.fsdp_ranks > 1 else "") + ":",
             *(f"  {k:12s} {human(v)}" for k, v in est.parts().items()),
             f"  {'peak':12s} {human(est.peak)}"]
    sections = [("This step", "<pre>" + report.esc("\n".join(lines)) + "</pre>"),
                ("Techniques, one at a time", report.table(
                    ["setting", "weights", "gradients", "optimizer", "activations", "transient", "peak"], rows)
                 + report.img(png, "memory breakdown"))]
    metrics: dict[str, Any] = {"params": pc["total"], "seq_len": T, **est.parts(), "peak": est.peak,
                               "variants": {n: e.peak for n, e in variants.items()}}
    if budget:
        fit = largest_fitting(c, budget, **kw)
        metrics["device_memory"] = budget
        metrics["largest_fitting_params"] = fit[1].params if fit else None
        if fit:
            fc, fe = fit
            msg = (f"largest model of this shape family that fits {human(budget)}: "
                   f"{fe.params / 1e6:.1f}M params (d_model {fc.d_model}, {fc.n_layers} layers, {fc.n_heads} heads, "
                   f"d_ff {fc.d_ff}), peak {human(fe.peak)} = {fe.params / pc['total']:.1f}x this model")
        else:
            msg = f"no model of this family fits {human(budget)} with these settings; lower the batch or sequence"
        lines.append(msg)
        sections.append(("What fits", f"<p>{report.esc(msg)}</p>"))
    if cfg.measure:
        if cfg.method != "full" or cfg.fsdp_ranks > 1:
            raise ScratchError("--measure runs a plain single-process full training step",
                               "drop --method/--fsdp-ranks to measure")
        m = measure_peak(c, cfg.batch_size, T, cfg.precision, cfg.activation_checkpointing)
        err = (est.peak - m["peak"]) / m["peak"]
        metrics["measured_peak"] = m["peak"]
        msg = (f"measured on this CPU: peak {human(m['peak'])} (predicted {human(est.peak)}, {100 * err:+.1f}%)")
        lines.append(msg)
        sections.append(("Measured", f"<p>{report.esc(msg)}</p>"))
    report.write_page(out / "memory.html", "inspect memory", sections)
    atomic_write_text(out / "memory.json", json.dumps({"config": asdict(c), "estimate": asdict(est)}, indent=1) + "\n")
    lines.append(f"wrote {out / 'memory.png'} and {out / 'memory.html'}")
    metrics["summary"] = "\n".join(lines)
    return StageResult(outputs={"png": out / "memory.png", "html": out / "memory.html", "json": out / "memory.json"},
                       metrics=metrics)


# --- measurement: one real training step on the CPU, in a fresh process ----------------------------------


def measure_peak(c: ModelConfig, batch_size: int, seq_len: int, precision: str = "fp32", ac: str = "none",
                 timeout: float = 600) -> dict[str, int]:
    """Peak bytes of the second training step (forward, backward, clip, AdamW) in a child process.

    The child makes glibc return every block of 64 KiB or more to the system when freed, so the
    resident set follows the live tensors; it resets the kernel's high-water mark (clear_refs) just
    before the step and reads it after: peak = tensors alive before the step + the rise above them.
    """
    if sys.platform != "linux":
        raise ScratchError("measuring needs Linux (/proc/self/clear_refs)", "run without --measure")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="1")
    arg = json.dumps({"config": asdict(c), "batch_size": batch_size, "seq_len": seq_len, "precision": precision,
                      "ac": ac})
    proc = subprocess.run([sys.executable, "-m", "scratchllm.inspect.memory", arg], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ScratchError(f"the measuring process failed: {proc.stderr.strip()[-500:]}",
                           "try a smaller batch or model")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _probe(arg: str) -> dict[str, int]:
    a = json.loads(arg)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = from_dict(ModelConfig, a["config"])
    model = Transformer(c).train()
    apply_ac(model, a["ac"])
    opt = build_optimizer(model, OptimConfig(), "cpu")
    B, T = a["batch_size"], a["seq_len"]
    x = torch.randint(0, c.vocab_size, (B, T))
    y = torch.randint(0, c.vocab_size, (B, T))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a["precision"] == "bf16" \
        else contextlib.nullcontext

    def step() -> None:
        with autocast():
            loss = model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # allocates the optimizer state and loads lazily initialised kernels
    gc.collect()
    tensors = sum(p.numel() * p.element_size() for p in model.parameters())
    tensors += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                   if torch.is_tensor(t))
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    step()
    rise = _status("VmHWM") - before
    return {"peak": tensors + rise, "tensors_before": tensors, "rise": rise}


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1])))
