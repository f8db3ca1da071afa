"""The KGC domain's error types (no Flask here).

Each class fixes the HTTP status; ``code`` is the stable machine code the web layer puts
in ``{"error": code, "message": text}``. Messages never carry a token, a code, a key or a
plaintext value. The codes are listed in ``trapdoor/kgc/README.md``.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "InvalidError",
    "KgcError",
    "NotFoundError",
    "UnauthorizedError",
]


class KgcError(Exception):
    """A refused request: HTTP-like ``status``, a stable ``code``, a human ``message``."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadRequestError(KgcError):
    """Malformed input: wrong shape or format (400)."""

    status = 400


class UnauthorizedError(KgcError):
    """The caller did not prove who it is: bad token, code or challenge (401)."""

    status = 401


class ForbiddenError(KgcError):
    """The caller is known but may not do this, or its signed request is forged (403)."""

    status = 403


class NotFoundError(KgcError):
    """No such subject or job (404)."""

    status = 404


class ConflictError(KgcError):
    """The request clashes with stored state: a duplicate or a replay (409)."""

    status = 409


class InvalidError(KgcError):
    """Well-formed but semantically invalid: unknown participants, bad elements (422)."""

    status = 422
