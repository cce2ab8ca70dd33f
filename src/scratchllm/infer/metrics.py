"""Engine counters and latency histograms, rendered in the Prometheus text format (the server's /metrics).

Names follow vLLM's where there is one (``..._time_to_first_token_seconds``, ``..._time_per_output_token_seconds``)
with the prefix ``scratchllm:``.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: bucket le=x counts observations <= x)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        total = 0
        for le, n in zip([*map(str, self.buckets), "+Inf"], self.counts):
            total += n
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        return out + [f"{name}_sum {self.sum}", f"{name}_count {self.count}"]


class EngineMetrics:
    """Updated by the engine's thread; read (rendered) by the server's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.prefix_hit_tokens = 0
        self.requests: dict[str, int] = {}  # finish reason (stop, length, abort, timeout, error) -> count
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)

    def token(self, req: Any, now: float) -> None:
        with self.lock:
            self.generation_tokens += 1
            if req.last_token_time is None:
                self.ttft.observe(now - req.arrival)
                self.prompt_tokens += len(req.prompt)
            else:
                self.tpot.observe(now - req.last_token_time)

    def finished(self, req: Any, error: BaseException | None = None) -> None:
        """Count a finished request by reason: stop / length, or abort (cancelled), timeout, error."""
        names = {"RequestCancelled": "abort", "RequestTimeout": "timeout"}
        with self.lock:
            key = (names.get(type(error).__name__, "error") if error is not None else (req.finish_reason or "length"))
            self.requests[key] = self.requests.get(key, 0) + 1

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        p = "scratchllm:"
        with self.lock:
            lines = [
                f"# HELP {p}num_requests_running Requests in the batch (prefilling or decoding).",
                f"# TYPE {p}num_requests_running gauge", f"{p}num_requests_running {self.running}",
                f"# HELP {p}num_requests_waiting Requests waiting for a free slot.",
                f"# TYPE {p}num_requests_waiting gauge", f"{p}num_requests_waiting {self.waiting}",
                f"# HELP {p}generation_tokens_total Generated tokens.",
                f"# TYPE {p}generation_tokens_total counter", f"{p}generation_tokens_total {self.generation_tokens}",
                f"# HELP {p}prompt_tokens_total Prompt tokens of requests that produced a token.",
                f"# TYPE {p}prompt_tokens_total counter", f"{p}prompt_tokens_total {self.prompt_tokens}",
                f"# HELP {p}prefix_cache_hit_tokens_total Prompt tokens whose keys/values came from the prefix cache.",
                f"# TYPE {p}prefix_cache_hit_tokens_total counter",
                f"{p}prefix_cache_hit_tokens_total {self.prefix_hit_tokens}",
                f"# HELP {p}request_success_total Finished requests by finish reason.",
                f"# TYPE {p}request_success_total counter",
            ]
            lines += [f'{p}request_success_total{{finished_reason="{k}"}} {v}' for k, v in sorted(self.requests.items())]
            lines += self.ttft.lines(f"{p}time_to_first_token_seconds", "Time from arrival to the first token.")
            lines += self.tpot.lines(f"{p}time_per_output_token_seconds", "Time between consecutive tokens.")
        return "\n".join(lines) + "\n"
