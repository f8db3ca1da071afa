"""How the parameter server talks to the KGC: a small Protocol and its HTTP implementation.

The domain depends only on :class:`KgcGateway`, so tests run the whole PS flow against
an in-process fake (:mod:`trapdoor.ps.testing`) that does the real crypto, and the KGC
service can change its internals freely as long as docs/PROTOCOL.md holds.

Everything the KGC answers is checked here before the PS trusts it: the KGC-signed job
terms by :func:`check_job_answer` (signature, job key parameters and width, exactly the
requested terms, this PS and its key as the job's server) and a release bundle by
:func:`check_release_bundle`; the domain calls both on whatever its gateway answers, so a
fake gateway gets the same checks.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote

import requests
import tenacity
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trapdoor.crypto.bcp import PublicParams
from trapdoor.crypto.signing import (
    SignatureError,
    public_key_from_hex,
    public_key_hex,
    verify_json,
)
from trapdoor.crypto.wire import decode_frame, from_obj
from trapdoor.protocol.bundle import MaskedReleaseBinding, ReleaseBinding, release_statement
from trapdoor.protocol.common import ProtocolError, json_sha256, kgc_key_id
from trapdoor.protocol.enrolment import verify_certificate
from trapdoor.protocol.job import JobTerms, RequestedTerms, verify_job_terms
from trapdoor.protocol.token import KGC_AUDIENCE, token_request
from trapdoor.service.http import ServiceClient, ServiceError

__all__ = [
    "HttpKgcGateway",
    "KgcError",
    "KgcGateway",
    "KgcInfo",
    "check_job_answer",
    "check_masked_release_bundle",
    "check_release_bundle",
    "complete_enrolment",
    "fetch_info",
]

TOKEN_REFRESH_MARGIN_SECONDS = 30


class KgcError(RuntimeError):
    """The KGC refused, or could not be reached (``status`` 0), or answered nonsense (502).

    ``retryable`` says whether the same request may succeed later unchanged.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"KGC {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class KgcInfo:
    """The KGC's public parameters and the Ed25519 key that signs tokens and job keys."""

    params: PublicParams
    verify_key: Ed25519PublicKey
    demo: bool = False

    @property
    def verify_key_hex(self) -> str:
        return public_key_hex(self.verify_key)


class KgcGateway(Protocol):
    """What the parameter server needs from the KGC (docs/PROTOCOL.md, KGC section)."""

    def info(self) -> KgcInfo:
        """Public parameters and verification key."""
        ...

    def create_job(self, job_id: str, terms: RequestedTerms) -> dict[str, Any]:
        """Ask the KGC to sign ``terms`` (:func:`trapdoor.protocol.job.requested_terms`).

        Returns the KGC's answer as it came, ``{"job_id", "job_key", "job_terms",
        "job_terms_signature"}``: the domain checks it with :func:`check_job_answer`, so
        every gateway (HTTP or in-process) gets the same checks.
        """
        ...

    def release(self, frame: bytes) -> dict[str, Any]:
        """Send a signed ``Enc(W + R)`` frame; return the sealed release bundle."""
        ...

    def release_masked(self, body: bytes) -> dict[str, Any]:
        """Send a masked job's signed release request (JSON,
        :func:`trapdoor.protocol.release_request.masked_release_request_header` plus
        ``request_signature``); return the bundle sealing the mask sum. The domain checks
        it with :func:`check_masked_release_bundle`."""
        ...


def _info_from_json(body: Any) -> KgcInfo:
    if not isinstance(body, dict):
        raise KgcError(502, "bad-kgc-answer", "KGC info is not an object")
    try:
        params = from_obj(body.get("params"))
        verify_key = public_key_from_hex(body.get("verify_key"))
    except ValueError as exc:
        raise KgcError(502, "bad-kgc-answer", f"KGC info is invalid: {exc}") from None
    if not isinstance(params, PublicParams):
        raise KgcError(502, "bad-kgc-answer", "KGC info params are not bcp-params")
    return KgcInfo(params, verify_key, bool(body.get("demo", False)))


