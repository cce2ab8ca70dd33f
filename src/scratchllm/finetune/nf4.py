"""4-bit NormalFloat (NF4) quantization for QLoRA (Dettmers et al. 2023), written from scratch.

NF4 has 16 code values: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero. A weight
matrix is flattened and cut into blocks of ``blocksize`` (64) values; each block is divided by its
absolute maximum ("absmax") and every value is rounded to the nearest code, stored as a 4-bit index,
two per byte (first value in the high nibble, as bitsandbytes packs them).

Double quantization: the fp32 absmax of every block (0.5 bit per weight at blocksize 64) is itself
quantized: its mean is subtracted and the centred scales are quantized block-wise (blocks of 256)
to 8 bits with the signed "dynamic" 8-bit code of bitsandbytes, leaving one fp32 scale per 256
scales (~0.127 bit per weight in all, as in the paper).

Dequantization reverses both steps; ``NF4Linear`` keeps only the packed weight and dequantizes
it on the fly in every forward, so the frozen base costs ~4.13 bits per weight in memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchError

# The 16 NF4 values as printed in the QLoRA paper (appendix E) and used by bitsandbytes.
NF4_PAPER_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
_NF4_OFFSET = 0.9677083  # the paper's offset: midpoint of the outermost quantiles for 2*16 bins


@functools.cache
def nf4_code() -> torch.Tensor:
    """Build the 16 NF4 values from the normal quantile function (paper eq. 4, asymmetric variant).

    8 positive quantiles and 7 negative ones (plus an exact 0) so that zero is representable; each
    half is normalised by its largest value to land in [-1, 1].
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    pos = normal.icdf(torch.linspace(_NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(_NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.abs().max()).float()


@functools.cache
def dynamic_code() -> torch.Tensor:
    """The signed 8-bit "dynamic tree" code (Dettmers 2016) that bitsandbytes uses for the scales.

    Seven exponent ranges 10^-6 .. 10^0; range i holds 2^i linearly spaced fractions in (0.1, 1), for
    both signs; plus 0 and 1.0. Small magnitudes get fine steps, large ones coarse steps.
    """
    values = [0.0, 1.0]
    for i in range(7):
        bounds = torch.linspace(0.1, 1.0, 2**i + 1)  # fp32, as bitsandbytes builds it
        means = ((bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += means + [-m for m in means]
    values += [0.0] * (256 - len(values))
    return torch.tensor(sorted(values), dtype=torch.float32)


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of the sorted ``code`` for every element of ``x`` (ties: the lower)."""
    mids = (code[1:] + code[:-1]) / 2
    return torch.bucketize(x, mids).to(torch.uint8)


def _blockwise(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, int]:
    """Flatten and zero-pad ``x`` to whole blocks: (n_blocks, blocksize), and the original length."""
    flat = x.reshape(-1)
    n = flat.numel()
    pad = -n % blocksize
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, blocksize), n


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization to indices of ``code``: (uint8 indices, fp32 absmax per block)."""
    blocks, n = _blockwise(x.float(), blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return _nearest(scaled, code).view(-1)[:n], absmax


def dequantize_blockwise(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    blocks, n = _blockwise(code.to(absmax.device)[idx.long()], blocksize)
    return (blocks * absmax[:, None]).view(-1)[:n]


@dataclass
class NF4Tensor:
    """A quantized tensor: packed 4-bit codes plus (double-quantized) block scales."""

    packed: torch.Tensor  # uint8 (ceil(n/2),): two codes per byte, first in the high nibble
    shape: tuple[int, ...]
    dtype: torch.dtype  # what dequantize returns
    blocksize: int
    absmax: torch.Tensor  # fp32 (n_blocks,), or uint8 dynamic-code indices when double-quantized
    absmax_scale: torch.Tensor | None = None  # fp32 per group of scales (double quantization)
    absmax_offset: float = 0.0  # mean subtracted from the scales before quantizing them
    scale_blocksize: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def nbytes(self) -> int:
        """Storage in bytes (packed codes + scales), for the memory accounting."""
        extra = self.absmax_scale.numel() * 4 + 4 if self.absmax_scale is not None else 0
        return self.packed.numel() + self.absmax.numel() * self.absmax.element_size() + extra

    def block_absmax(self) -> torch.Tensor:
        """The fp32 per-block scales (dequantizing them first if double-quantized)."""
        if self.absmax_scale is None:
            return self.absmax
        centred = dequantize_blockwise(self.absmax, self.absmax_scale, dynamic_code(), self.scale_blocksize)
        return centred + self.absmax_offset


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True, scale_blocksize: int = 256) -> NF4Tensor:
    """Quantize ``w`` to NF4 with block-wise absmax scaling (and double quantization of the scales)."""
    if blocksize < 2 or blocksize % 2:
        raise ScratchError(f"NF4 blocksize must be an even number >= 2, got {blocksize}", "use 64 (the paper's)")
    if not w.is_floating_point():
        raise ScratchError(f"NF4 quantizes floating-point tensors, got {w.dtype}")
    idx, absmax = quantize_blockwise(w.detach(), nf4_code().to(w.device), blocksize)
    if idx.numel() % 2:
        idx = torch.cat([idx, idx.new_zeros(1)])
    packed = (idx[0::2] << 4) | idx[1::2]
    out = NF4Tensor(packed, tuple(w.shape), w.dtype, blocksize, absmax, scale_blocksize=scale_blocksize)
    if double_quant:
        offset = float(absmax.mean())
        out.absmax, out.absmax_scale = quantize_blockwise(absmax - offset, dynamic_code().to(w.device), scale_blocksize)
        out.absmax_offset = offset
    return out


@functools.cache
def _byte_pairs(device: torch.device) -> torch.Tensor:
    """(256,) int64: the two fp32 code values packed in each byte (high nibble first), as the bits of
    one 8-byte word, so dequantizing is one 1-D ``index_select`` per byte; viewed back as fp32 the
    gathered words are the values in order. (A 1-D gather of 8-byte words is ~10x faster on CPU than
    advanced indexing of a (256, 2) table.)"""
    code = nf4_code().to(device)
    b = torch.arange(256, device=device)
    return torch.stack([code[b >> 4], code[b & 0x0F]], dim=1).contiguous().view(torch.int64).view(-1)


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """Back to a dense tensor of ``q.shape`` and ``q.dtype``."""
    n = math.prod(q.shape)
    pairs = _byte_pairs(q.packed.device).index_select(0, q.packed.long()).view(torch.float32)
    values, _ = _blockwise(pairs[:n], q.blocksize)
    return (values * q.block_absmax()[:, None]).view(-1)[:n].view(q.shape).to(q.dtype)


class _NF4Matmul(torch.autograd.Function):
    """y = x W^T with W dequantized in forward and again in backward.

    Plain ``F.linear(x, dequantize(W))`` would make autograd keep every dense dequantized weight
    alive until backward (it needs W for the input gradient), undoing the memory saving; here only
    the 4-bit layer is referenced and W is rebuilt when needed, as bitsandbytes' MatMul4Bit does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight().to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad @ ctx.layer.dequantized_weight().to(grad.dtype), None


class NF4Linear(nn.Module):
    """A frozen linear layer stored in NF4; the weight is dequantized on the fly in forward.

    The codes and scales are buffers (saved in state dicts, never trained); the layer has no
    parameters, so only adapters on top of it (LoRA) receive gradients.
    """

    def __init__(self, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ScratchError("NF4Linear supports bias-free linear layers only (as in our model)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q = quantize_nf4(linear.weight.data, blocksize, double_quant)
        self.blocksize, self.weight_dtype = q.blocksize, q.dtype
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax_scale", q.absmax_scale if q.absmax_scale is not None else torch.empty(0))
        self.register_buffer("absmax_offset", torch.tensor(q.absmax_offset))

    def quantized(self) -> NF4Tensor:
        scale = self.absmax_scale if self.absmax_scale.numel() else None
        return NF4Tensor(self.packed, (self.out_features, self.in_features), self.weight_dtype, self.blocksize,
                         self.absmax, scale, float(self.absmax_offset))

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_nf4(self.quantized())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NF4Matmul.apply(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4 blocksize={self.blocksize}"


def quantize_model_nf4(model: nn.Module, patterns: list[str], blocksize: int = 64, double_quant: bool = True) -> int:
    """Replace every ``nn.Linear`` whose name matches one of ``patterns`` (see lora.matches) by an
    NF4Linear. Returns the number of layers quantized. A head tied to the embedding is skipped."""
    from scratchllm.finetune.lora import matching_linears  # lazy: lora.py imports NF4Linear from here

    tied = {id(p) for n, p in model.named_parameters() if "emb" in n}
    count = 0
    for name, parent, attr, linear in matching_linears(model, patterns):
        if id(linear.weight) in tied:
            continue
        setattr(parent, attr, NF4Linear(linear, blocksize, double_quant))
        count += 1
    return count
