"""The one error type of the parameter server's domain (no Flask here).

The web layer turns it into ``{"error": code, "message": text}`` with ``status``;
messages never carry tokens, keys or plaintext values.
"""

from __future__ import annotations

__all__ = ["DomainError"]


class DomainError(Exception):
    """A refused request: HTTP-like ``status``, a stable machine ``code``, a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