def check_job_answer(
    body: Any,
    info: KgcInfo,
    *,
    job_id: str,
    requested: RequestedTerms,
    param_server: str,
    param_server_key: str,
) -> tuple[JobTerms, str]:
    """Check a ``POST /v1/jobs`` answer before the PS stores or serves anything of it.

    The KGC-signed terms must verify under the KGC's key with a job key under its
    parameters (:func:`trapdoor.protocol.job.verify_job_terms`), contain exactly the
    ``requested`` fields, name this PS (``param_server``) as the job's server with its own
    key (``param_server_key``, hex: participants check the closed sets under it), and the
    answer's ``job_key`` must be the signed one. Returns the typed terms and the signature.
    """
    if not isinstance(body, dict) or body.get("job_id") != job_id:
        raise KgcError(502, "bad-kgc-answer", "job answer does not name the job")
    signature = body.get("job_terms_signature")
    try:
        terms = verify_job_terms(info.verify_key, body.get("job_terms"), signature, info.params)
    except ProtocolError as exc:
        raise KgcError(502, "bad-kgc-answer", f"job terms rejected: {exc.message}") from None
    asked = requested.to_json()
    mismatched = sorted(name for name in asked if terms.raw.get(name) != asked[name])
    if mismatched or terms.job_id != job_id:
        raise KgcError(
            502,
            "bad-kgc-answer",
            "the KGC signed other terms than requested: " + ", ".join(mismatched or ["job_id"]),
        )
    if terms.param_server != param_server:
        raise KgcError(502, "bad-kgc-answer", "the KGC signed the job for another server")
    if terms.param_server_key != param_server_key:
        raise KgcError(502, "bad-kgc-answer", "the KGC signed the job for another server key")
    if body.get("job_key") != terms.raw["job_key"]:
        raise KgcError(502, "bad-kgc-answer", "the answer's job key is not the signed one")
    return terms, str(signature)


def check_release_bundle(
    bundle: Any,
    info: KgcInfo,
    *,
    binding: ReleaseBinding,
    contributors: Sequence[str],
    num_plaintexts: int,
) -> dict[str, Any]:
    """Check a release bundle before storing it for download.

    ``kgc_signature`` signs the bundle without that field (canonical JSON); the bundle
    must name exactly the ``binding`` of the audited attempt it was asked for (job, round,
    attempt, base, contributor set, blind: what its sealing is bound to, so contributors
    can open it) and hold exactly one wrapped key per contributor.
    """
    if not isinstance(bundle, dict):
        raise KgcError(502, "bad-kgc-answer", "release bundle is not an object")
    body = {k: v for k, v in bundle.items() if k != "kgc_signature"}
    try:
        verify_json(info.verify_key, body, bundle.get("kgc_signature"))
    except SignatureError:
        raise KgcError(502, "bad-kgc-answer", "release bundle signature does not verify") from None
    wrapped = bundle.get("wrapped_keys")
    if (
        any(bundle.get(name) != value for name, value in binding.fields().items())
        or bundle.get("num_plaintexts") != num_plaintexts
        or not isinstance(bundle.get("sealed_model"), dict)
        or not isinstance(wrapped, dict)
        or sorted(wrapped) != sorted(contributors)
    ):
        raise KgcError(502, "bad-kgc-answer", "release bundle does not match the request")
    return bundle


def check_masked_release_bundle(
    bundle: Any, info: KgcInfo, *, binding: MaskedReleaseBinding
) -> dict[str, Any]:
    """Check a masked release bundle before storing it for download.

    It must name exactly ``binding`` (job, terms, round, run and every contributor's
    ``y`` digest: what the sealed mask sum is bound to), hold one wrapped key per
    contributor with the digests it lists, and carry the KGC's ``release_signature`` over
    :func:`trapdoor.protocol.bundle.release_statement`: what each contributor checks with
    only its own wrapped key, so a bundle the PS stores is one every contributor accepts.
    """
    if not isinstance(bundle, dict):
        raise KgcError(502, "bad-kgc-answer", "release bundle is not an object")
    try:
        named = MaskedReleaseBinding.from_fields(bundle)
    except ValueError as exc:
        raise KgcError(502, "bad-kgc-answer", f"masked bundle: {exc}") from None
    if named.fields() != binding.fields():
        raise KgcError(502, "bad-kgc-answer", "the bundle is bound to another release")
    wrapped = bundle.get("wrapped_keys")
    if not isinstance(wrapped, dict) or sorted(wrapped) != binding.contributors:
        raise KgcError(502, "bad-kgc-answer", "the bundle must wrap a key for each contributor")
    digests = {s: json_sha256(w) for s, w in sorted(wrapped.items())}
    if bundle.get("wrapped_keys_sha256") != digests:
        raise KgcError(502, "bad-kgc-answer", "the bundle lists other wrapped-key digests")
    if "sealed_mask" not in bundle:
        raise KgcError(502, "bad-kgc-answer", "the bundle has no sealed mask sum")
    statement = release_statement(
        binding, bundle["sealed_mask"], wrapped, kgc_key_id(info.verify_key)
    )
    try:
        verify_json(info.verify_key, statement, bundle.get("release_signature"))
    except SignatureError:
        raise KgcError(502, "bad-kgc-answer", "release signature does not verify") from None
    return bundle


def _kgc_error(exc: ServiceError) -> KgcError:
    return KgcError(exc.status, exc.code, exc.message)


