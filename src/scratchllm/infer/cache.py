"""The KV cache: a pool of slots, one sequence each, owned by the engine (not by the model).

    k, v: (n_layers, n_slots + 1, n_kv_heads, max_len, head_dim)
    slot s, position p holds the key/value of the token fed at position p of the sequence in slot s
    (heads before positions: attention's own layout, so a slot's keys are read without a transpose)

A forward pass gets a view for its batch: which slot each row uses and each token's position. Rows
of one batch may sit at any lengths (continuous batching): each row writes its own slot and reads its
own keys up to its own position. The extra last slot is scratch: padding tokens (a row shorter than
the batch's widest) write there, so they can never overwrite a real key. Rolling back (speculative
decoding, a prefix reused by another request) is free: later writes overwrite stale positions and
attention never reads past a row's newest position.
"""

from __future__ import annotations

from typing import Any

import torch


class KVCache:
    """Preallocated keys and values for n_slots sequences of up to max_len tokens (all layers)."""

    def __init__(self, cfg: Any, n_slots: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        shape = (cfg.n_layers, n_slots + 1, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_slots, self.max_len, self.scratch = n_slots, max_len, n_slots

    @classmethod
    def for_model(cls, model: Any, n_slots: int, max_len: int | None = None) -> KVCache:
        """A cache matching model's shape, dtype and device (max_len defaults to its context length)."""
        ref = model.tok_emb.weight
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        return cls(model.cfg, n_slots, max_len or model.cfg.context_length, dtype, ref.device)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def view(self, slots: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None = None,
             static: bool = False, first_slot: int | None = None, start: int | None = None,
             length: int | None = None) -> CacheView:
        """The view for one forward: slots (B,) per row, positions (B, T) per token, valid (B, T) False
        for padding. static: read all max_len positions (fixed shapes for torch.compile).

        Fast paths the caller may vouch for: first_slot (slots are first_slot, first_slot + 1, ...: rows
        read a slice of the cache instead of a gathered copy), start (every row's positions are
        start..start+T-1, no padding: writes are a slice copy) and length (1 + the largest position)."""
        return CacheView(self.k, self.v, slots, positions, valid, self.scratch, static, first_slot, start, length)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the first n positions of slot src into slot dst (prefix caching)."""
        if n > 0 and src != dst:
            self.k[:, dst, :, :n] = self.k[:, src, :, :n]
            self.v[:, dst, :, :n] = self.v[:, src, :, :n]


class CacheView:
    """One batch's window on a KVCache; the model calls update(layer, k, v) in each layer and uses mask."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                 valid: torch.Tensor | None, scratch: int, static: bool = False, first_slot: int | None = None,
                 start: int | None = None, length: int | None = None) -> None:
        self.k, self.v, self.slots, self.positions = k, v, slots, positions
        B, T = positions.shape
        self.rows = None if first_slot is None else slice(first_slot, first_slot + B)
        self.cols = None if start is None or self.rows is None else slice(start, start + T)
        self.write_slots = None  # per-token slots to scatter into; not needed when writes are a slice copy
        if self.cols is None:
            write = slots[:, None].expand_as(positions)
            self.write_slots = write if valid is None else torch.where(valid, write, scratch)
        if static:
            S = k.size(3)
        else:  # keys every row may need, at most
            S = length if length is not None else int(positions.max()) + 1
        self.S = S
        if self.cols is not None and T == 1:
            self.mask = None  # one new token per row, all at the same position: every key read is its own
        else:
            key_pos = torch.arange(S, device=positions.device)
            self.mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, S): own keys only

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, KV, T, hd) at each token's slot and position; return each row's S keys/values."""
        ck, cv, dtype = self.k[layer], self.v[layer], k.dtype
        if dtype != ck.dtype:
            k, v = k.to(ck.dtype), v.to(cv.dtype)
        if self.cols is not None:
            ck[self.rows, :, self.cols] = k
            cv[self.rows, :, self.cols] = v
        else:  # advanced indices around a slice: the indexed shape is (B, T, KV, hd)
            ck[self.write_slots, :, self.positions] = k.transpose(1, 2)
            cv[self.write_slots, :, self.positions] = v.transpose(1, 2)
        rows = self.slots if self.rows is None else self.rows
        out_k, out_v = ck[rows, :, : self.S], cv[rows, :, : self.S]
        if out_k.dtype != dtype:  # e.g. bf16 activations under autocast, fp32 cache
            out_k, out_v = out_k.to(dtype), out_v.to(dtype)
        return out_k, out_v
