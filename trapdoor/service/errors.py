"""One error hierarchy for every service's domain: what went wrong, never how to say it in HTTP.

A domain module raises the class that names the kind of refusal (the caller did not prove
who it is, the request clashes with stored state, ...) with a stable machine ``code`` and
a human ``message``. The web layer (:func:`trapdoor.service.web.register_error_handlers`)
is the one place that maps a kind to an HTTP status, for the KGC, the parameter server
and the participant node alike. Messages never carry a token, a key or a plaintext value.

Pure: no Flask import, so the domain modules that raise these stay free of the web layer.
"""

from __future__ import annotations

__all__ = [
    "BadGatewayError",
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "InternalError",
    "InvalidError",
    "NotFoundError",
    "TooLargeError",
    "TrapdoorError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaError",
    "http_status",
    "kind_for_status",
]


class TrapdoorError(Exception):
    """A refused request: a stable machine ``code`` and a human ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadRequestError(TrapdoorError):
    """Malformed input: wrong shape, type or format."""


class UnauthorizedError(TrapdoorError):
    """The caller did not prove who it is: a bad token, code or challenge."""


class ForbiddenError(TrapdoorError):
    """The caller is known but may not do this, or its signed request is forged."""


class NotFoundError(TrapdoorError):
    """No such subject, job, round or model."""


class ConflictError(TrapdoorError):
    """The request clashes with stored state: a duplicate, a replay, the wrong phase."""


class TooLargeError(TrapdoorError):
    """The body is larger than this step allows."""


class UnsupportedMediaError(TrapdoorError):
    """The body is not of the media type this step takes."""


class InvalidError(TrapdoorError):
    """Well formed but not valid here: unknown participants, out-of-range elements."""


class BadGatewayError(TrapdoorError):
    """A service this one depends on (the KGC, the PS) answered with something unusable."""


class UnavailableError(TrapdoorError):
    """A service this one depends on cannot be reached now; retrying later may work."""


class InternalError(TrapdoorError):
    """This service's own stored state cannot be used (a sealed record it cannot open):
    the caller did nothing wrong, and retrying will not help."""


#: The one mapping from a kind of refusal to its HTTP status (used by the web layer).
HTTP_STATUS: dict[type[TrapdoorError], int] = {
    BadRequestError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    TooLargeError: 413,
    UnsupportedMediaError: 415,
    InvalidError: 422,
    BadGatewayError: 502,
    UnavailableError: 503,
    InternalError: 500,
}


def http_status(error: TrapdoorError) -> int:
    """The HTTP status of ``error``'s kind (its nearest listed class; 400 for the base)."""
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 400


def kind_for_status(status: int) -> type[TrapdoorError] | None:
    """The kind whose HTTP status is ``status`` (None for a status no kind has): for a
    service that relays the refusal of a service it called as its own."""
    for kind, kind_status in HTTP_STATUS.items():
        if kind_status == status:
            return kind
    return None
