"""What every Flask service shares: JSON errors, request parsing, authentication, OpenAPI.

Services are thin adapters over their domain modules; this module keeps the adapter
layer identical across the KGC, the parameter server and the participant node.
Errors are always ``{"error": code, "message": text}``: a domain raises a
:class:`~trapdoor.service.errors.TrapdoorError` and :func:`register_error_handlers` is
the one place that gives it its HTTP status, never a stack trace or a secret. Views say
who may call them with decorators (:func:`admin_required`, :func:`bearer_required`)
instead of each calling a check.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from trapdoor.service.console import is_console_endpoint
from trapdoor.service.errors import (
    BadRequestError,
    ForbiddenError,
    TooLargeError,
    TrapdoorError,
    UnauthorizedError,
    UnsupportedMediaError,
    http_status,
)
from trapdoor.service.metrics import PROMETHEUS_TEXT, Stats, exposition_response, install_metrics
from trapdoor.service.openapi import ADMIN, SECURITY_SCHEMES, Operation, SchemaSet, operation
from trapdoor.service.schemas import Error, Health, OpenApiDocument

__all__ = [
    "CONTROL_BODY_LIMIT",
    "ROUND",
    "add_common_routes",
    "admin_required",
    "bearer_required",
    "bearer_token",
    "body_limit",
    "documented",
    "field",
    "is_admin_token",
    "json_body",
    "limit_request_bodies",
    "read_body",
    "register_error_handlers",
    "restrict_new_files",
]

#: Every JSON control message fits in this; a view that takes more says so with
#: :func:`body_limit`. Enforced before the body is read or parsed.
CONTROL_BODY_LIMIT = 64 * 1024
#: The converter for round numbers in URLs: bounded, so 2**63 is a 404, never a 500.
ROUND = "int(max=2147483647)"

_View = TypeVar("_View", bound=Callable[..., Any])

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid",
    503: "unavailable",
}


def register_error_handlers(app: Flask) -> None:
    """The one JSON error handler of every service: a refusal of any kind, werkzeug's
    HTTP errors (404, 405, ...) and, without its details, anything unexpected."""

    @app.errorhandler(TrapdoorError)
    def _refused(exc: TrapdoorError) -> Any:
        return jsonify(error=exc.code, message=exc.message), http_status(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        return jsonify(error=_STATUS_CODES.get(status, "error"), message=exc.description), status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
        return jsonify(error="internal", message="internal server error"), 500


def body_limit(max_bytes: int) -> Callable[[_View], _View]:
    """Let one view read up to ``max_bytes`` (instead of :data:`CONTROL_BODY_LIMIT`)."""

    def decorate(view: _View) -> _View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cap = current_app.config.get("MAX_CONTENT_LENGTH")
            request.max_content_length = min(max_bytes, cap) if cap else max_bytes
            return view(*args, **kwargs)

        wrapper._body_limit = max_bytes  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def limit_request_bodies(app: Flask, default: int = CONTROL_BODY_LIMIT) -> None:
    """Size every endpoint's body limit to its message, checked before anything is read.

    A request whose ``Content-Length`` is over its view's limit is a 413 at once; one
    without a length is cut off at the limit when read. Views that take bulk frames raise
    their own limit with :func:`body_limit` or by setting ``request.max_content_length``.
    """

    @app.before_request
    def _limit() -> None:
        view = app.view_functions.get(request.endpoint or "")
        limit = getattr(view, "_body_limit", None) or default
        cap = app.config.get("MAX_CONTENT_LENGTH")
        request.max_content_length = min(limit, cap) if cap else limit
        length = request.content_length
        applied = request.max_content_length
        if length is not None and length > applied:
            raise TooLargeError("too-large", f"request body is over {applied} bytes")


def read_body(limit: int, too_large: str = "request body is too large") -> bytes:
    """The raw body, at most ``limit`` bytes (and the app's cap); 413 ``too-large`` otherwise.

    For views whose limit is known only after authentication (a job's frame size). A
    declared length over it is refused before anything is read; a stream without a length
    is read one byte past the limit, since werkzeug stops at the limit without an error
    and a truncated body would otherwise pass for a short one.
    """
    cap = current_app.config.get("MAX_CONTENT_LENGTH")
    allowed = min(limit, int(cap)) if cap else limit
    if request.content_length is not None and request.content_length > allowed:
        raise TooLargeError("too-large", too_large)
    request.max_content_length = allowed + 1
    data = request.get_data(cache=False)
    if len(data) > allowed:
        raise TooLargeError("too-large", too_large)
    return data


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says why not."""
    if not request.is_json:
        raise UnsupportedMediaError(
            "unsupported-media-type", "expected Content-Type: application/json"
        )
    try:
        body = request.get_json(silent=True)
        # Lone surrogates ("\\ud800") parse but cannot be stored or hashed as UTF-8.
        json.dumps(body, ensure_ascii=False).encode()
    except (RecursionError, UnicodeEncodeError):  # nested too deep, or not UTF-8 text
        body = None
    if body is None:
        raise BadRequestError("malformed-json", "request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequestError("malformed-json", "request body must be a JSON object")
    return body


def field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    *,
    required: bool = True,
    default: Any = None,
) -> Any:
    """One typed field of a JSON body (``bool`` is never accepted as an ``int``)."""
    if name not in body:
        if required:
            raise BadRequestError("missing-field", f"field {name!r} is required")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequestError("bad-field", f"field {name!r} has the wrong type")
    if not isinstance(value, kinds):
        raise BadRequestError("bad-field", f"field {name!r} has the wrong type")
    return value


def bearer_token() -> str:
    """The token in ``Authorization: Bearer ...``; unauthorized if absent."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("unauthorized", "missing bearer token")
    return token.strip()


def is_admin_token(token: str) -> bool:
    """Whether ``token`` is the app's configured ``ADMIN_TOKEN`` (constant-time; never,
    when none is configured)."""
    expected = current_app.config.get("ADMIN_TOKEN")
    return bool(expected) and hmac.compare_digest(token.encode(), str(expected).encode())


def admin_required(view: _View) -> _View:
    """Operator views: the bearer token must be the configured admin token.

    Forbidden (``forbidden``) when the app has no ``ADMIN_TOKEN``, so operator endpoints
    are off rather than open; unauthorized (``unauthorized``) for a missing or wrong token.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_app.config.get("ADMIN_TOKEN"):
            raise ForbiddenError(
                "forbidden", "admin endpoints are disabled (no ADMIN_TOKEN configured)"
            )
        if not is_admin_token(bearer_token()):
            raise UnauthorizedError("unauthorized", "invalid admin token")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def bearer_required(
    verify: Callable[..., Any], keyword: str = "caller"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view decorator made from a service's own token check.

    ``verify(token, **view_args)`` gets the bearer token and the URL's arguments, proves
    who calls (raising a :class:`~trapdoor.service.errors.TrapdoorError` if it cannot)
    and returns the verified caller, which the view receives as the keyword ``keyword``.
    Each service says what a valid token is (the KGC's own tokens, the PS's offline
    check of KGC-issued ones); this keeps where the check runs the same everywhere.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            caller = verify(bearer_token(), **kwargs)
            return view(*args, **kwargs, **{keyword: caller})

        return wrapper

    return decorate


def documented(
    *,
    responses: Mapping[int, Any],
    request: Any = None,
    errors: Iterable[int] = (),
    auth: Iterable[str] = (),
    method: str | None = None,
) -> Callable[[_View], _View]:
    """Declare what a view takes and answers, for its service's ``/openapi.json``.

    ``request`` is the JSON body's type (a ``TypedDict`` or dataclass of
    :mod:`trapdoor.service.schemas` or of the service's own schema module), a
    :class:`~trapdoor.service.openapi.Binary` frame, or a tuple of both; ``responses`` maps
    each success status to its answer's type; ``errors`` adds the statuses the operation's
    shape does not imply (409, 422, 502, ...); ``auth`` names who may call it
    (:data:`~trapdoor.service.openapi.ADMIN`, :data:`~trapdoor.service.openapi.TOKEN`).
    A view that serves two methods declares each (``method``). Only documentation: the view
    still parses and checks its body itself, and a test validates its answers against it.
    """
    declared = Operation(request, dict(responses), tuple(errors), tuple(auth))

    def decorate(view: _View) -> _View:
        operations = {**getattr(view, "_openapi", {}), method and method.upper(): declared}
        view._openapi = operations  # type: ignore[attr-defined]
        return view

    return decorate


def _path_schema(rule: Any, arg: str) -> dict[str, Any]:
    from werkzeug.routing import IntegerConverter

    converter = rule._converters.get(arg)
    if isinstance(converter, IntegerConverter):
        schema: dict[str, Any] = {"type": "integer", "minimum": 0}
        if converter.max is not None:
            schema["maximum"] = converter.max
        return schema
    return {"type": "string"}


def _undocumented(method: str) -> dict[str, Any]:
    """What a view without :func:`documented` gets: any body, an answer of any shape."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    op: dict[str, Any] = {
        "responses": {
            "200": {"description": "success"},
            "default": {"description": "error", "content": error},
        }
    }
    if method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {}}}}
    return op


def _openapi_document(app: Flask, title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 from the URL map (paths, methods, path parameters, docstrings) and each
    view's declared bodies (:func:`documented`), their schemas generated from the types."""
    schemas = SchemaSet()
    schemas.schema(Error)
    schemes: set[str] = set()
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or is_console_endpoint(rule.endpoint):
            continue  # the consoles' HTML pages are not part of the API
        path = re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([A-Za-z_]\w*)>", r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        declared: dict[str | None, Operation] = getattr(view, "_openapi", {})
        doc = inspect.cleandoc(view.__doc__ or rule.endpoint)
        parameters = [
            {"name": arg, "in": "path", "required": True, "schema": _path_schema(rule, arg)}
            for arg in sorted(rule.arguments)
        ]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": doc.splitlines()[0],
                "description": doc,
                "parameters": parameters,
            }
            found = declared.get(method) or declared.get(None)
            if found is None:
                op.update(_undocumented(method))
            else:
                op.update(operation(found, schemas, path_parameters=bool(parameters)))
                schemes.update(found.security)
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {name: SECURITY_SCHEMES[name] for name in sorted(schemes)},
        },
    }


