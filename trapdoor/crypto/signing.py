"""Ed25519 signatures over canonical JSON, and short-lived signed tokens (EdDSA).

The KGC certifies keys and issues tokens; the parameter server verifies tokens
*offline* with the KGC's published verification key, and signs its own receipts and
release requests. Everything signed is canonical JSON (sorted keys, no spaces), so the
signer and the verifier agree on the bytes without sharing code paths.

Tokens are JWTs (RFC 7519) signed with EdDSA over Ed25519, made and checked with PyJWT:
the verifier accepts exactly one algorithm (``EdDSA``), requires every claim this project
sets and checks issuer and audience (PyJWT), then expiry and not-before against the
service's injected clock with one leeway; the same way in every service. Why PyJWT
rather than our own format: the format is the standard one that any gateway, proxy or
debugging tool reads, and PyJWT's claim checks are a maintained, widely reviewed
implementation of exactly these rules (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SignatureError",
    "TokenClaims",
    "TokenError",
    "b64decode",
    "b64encode",
    "canonical_json",
    "generate_signing_key",
    "issue_token",
    "private_key_from_bytes",
    "private_key_to_bytes",
    "public_key_from_hex",
    "public_key_hex",
    "sign_json",
    "verify_json",
    "verify_token",
]

#: The one signature algorithm a token may name; any other (``none``, ``HS256`` with the
#: public key as secret, ...) is refused before its signature is looked at.
TOKEN_ALGORITHM = "EdDSA"
#: The claims every token carries; a token without one of them is refused.
TOKEN_CLAIMS = ("sub", "role", "iat", "nbf", "exp", "jti", "iss", "aud")
ROLES = ("participant", "param_server")


class SignatureError(ValueError):
    """A signature is missing, malformed or does not verify."""


class TokenError(ValueError):
    """A token is malformed, forged, expired, or for the wrong role."""


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64url") from None


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, compact separators, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_key_from_bytes(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Raw 32-byte public key as lowercase hex (the project's wire form)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_from_hex(text: object) -> Ed25519PublicKey:
    """Parse a raw Ed25519 public key; ``ValueError`` if it is not 32 hex-encoded bytes."""
    if not isinstance(text, str) or len(text) != 64:
        raise ValueError("an Ed25519 public key is 64 hex characters")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise ValueError("invalid Ed25519 public key") from None


def sign_json(key: Ed25519PrivateKey, obj: Any) -> str:
    """Detached base64url signature over :func:`canonical_json` of ``obj``."""
    return b64encode(key.sign(canonical_json(obj)))


def verify_json(key: Ed25519PublicKey, obj: Any, signature: object) -> None:
    """Raise :class:`SignatureError` unless ``signature`` signs ``obj`` under ``key``."""
    try:
        raw = b64decode(signature)  # type: ignore[arg-type]
        key.verify(raw, canonical_json(obj))
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify") from None


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who, in which role, for which service, until when."""

    subject: str
    role: str
    issued_at: int
    expires_at: int
    token_id: str
    issuer: str
    audience: str


def issue_token(
    key: Ed25519PrivateKey,
    *,
    subject: str,
    role: str,
    now: float,
    ttl_seconds: int,
    token_id: str,
    audience: str,
    issuer: str = "kgc",
) -> str:
    """A signed, short-lived bearer token for one ``audience`` (the one service it is for).

    ``now`` is passed in (testable clock).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    claims = {
        "sub": subject,
        "role": role,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + int(ttl_seconds),
        "jti": token_id,
        "iss": issuer,
        "aud": audience,
    }
    return jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM, headers={"typ": "JWT"})


def _claim_str(claims: dict[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _claim_int(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    return value


def verify_token(
    key: Ed25519PublicKey,
    token: object,
    *,
    now: float,
    audience: str,
    issuer: str = "kgc",
    roles: tuple[str, ...] = ROLES,
    leeway_seconds: int = 5,
) -> TokenClaims:
    """Check signature, issuer, audience, expiry and role; :class:`TokenError` otherwise.

    ``audience`` is the verifying service's own name (the KGC's, or a PS's subject id):
    a token a participant sent to one service is refused by every other one.
    """
    if not isinstance(token, str):
        raise TokenError("malformed token")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={
                "require": list(TOKEN_CLAIMS),
                "strict_aud": True,
                # Time is checked below against the service's injected clock: PyJWT
                # reads the wall clock, which tests and simulations do not control.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidIssuerError:
        raise TokenError("token was not issued by this KGC") from None
    except jwt.InvalidAudienceError:
        raise TokenError("token is for another service (audience mismatch)") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    try:
        parsed = TokenClaims(
            subject=_claim_str(claims, "sub"),
            role=_claim_str(claims, "role"),
            issued_at=_claim_int(claims, "iat"),
            expires_at=_claim_int(claims, "exp"),
            token_id=_claim_str(claims, "jti"),
            issuer=_claim_str(claims, "iss"),
            audience=_claim_str(claims, "aud"),
        )
        not_before = max(parsed.issued_at, _claim_int(claims, "nbf"))
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed token claims") from None
    if now > parsed.expires_at + leeway_seconds:
        raise TokenError("token expired")
    if now + leeway_seconds < not_before:
        raise TokenError("token not yet valid")
    if parsed.role not in roles:
        raise TokenError(f"token role {parsed.role!r} is not allowed here")
    return parsed
