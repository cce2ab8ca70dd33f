"""One exception type for problems the user can fix; the CLI prints it without a traceback."""

from __future__ import annotations

import errno


class ScratchError(Exception):
    """A problem caused by input or environment, with a hint on how to fix it.

    The CLI prints ``error: <message>`` and ``fix: <hint>`` and exits with status 2.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (fix: {self.hint})"


class Interrupted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once. The CLI exits 128 + the signal's number (130 for
    Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal killed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + int(signum)


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError meaning "no space left" (ENOSPC) or "quota exceeded" (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(what: str, hint: str = "free some disk space (df -h) and run the command again") -> ScratchError:
    """The one "disk full" message for every write path (checkpoints, metrics, logs, TensorBoard...)."""
    return ScratchError(f"disk full while writing {what}", hint)
