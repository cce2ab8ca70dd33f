"""The server's one config dataclass (preset: configs/serve/default.toml) and its checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scratchllm.errors import ScratchError
from scratchllm.infer.load import check_device


@dataclass
class ServeConfig:
    """Server settings. Preset: configs/serve/default.toml."""

    model: str = ""  # model directory (or training run directory)
    tokenizer: str = ""  # tokenizer directory/file; "" = look inside the model directory
    model_name: str = "scratchllm"  # the id clients pass as "model"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""  # "" = no auth; else clients must send "Authorization: Bearer <api_key>"
    max_pending: int = 64  # requests queued or running before 429
    max_batch: int = 32  # KV-cache slots: requests decoded together (memory: max_batch x context_length)
    prefill_chunk: int = 256  # prompt tokens prefilled per engine step (longer prompts take several steps)
    timeout_s: float = 120.0  # per request, from arrival (queue wait included)
    device: str = "cpu"
    threads: int = 0  # torch CPU threads for generation; 0 = torch's default (one per core)
    compile: bool = False  # torch.compile the decode step (compiled at startup, before the port opens)
    max_body_bytes: int = 1 << 20  # larger request bodies get 413, checked while reading, before auth
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers by then is closed
    body_timeout_s: float = 30.0  # a request body not complete by then (from its headers) gets 408


def check_config(cfg: ServeConfig) -> None:
    """Every setting in range, with error/fix, before anything is loaded or bound."""
    def finite_positive(x: float) -> bool:
        return isinstance(x, int | float) and math.isfinite(x) and x > 0

    checks = [
        (bool(cfg.model), "no model to serve", "pass model=DIR (a model directory or a training run directory)"),
        (0 <= cfg.port <= 65535, f"port={cfg.port} is not a TCP port", "use 1..65535 (0 picks a free port)"),
        (bool(cfg.host), "host is empty", "use host=127.0.0.1 (this machine) or host=0.0.0.0 (every interface)"),
        (bool(cfg.model_name), "model_name is empty", "set model_name=NAME, the id clients send as \"model\""),
        (cfg.threads >= 0, f"threads={cfg.threads} is negative", "use threads=0 (torch's default) or a count"),
        (cfg.max_pending >= 1, f"max_pending={cfg.max_pending} must be at least 1", "e.g. max_pending=64"),
        (cfg.max_batch >= 1, f"max_batch={cfg.max_batch} must be at least 1", "e.g. max_batch=32"),
        (cfg.prefill_chunk >= 1, f"prefill_chunk={cfg.prefill_chunk} must be at least 1", "e.g. prefill_chunk=256"),
        (finite_positive(cfg.timeout_s), f"timeout_s={cfg.timeout_s} must be a positive number of seconds",
         "e.g. timeout_s=120"),
        (cfg.max_body_bytes >= 1024, f"max_body_bytes={cfg.max_body_bytes} is below 1024",
         "e.g. max_body_bytes=1048576 (1 MiB)"),
        (finite_positive(cfg.header_timeout_s), f"header_timeout_s={cfg.header_timeout_s} must be positive",
         "e.g. header_timeout_s=10"),
        (finite_positive(cfg.body_timeout_s), f"body_timeout_s={cfg.body_timeout_s} must be positive",
         "e.g. body_timeout_s=30"),
    ]
    for ok, message, fix in checks:
        if not ok:
            raise ScratchError(f"serve: {message}", fix)
    check_device(cfg.device)