def fetch_info(client: ServiceClient) -> KgcInfo:
    """``GET /v1/info`` (no credentials)."""
    try:
        return _info_from_json(client.get_json("/v1/info", auth=False))
    except ServiceError as exc:
        raise _kgc_error(exc) from None


def complete_enrolment(
    client: ServiceClient, subject_id: str, code: str, signing_key: Ed25519PrivateKey
) -> tuple[dict[str, Any], str]:
    """Finish the PS's enrolment: certify ``signing_key`` with the one-time ``code``.

    Checks the certificate (KGC signature, subject, role ``param_server``, our key).
    """
    info = fetch_info(client)
    try:
        body = client.post_json(
            f"/v1/enrolments/{quote(subject_id, safe='')}/complete",
            {"code": code, "signing_key": public_key_hex(signing_key)},
            auth=False,
        )
    except ServiceError as exc:
        raise _kgc_error(exc) from None
    certificate = body.get("certificate") if isinstance(body, dict) else None
    signature = body.get("signature") if isinstance(body, dict) else None
    try:
        verify_certificate(
            info.verify_key,
            certificate,
            signature,
            subject_id=subject_id,
            role="param_server",
            signing_key=public_key_hex(signing_key),
        )
    except ProtocolError as exc:
        raise KgcError(502, "bad-kgc-answer", exc.message) from None
    return cast(dict[str, Any], certificate), str(signature)  # a dict: it verified


class HttpKgcGateway:
    """:class:`KgcGateway` over HTTP, with its own short-lived ``param_server`` token.

    The token is obtained with a signed challenge for the KGC's audience
    (``POST /v1/tokens``), cached until shortly before it expires, and refreshed once if
    the KGC answers 401.
    """

    def __init__(
        self,
        base_url: str,
        subject_id: str,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 60.0,
        session: requests.Session | None = None,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.subject_id = subject_id
        self._signing_key = signing_key
        self._clock = clock
        self._nonce = nonce
        self._client = ServiceClient(base_url, token=self._token, timeout=timeout, session=session)
        self._lock = threading.Lock()
        self._cached_token: tuple[str, float] | None = None
        self._info: KgcInfo | None = None

    def info(self) -> KgcInfo:
        if self._info is None:
            self._info = fetch_info(self._client)
        return self._info

    def _token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._cached_token and self._cached_token[1] - TOKEN_REFRESH_MARGIN_SECONDS > now:
                return self._cached_token[0]
            body = token_request(
                self._signing_key, self.subject_id, int(now), self._nonce(), KGC_AUDIENCE
            )
            try:
                answer = self._client.post_json("/v1/tokens", body, auth=False)
                token, expires_at = str(answer["token"]), float(answer["expires_at"])
            except ServiceError as exc:
                raise _kgc_error(exc) from None
            except (KeyError, TypeError, ValueError):
                raise KgcError(502, "bad-kgc-answer", "token answer is malformed") from None
            self._cached_token = (token, expires_at)
            return token

    def _call(self, send: Callable[[], Any]) -> Any:
        """One authenticated call; a 401 drops the cached token and retries once."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, ServiceError) and exc.status == 401
            ),
            stop=tenacity.stop_after_attempt(2),
            before_sleep=lambda _: self._forget_token(),
            reraise=True,
        )
        try:
            return retrying(send)
        except ServiceError as exc:
            raise _kgc_error(exc) from None

    def _forget_token(self) -> None:
        with self._lock:
            self._cached_token = None

    def create_job(self, job_id: str, terms: RequestedTerms) -> dict[str, Any]:
        body = {"job_id": job_id, "terms": terms.to_json()}
        answer = self._call(lambda: self._client.post_json("/v1/jobs", body))
        if not isinstance(answer, dict):
            raise KgcError(502, "bad-kgc-answer", "job answer is not an object")
        return answer

    def release(self, frame: bytes) -> dict[str, Any]:
        job_id = decode_frame(frame, max_header_bytes=None).header.get("job_id")  # our own
        if not isinstance(job_id, str):
            raise ValueError("release frame names no job")
        path = f"/v1/jobs/{quote(job_id, safe='')}/releases"
        answer = self._call(lambda: self._client.post_bytes(path, frame))
        if not isinstance(answer, dict):
            raise KgcError(502, "bad-kgc-answer", "release answer is not an object")
        return answer

    def release_masked(self, body: bytes) -> dict[str, Any]:
        job_id = json.loads(body).get("job_id")  # our own request
        if not isinstance(job_id, str):
            raise ValueError("release request names no job")
        path = f"/v1/jobs/{quote(job_id, safe='')}/releases"
        headers = {"Content-Type": "application/json"}
        answer = self._call(lambda: self._client.post_bytes(path, body, headers=headers))
        if not isinstance(answer, dict):
            raise KgcError(502, "bad-kgc-answer", "release answer is not an object")
        return answer
