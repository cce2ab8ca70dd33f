"""What every stage's ``run(config)`` returns: one shape for the CLI and the pipeline alike.

A stage (tokenizer, data, pretrain, finetune, align, eval, quantize, export, inspect) is called the
same way from its command and from the pipeline: ``result = run(config)``. The command prints the
result and exits with ``result.exit_code``; the pipeline records ``outputs`` and ``metrics`` in the
run's state and report, and stops (resumably) when ``stopped`` is set.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """The outcome of one stage run.

    outputs: named paths the stage wrote (``{"model": Path(...), "report": Path(...)}``).
    metrics: JSON-serialisable figures (loss, perplexity, accuracy, documents kept, ...).
    stopped: ``None`` when the stage ran to completion, else the signal name that stopped it
        (``"SIGTERM"``, ``"SIGINT"``) after it saved what it needs to resume.
    step: the last training step, for stages that train (``None`` otherwise).
    checkpoint: the checkpoint a stopped training stage resumes from, if any.
    """

    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    step: int | None = None
    checkpoint: Path | None = None

    @property
    def completed(self) -> bool:
        return self.stopped is None

    @property
    def exit_code(self) -> int:
        """0 when complete, else 128 + the signal number, as a shell reports a signalled process."""
        if self.stopped is None:
            return 0
        return 128 + int(getattr(signal, self.stopped, signal.SIGTERM))

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable view (paths as strings) for state files and reports."""
        return {
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            "metrics": self.metrics,
            "stopped": self.stopped,
            "step": self.step,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
        }
