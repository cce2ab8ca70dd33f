"""``scratchllm model info|init``: size, memory and FLOPs of a preset; a randomly initialised checkpoint."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from scratchllm.cli import add_alias, add_config_arguments, config_overrides
from scratchllm.config import load_config, parse_override
from scratchllm.errors import ScratchError
from scratchllm.model.config import ModelInfoConfig, ModelInitConfig

if TYPE_CHECKING:  # torch is imported lazily so that `scratchllm --help` stays fast
    from scratchllm.model.model import ModelConfig

DEFAULT_CONFIG = "configs/model/10m.toml"
C = TypeVar("C")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model", help="inspect model presets, create a checkpoint",
                              description="Inspect model presets (parameters, memory, FLOPs) and create checkpoints.")
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    i = sub.add_parser("info", help="print parameter count, memory estimate and FLOPs per token",
                       description="Print parameter count, memory estimate and FLOPs per token of a model config "
                                   "(a TOML preset, or checkpoint=DIR). Besides ModelConfig's keys: checkpoint, "
                                   "seq_len (ModelInfoConfig in scratchllm.model.config).")
    add_config_arguments(i, DEFAULT_CONFIG, "n_layers=12")
    add_alias(i, "--checkpoint", key="checkpoint",
              help="a model, fine-tuning run or training run directory instead of --config")
    add_alias(i, "--seq-len", key="seq_len", type=int,
              help="sequence length for FLOPs and activations (default: context_length)")
    i.set_defaults(func=cmd_info)

    n = sub.add_parser("init", help="save a randomly initialised model (config.json + model.safetensors)",
                       description="Save a randomly initialised model of a model preset (--config) with key=value "
                                   "overrides. Besides ModelConfig's keys: out_dir, seed (ModelInitConfig in "
                                   "scratchllm.model.config).")
    add_config_arguments(n, DEFAULT_CONFIG, "n_layers=12")
    add_alias(n, "--out", key="out_dir", help="output directory")
    add_alias(n, "--seed", key="seed", type=int, help="default 0")
    n.set_defaults(func=cmd_init)


def split_command_keys(cls: type[C], items: Sequence[str]) -> tuple[C, list[str]]:
    """(the command's own config from the overrides naming its keys, the rest: ModelConfig overrides)."""
    keys = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    own = [item for item in items if parse_override(item)[0] in keys]
    return load_config(cls, None, own), [item for item in items if item not in own]


def _load_cfg(config: str | None, overrides: list[str], checkpoint: str = "") -> ModelConfig:
    from scratchllm.model.checkpoint import CONFIG_FILE, read_config
    from scratchllm.model.model import ModelConfig

    if checkpoint:
        if overrides:
            raise ScratchError("model overrides cannot be combined with a checkpoint (--checkpoint)",
                               "drop the model key=value arguments")
        from scratchllm.model.paths import resolve_model_dir

        return read_config(resolve_model_dir(checkpoint) / CONFIG_FILE)
    return load_config(ModelConfig, config, overrides)


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
    info, overrides = split_command_keys(ModelInfoConfig, config_overrides(args))
    cfg = _load_cfg(args.config, overrides, info.checkpoint)
    if info.seq_len < 0:
        raise ScratchError(f"seq_len (--seq-len) must be at least 1, got {info.seq_len}",
                           "pass a positive length, or leave it out for the context length")
    print(f"model: {info.checkpoint or args.config}")
    for line in info_lines(cfg, info.seq_len or None):
        print("  " + line)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from scratchllm.model.model import Transformer

    init, overrides = split_command_keys(ModelInitConfig, config_overrides(args))
    cfg = _load_cfg(args.config, overrides)
    if not init.out_dir:
        raise ScratchError("no output directory given", "pass out_dir=DIR (or --out DIR)")
    torch.manual_seed(init.seed)
    model = Transformer(cfg)
    model.save_pretrained(init.out_dir)
    print(f"saved a randomly initialised model ({model.num_params() / 1e6:.2f}M parameters) to {init.out_dir}")
    return 0
