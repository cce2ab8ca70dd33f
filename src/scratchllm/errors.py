"""One exception type for problems the user can fix; the CLI prints it without a traceback."""

from __future__ import annotations


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
