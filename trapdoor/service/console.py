"""The operator's web console, shared by the three services: login, session, CSRF, layout.

Each service registers its own pages (a blueprint of server-rendered templates that call
the same domain functions as its JSON API) with :func:`install_console`; this module
adds what every console needs around them, once:

- **Login** with the service's admin token (the one its ``/metrics`` and operator
  endpoints take), at ``/console/login``. No admin token configured: the console is off
  (403), as the operator endpoints are.
- **A session cookie** (Flask's signed cookie, path ``/console``): ``Secure``,
  ``HttpOnly``, ``SameSite=Strict``, at most :data:`SESSION_SECONDS` old. Its signing key
  is derived from the admin token, so every worker of a gunicorn pool accepts it and
  changing the admin token logs everyone out.
- **CSRF protection**: every form carries a per-session token (``csrf_token()`` in the
  templates); a POST without it, or with another session's, is refused (403) before
  the view runs. ``SameSite=Strict`` is the second line of defence, not the only one.
- **Headers**: a strict Content-Security-Policy (no inline script, no framing), no
  caching, no referrer.
- **Errors** in a console page render as a page, not as the API's JSON.

Charts are inline SVG rendered on the server (:mod:`trapdoor.service.charts`): no
script, no front-end build step. Jinja's autoescaping is on for every template, so a
subject name with HTML in it is shown as text.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException

from trapdoor.service.charts import line_chart
from trapdoor.service.errors import TrapdoorError, http_status

__all__ = [
    "CONSOLE_PREFIX",
    "SESSION_SECONDS",
    "ConsoleNav",
    "console_pages",
    "console_time",
    "install_console",
    "is_console_endpoint",
    "render_page",
]

CONSOLE_PREFIX = "/console"
#: A console session ends this long after login, whatever the browser keeps.
SESSION_SECONDS = 8 * 3600
_CSRF_FIELD = "csrf_token"
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

#: The console's navigation: (endpoint, label) pairs, in order.
ConsoleNav = Sequence[tuple[str, str]]
#: Called with the client's address after a wrong admin token (a service's audit log).
FailedLogin = Callable[[str], None]

def console_pages(import_name: str) -> Blueprint:
    """The blueprint a service adds its pages to (endpoint names ``console.<view>``)."""
    return Blueprint(
        "console", import_name, url_prefix=CONSOLE_PREFIX, template_folder="templates"
    )


def render_page(template: str, **context: Any) -> str:
    """Render one of the console's templates (the layout gives nav, title and CSRF)."""
    return render_template(template, **context)


def _session_key(admin_token: str) -> bytes:
    """The cookie-signing key: derived from the admin token, so stable across workers."""
    return hmac.new(admin_token.encode(), b"trapdoor-console-session-v1", hashlib.sha256).digest()