def restrict_new_files() -> None:
    """Every file this service process creates from now on is owner-only (umask 077).

    Databases, logs, key and model files hold ciphertexts and sealed secrets; called by
    :func:`serve` and by each service's WSGI module, before anything is created.
    """
    os.umask(0o077)


def serve(
    app: Flask,
    host: str,
    port: int,
    label: str,
    on_stop: Callable[[], None] | None = None,
    log_format: str = "text",
) -> None:
    """Serve ``app`` threaded until SIGINT or SIGTERM, then run ``on_stop`` once.

    Prints ``<label> listening on http://host:port`` when the socket is bound (port 0
    picks a free port; the demo and the end-to-end tests read the URL from that line).
    Logs go to stderr in ``log_format`` (:func:`trapdoor.service.logs.configure_logging`).
    Deployments run the services under gunicorn instead (``*.wsgi:app``).
    """
    import signal

    from werkzeug.serving import make_server

    from trapdoor.service.logs import configure_logging

    configure_logging(log_format)
    restrict_new_files()
    server = make_server(host, port, app, threaded=True)

    def _stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    print(f"{label} listening on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if on_stop is not None:
            on_stop()


def add_common_routes(
    app: Flask,
    title: str,
    version: str,
    health: Callable[[], dict[str, Any]] | None = None,
    stats: Stats | None = None,
) -> None:
    """``/healthz``, ``/openapi.json`` and ``/metrics`` (Prometheus, for the operator:
    :mod:`trapdoor.service.metrics`, with the domain's ``stats``) for a service."""
    bp = Blueprint("meta", __name__)
    install_metrics(app, title, stats)

    @bp.get("/metrics")
    @documented(responses={200: PROMETHEUS_TEXT}, auth=[ADMIN])
    @admin_required
    def metrics() -> Any:
        """Prometheus metrics: requests, latency, errors by code, the domain's counts."""
        return exposition_response(current_app)

    @bp.get("/healthz")
    @documented(responses={200: Health})
    def healthz() -> Any:
        """Liveness and readiness of this service."""
        extra = health() if health else {}
        return jsonify(status="ok", service=title, **extra)

    @bp.get("/openapi.json")
    @documented(responses={200: OpenApiDocument})
    def openapi() -> Any:
        """The OpenAPI document of this service."""
        return jsonify(_openapi_document(current_app, title, version))

    app.register_blueprint(bp)
