"""``scratchllm model info|init``: size, memory and FLOPs of a preset; a randomly initialised checkpoint."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config
from scratchllm.errors import ScratchError

if TYPE_CHECKING:  # torch is imported lazily so that `scratchllm --help` stays fast
    from scratchllm.model.model import ModelConfig

DEFAULT_CONFIG = "configs/model/10m.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model", help="inspect model presets, create a checkpoint",
                              description="Inspect model presets (parameters, memory, FLOPs) and create checkpoints.")
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    i = sub.add_parser("info", help="print parameter count, memory estimate and FLOPs per token",
                       description="Print parameter count, memory estimate and FLOPs per token of a model config "
                                   "(a TOML preset, or --checkpoint DIR).")
    add_config_arguments(i, DEFAULT_CONFIG, "n_layers=12")
    i.add_argument("--checkpoint", help="a model, fine-tuning run or training run directory instead of --config")
    i.add_argument("--seq-len", type=int, help="sequence length for FLOPs and activations (default: context_length)")
    i.set_defaults(func=cmd_info)

    n = sub.add_parser("init", help="save a randomly initialised model (config.json + model.safetensors)")
    add_config_arguments(n, DEFAULT_CONFIG, "n_layers=12")
    n.add_argument("--out", required=True, help="output directory")
    n.add_argument("--seed", type=int, default=0)
    n.set_defaults(func=cmd_init)


def _load_cfg(args: argparse.Namespace) -> ModelConfig:
    from scratchllm.model.checkpoint import CONFIG_FILE, read_config
    from scratchllm.model.model import ModelConfig

    if getattr(args, "checkpoint", None):
        if args.overrides:
            raise ScratchError("overrides cannot be combined with --checkpoint", "drop the key=value arguments")
        from scratchllm.model.paths import resolve_model_dir

        return read_config(resolve_model_dir(args.checkpoint) / CONFIG_FILE)
    return load_config(ModelConfig, args.config, args.overrides)


def activation_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 4) -> int:
    """Approximate activation memory kept for backward, per token (no activation checkpointing).

    Counted from the tensors autograd saves: per layer about 8*d_model (norm inputs/outputs,
    attention input/output, rotated q) + 2*kv_dim (rotated k, v) + 4*d_ff (gate, up, silu, product);
    plus the final norm and the vocab-sized log-probabilities of the loss. Checked against a real
    count in tests/model/test_model.py. Under bf16 autocast most of these halve.
    """
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    per_layer = 8 * cfg.d_model + 2 * kv_dim + 4 * cfg.d_ff
    return bytes_per_value * (cfg.n_layers * per_layer + 3 * cfg.d_model + cfg.vocab_size)


def info_lines(cfg: ModelConfig, seq_len: int | None = None) -> list[str]:
    import torch

    from scratchllm.model.model import Transformer

    with torch.device("meta"):  # shapes only: no memory, no init time, even for big presets
        model = Transformer(cfg)
    T = seq_len or cfg.context_length
    n, n_matmul = model.num_params(), model.num_params(non_embedding=True)
    block = model.layers[0]
    attn = sum(p.numel() for p in block.attn.parameters())
    mlp = sum(p.numel() for p in block.mlp.parameters())
    per_layer = sum(p.numel() for p in block.parameters())
    emb = model.tok_emb.weight.numel()
    flops = model.flops_per_token(T)
    act = activation_bytes_per_token(cfg) * T

    def mib(b: float) -> str:
        return f"{b / 2**20:,.1f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"

    return [
        f"shape        d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
        f"n_kv_heads={cfg.n_kv_heads} head_dim={cfg.head_dim} d_ff={cfg.d_ff}",
        f"             vocab_size={cfg.vocab_size} context_length={cfg.context_length} pos_emb={cfg.pos_emb} "
        f"tie_embeddings={str(cfg.tie_embeddings).lower()}",
        f"parameters   {n:,} ({n / 1e6:.2f}M); in matmuls {n_matmul:,}",
        f"             token embedding {emb:,}{' (shared with the output head)' if cfg.tie_embeddings else ''}; "
        f"per layer {per_layer:,} (attention {attn:,}, MLP {mlp:,})",
        f"FLOPs/token  {flops / 1e6:,.1f} MFLOP training (6N + 12*L*H*Q*T at T={T}), "
        f"{flops / 3e6:,.1f} MFLOP forward only",
        f"memory       weights {mib(4 * n)} fp32, {mib(2 * n)} bf16; "
        f"training state (AdamW: weights + grads + 2 moments, fp32) {mib(16 * n)}",
        f"             activations ~{mib(act)} per sequence of {T} tokens (fp32; about half under bf16 autocast)",
    ]


def cmd_info(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    if args.seq_len is not None and args.seq_len < 1:
        raise ScratchError(f"--seq-len must be at least 1, got {args.seq_len}")
    print(f"model: {args.checkpoint or args.config}")
    for line in info_lines(cfg, args.seq_len):
        print("  " + line)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from scratchllm.model.model import Transformer

    cfg = _load_cfg(args)
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    model.save_pretrained(args.out)
    print(f"saved a randomly initialised model ({model.num_params() / 1e6:.2f}M parameters) to {args.out}")
    return 0
