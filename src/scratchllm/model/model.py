"""A Llama-style decoder-only transformer, readable top to bottom.

    tokens -> embedding (+ absolute positions, for the ablation) -> n_layers x Block -> RMSNorm -> head
    Block:  x = x + Attention(RMSNorm(x));  x = x + MLP(RMSNorm(x))            (pre-norm residual)

Attention is causal multi-head attention with grouped-query attention (n_kv_heads key/value heads
shared by groups of n_heads query heads) and rotary position embeddings (RoPE); the MLP is SwiGLU.
Weights use the same layout and RoPE convention as Hugging Face's ``LlamaForCausalLM``, so export
and import (``scratchllm.model.hf``) are renames only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchError

IGNORE_INDEX = -100  # targets equal to this do not count in the loss (PyTorch's cross_entropy default)


@dataclass
class ModelConfig:
    """Shape and hyper-parameters of the network. Presets: configs/model/*.toml."""

    vocab_size: int = 4096
    context_length: int = 256  # longest sequence the model accepts (RoPE tables / position embeddings)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (plain multi-head attention)
    d_ff: int | None = None  # SwiGLU hidden size; None: about 8/3 * d_model, rounded up to a multiple of 32
    pos_emb: Literal["rope", "sinusoidal", "learned"] = "rope"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # share the token embedding with the output head
    dropout: float = 0.0
    init_std: float = 0.02
    attn_impl: Literal["sdpa", "math"] = "sdpa"  # "math": explicit softmax(QK^T)V, the reference path

    def __post_init__(self) -> None:
        # Resolve the defaults so that a saved config.json spells out the exact shape.
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            # 8/3 * d keeps the SwiGLU MLP (three matrices) at the parameter count of a 4*d GELU MLP.
            self.d_ff = max(32, 32 * math.ceil(8 * self.d_model / 3 / 32))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ScratchError(f"model config: {name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ScratchError(
                f"model config: n_heads={self.n_heads} does not divide d_model={self.d_model}",
                "pick n_heads so that d_model / n_heads is a whole number (head_dim, typically 64)",
            )
        if self.n_heads % self.n_kv_heads or self.n_kv_heads > self.n_heads:
            raise ScratchError(
                f"model config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}",
                "each key/value head serves a whole group of query heads: n_kv_heads must divide n_heads",
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ScratchError(
                f"model config: RoPE needs an even head_dim, got d_model/n_heads={self.head_dim}",
                "change d_model or n_heads",
            )
        if self.rope_theta <= 0:
            raise ScratchError(f"model config: rope_theta must be positive, got {self.rope_theta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ScratchError("model config: norm_eps and init_std must be positive")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight. Cheaper than LayerNorm (no mean, no bias), as good in LMs."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # normalise in fp32 even under bf16 autocast: the mean of squares loses precision
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


# --- positions --------------------------------------------------------------------------------------


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (length, head_dim) for rotary embeddings.

    "Rotate-half" layout (as in HF Llama): dimension i is paired with i + head_dim/2, and both halves
    use frequency theta^(-2i/head_dim). Computed in fp32 exactly like Meta's and HF's code, so an
    exported model reproduces our logits bit for bit instead of drifting at long positions.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(length, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + head_dim/2) pair of x (B, heads, T, head_dim) by angle position * freq_i."""
    return x * cos + rotate_half(x) * sin


def sinusoidal_table(d_model: int, length: int) -> torch.Tensor:
    """The fixed absolute encoding of "Attention Is All You Need": sin on even dims, cos on odd dims."""
    pos = torch.arange(length, dtype=torch.float)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return table


# --- the network ------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal self-attention with grouped-query attention (n_kv_heads <= n_heads) and optional RoPE."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer  # which layer's keys/values to read and write in a KV cache
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        self.impl = cfg.attn_impl

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None = None,
        cache: KVCacheView | None = None,
    ) -> torch.Tensor:
        """mask: None for plain causal attention, else a bool (B, 1, T, S) "may attend" mask over the S keys
        (the cache's when one is given, else the T new tokens)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # incremental decoding: store the new keys/values, attend over the cached ones
            k, v = cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=dropout,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        else:
            y = self._math_attention(q, k, v, dropout, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _math_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The textbook formula, kept as the reference the fused SDPA kernel is tested against."""
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # KV head j -> q heads j*g..
        T = q.size(-2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        if mask is None:  # causal, aligned to the last key (T == S in training; T == 1 when decoding)
            S = k.size(-2)
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        probs = F.dropout(scores.masked_fill(~mask, float("-inf")).softmax(dim=-1), dropout)
        if getattr(self, "record_probs", False):  # set by scratchllm.inspect.attention to read the weights
            self.probs = probs.detach()
        return probs @ v


class KVCacheView(Protocol):
    """What the forward needs from a KV cache (the cache itself lives in scratchllm.infer.cache, not on the
    model): one batch's "may attend" mask (B, 1, T, S) and, per layer, "store these new keys/values and
    return all S keys/values of each row"."""

    mask: torch.Tensor

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020, used by Llama)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None = None,
        cache: KVCacheView | None = None,
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


def document_positions_and_mask(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token positions (B, T), restarting where doc_ids changes, and the bool (B, 1, T, T) mask
    "causal and in the same document" (block-diagonal causal), for rows packed with documents."""
    T = doc_ids.size(1)
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # each token's document start
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return idx - first, (same & causal)[:, None]


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_emb == "learned":
            self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        elif cfg.pos_emb == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.d_model, cfg.context_length), persistent=False)
        else:
            cos, sin = rope_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta)
            # Non-persistent: derived from the config, so not stored in checkpoints.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 / nanoGPT init: N(0, init_std) everywhere, residual-branch outputs scaled by 1/sqrt(2L).

        Each block adds two branch outputs (attention, MLP) to the residual stream; shrinking their
        output projections keeps the stream's variance from growing with depth at initialisation.
        """
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        cache: KVCacheView | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, vocab) for token ids idx (B, T); with targets (B, T) also the mean cross-entropy.

        input_pos gives each token's position: (T,) shared by every row, or (B, T) per row (rows of a
        batch at different lengths); default 0..T-1. With a KV cache (scratchllm.infer.cache), idx holds
        only the new tokens: each layer stores their keys/values in the cache and attends over every
        cached key the cache's mask allows (its own row's, up to its own position).
        doc_ids (B, T), training only (no cache): the document of each token in rows packed with
        several; a token attends only within its document and positions restart at each one.
        """
        T = idx.size(1)
        if input_pos is None:
            if T > self.cfg.context_length:
                raise ScratchError(
                    f"sequence of {T} tokens is longer than the model's context_length={self.cfg.context_length}",
                    "truncate the input, or use a model built with a larger context_length",
                )
            input_pos = torch.arange(T, device=idx.device)
        mask = None if cache is None else cache.mask  # no cache: plain causal over the T tokens
        if doc_ids is not None:
            if cache is not None:
                raise ScratchError("document masks are for training forwards (no KV cache)")
            input_pos, mask = document_positions_and_mask(doc_ids)  # (B, T) positions, (B, 1, T, T) mask
        x = self.tok_emb(idx)
        rope = None
        if self.cfg.pos_emb == "rope":
            cos, sin = self.rope_cos[input_pos].to(x.dtype), self.rope_sin[input_pos].to(x.dtype)
            rope = (cos, sin) if input_pos.dim() == 1 else (cos[:, None], sin[:, None])  # broadcast over heads
        elif self.cfg.pos_emb == "learned":
            x = x + self.pos_emb(input_pos)
        else:
            x = x + self.pos_table[input_pos]
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss

    # --- sizes and cost -----------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of (unique) parameters.

        non_embedding=True leaves out lookup-only tables, which cost no FLOPs: the token embedding
        when it is not tied to the output head, and learned position embeddings. The output head is
        always counted: it is a d_model x vocab matmul per token.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if non_embedding:
            if not self.cfg.tie_embeddings:
                n -= self.tok_emb.weight.numel()
            if self.cfg.pos_emb == "learned":
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6*N + 12*L*H*Q*T.

        The PaLM paper's estimate (appendix B), also used by nanoGPT for MFU: each of the N weights
        that take part in a matmul costs 2 FLOPs (multiply + add) forward and 4 backward, hence 6N;
        attention scores and the weighted sum add 2 * 2*H*Q*T forward per layer (H heads of size Q
        attending over T positions), times 3 with backward. Causal masking is ignored (as in PaLM),
        so this slightly overstates attention. Forward only (inference) is one third of it.
        """
        T = self.cfg.context_length if seq_len is None else seq_len
        c = self.cfg
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layers * c.n_heads * c.head_dim * T

    # --- save / load ---------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors into ``directory`` (see scratchllm.model.checkpoint)."""
        from scratchllm.model.checkpoint import save_pretrained  # lazy: checkpoint.py imports this module

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Transformer:
        """Build the model from a directory written by save_pretrained, checking every tensor's shape."""
        from scratchllm.model.checkpoint import load_pretrained  # lazy: as above

        return load_pretrained(directory, map_location)