def _csrf_token() -> str:
    token = session.get(_CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[_CSRF_FIELD] = token
    return token


def _logged_in(now: float) -> bool:
    started = session.get("login_at")
    return isinstance(started, int | float) and 0 <= now - started <= SESSION_SECONDS


def _csrf_ok() -> bool:
    sent = request.form.get(_CSRF_FIELD, "")
    expected = session.get(_CSRF_FIELD)
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def _admin_token_ok(token: str) -> bool:
    expected = current_app.config.get("ADMIN_TOKEN")
    return bool(expected) and hmac.compare_digest(token.encode(), str(expected).encode())


def _error_page(status: int, code: str, message: str) -> tuple[str, int]:
    return render_template("console/error.html", status=status, code=code, message=message), status


def install_console(
    app: Flask,
    pages: Blueprint,
    *,
    title: str,
    nav: ConsoleNav,
    on_failed_login: FailedLogin | None = None,
    clock: Callable[[], float] | None = None,
) -> None:
    """Serve ``pages`` under ``/console`` behind the admin login, with CSRF and headers.

    ``nav`` lists the pages' endpoints for the layout's menu; ``on_failed_login`` lets a
    service record a wrong admin token (its audit log); ``clock`` is the session clock.
    """
    now: Callable[[], float] = clock or time.time
    token = app.config.get("ADMIN_TOKEN")
    app.config["SECRET_KEY"] = app.config.get("SECRET_KEY") or (
        _session_key(str(token)) if token else secrets.token_bytes(32)
    )
    app.config.update(
        SESSION_COOKIE_NAME="trapdoor_console",
        SESSION_COOKIE_PATH=CONSOLE_PREFIX,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(app.config.get("CONSOLE_SECURE_COOKIE", True)),
        PERMANENT_SESSION_LIFETIME=SESSION_SECONDS,
    )
    auth = Blueprint(
        "console_auth",
        __name__,
        url_prefix=CONSOLE_PREFIX,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    @auth.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        """The login page: the service's admin token starts an operator session."""
        if not current_app.config.get("ADMIN_TOKEN"):
            return _error_page(403, "forbidden", "The console is off: no admin token is set.")
        if request.method == "GET":
            return render_template("console/login.html", failed=False)
        if not _admin_token_ok(request.form.get("token", "")):
            if on_failed_login is not None:
                on_failed_login(request.remote_addr or "unknown")
            return render_template("console/login.html", failed=True), 401
        session.clear()  # a new session on login: no fixation
        session.permanent = True
        session["login_at"] = now()
        _csrf_token()
        target = request.args.get("next", "")
        return redirect(target if _local_path(target) else url_for(nav[0][0]))

    @auth.post("/logout")
    def logout() -> Any:
        """End the operator session."""
        session.clear()
        return redirect(url_for("console_auth.login"))

    @pages.before_request
    def _require_login() -> Any:
        if not current_app.config.get("ADMIN_TOKEN"):
            return _error_page(403, "forbidden", "The console is off: no admin token is set.")
        if not _logged_in(now()):
            session.clear()
            return redirect(url_for("console_auth.login", next=request.full_path.rstrip("?")))
        return None

    @pages.errorhandler(TrapdoorError)
    def _domain_error(exc: TrapdoorError) -> Any:
        return _error_page(http_status(exc), exc.code, exc.message)

    @pages.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        return _error_page(exc.code or 500, "error", exc.description or "")

    app.register_blueprint(auth)
    app.register_blueprint(pages)

    @app.before_request
    def _check_csrf() -> Any:
        if request.method != "POST" or not _in_console(request.path):
            return None
        # the login form's own token is bound to the cookie its GET set, before login
        if not _csrf_ok():
            return _error_page(
                403,
                "csrf",
                "The form was refused: its CSRF token is missing or wrong. "
                "Reload the page and try again.",
            )
        return None

    @app.after_request
    def _console_headers(response: Response) -> Response:
        if _in_console(request.path):
            response.headers["Content-Security-Policy"] = _CSP
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["Cache-Control"] = "no-store"
        return response

    app.jinja_env.filters["console_time"] = console_time

    @app.context_processor
    def _layout() -> dict[str, Any]:
        if not _in_console(request.path):
            return {}
        return {
            "csrf_token": _csrf_token,
            "console_title": title,
            "console_nav": nav,
            "line_chart": line_chart,
            "logged_in": _logged_in(now()),
        }


def console_time(seconds: float) -> str:
    """UNIX seconds as a UTC time an operator reads (``2026-12-03 21:05:11Z``)."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(seconds)))


def is_console_endpoint(endpoint: str | None) -> bool:
    """Whether a URL rule's endpoint is a console page (HTML, not part of the JSON API:
    left out of ``/openapi.json`` and of the API fuzzing)."""
    return bool(endpoint) and str(endpoint).split(".", 1)[0] in ("console", "console_auth")


def _in_console(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def _local_path(target: str) -> bool:
    """Only redirect after login to a page of this console (no open redirect)."""
    return target.startswith(CONSOLE_PREFIX + "/") and not target.startswith("//") and (
        "\\" not in target
    )

