"""Learning-rate schedules as pure functions of the step, so resuming needs nothing but the step.

* ``cosine``   linear warmup, then cosine decay from lr to min_lr_ratio * lr at the last step.
* ``wsd``      warmup-stable-decay (MiniCPM, Hägele et al. 2024): warmup, constant lr, then a short
  decay over the last ``decay_fraction`` of the steps (shape linear, cosine or 1 - sqrt).
* ``constant`` linear warmup, then constant lr.

Warmup follows nanoGPT: step s (0-based) of the warmup uses lr * (s + 1) / warmup_steps, so the
first update is small but not zero.
"""

from __future__ import annotations

import math

from scratchllm.train.config import ScheduleConfig


def lr_factor(step: int, cfg: ScheduleConfig, max_steps: int) -> float:
    """Multiplier in [min_lr_ratio, 1] applied to the peak lr for optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.kind == "cosine":
        span = max(1, max_steps - 1 - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return lo + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - lo)
    # wsd: stable until the decay phase, whose last step reaches the minimum.
    decay_steps = max(1, round(cfg.decay_fraction * max_steps))
    decay_start = max(cfg.warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
    if cfg.decay_shape == "linear":
        shape = 1.0 - progress
    elif cfg.decay_shape == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - math.sqrt(progress)
    return lo + shape * (1.0 - lo)
