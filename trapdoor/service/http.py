"""A small HTTP client for calling the services, with the project's error shape.

Used by the participant client, by the parameter server when it calls the KGC, and by
the tests. Network errors and non-2xx answers become :class:`ServiceError` carrying the
status and the service's ``{"error", "message"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

__all__ = ["ServiceClient", "ServiceError"]


class ServiceError(RuntimeError):
    """A call to a service failed: ``status`` is 0 when nothing answered."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ServiceClient:
    """JSON and binary calls to one service, with an optional bearer-token provider."""

    def __init__(
        self,
        base_url: str,
        token: Callable[[], str] | str | None = None,
        *,
        timeout: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.session = session or requests.Session()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = self._token() if callable(self._token) else self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> requests.Response:
        hdrs = self._headers(headers) if auth else dict(headers or {})
        if data is not None:
            hdrs.setdefault("Content-Type", "application/octet-stream")
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                json=json,
                data=data,
                headers=hdrs,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise ServiceError(
                0, "unreachable", f"{method} {self.base_url}{path}: {type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = str(body.get("error")), str(body.get("message"))
            except ValueError:
                code, message = "error", response.text[:200]
            raise ServiceError(response.status_code, code, message)
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs).json()

    def put_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("PUT", path, json=body, **kwargs).json()

    def post_bytes(self, path: str, data: bytes, **kwargs: Any) -> Any:
        return self.request("POST", path, data=data, **kwargs).json()

    def get_bytes(self, path: str, **kwargs: Any) -> bytes:
        return self.request("GET", path, **kwargs).content
