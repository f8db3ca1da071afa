"""Token challenges: what a subject signs to get a short-lived token for one audience.

Built by every subject that needs a token (a participant's client, the PS's KGC gateway):
:meth:`TokenChallenge.to_request` is the body of ``POST /v1/tokens``, the challenge's
fields and the subject's Ed25519 signature over :meth:`TokenChallenge.to_json`, which adds
the ``purpose`` tag so that no other signed message can pass as a challenge.

Checked by the KGC (and by the test fakes of it, with the same functions), in this
order: the nonce's spelling (:func:`check_nonce`), the signature under the subject's
certified key (:func:`verify_token_challenge`) and the timestamp's freshness
(:func:`check_timestamp`). Whether the audience exists and whether the nonce was used
before need the KGC's records, so the KGC checks those itself. The audience is
:data:`KGC_AUDIENCE` or one parameter server's subject id: a token is accepted only by the
service it names. Pure: no Flask, no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.signing import SignatureError, public_key_from_hex, sign_json, verify_json
from trapdoor.protocol.common import ProtocolError

__all__ = [
    "KGC_AUDIENCE",
    "TOKEN_PURPOSE",
    "TokenChallenge",
    "check_nonce",
    "check_timestamp",
    "token_challenge",
    "token_request",
    "verify_token_challenge",
]

TOKEN_PURPOSE = "token"
#: The audience of a token meant for the KGC itself; a PS's audience is its subject id.
KGC_AUDIENCE = "kgc"
#: A challenge nonce: 8 to 128 printable ASCII characters, no spaces (the KGC stores it
#: to refuse a replay, so its size is bounded).
_NONCE = re.compile(r"\A[\x21-\x7e]{8,128}\Z")


@dataclass(frozen=True)
class TokenChallenge:
    """A subject's request for a token for ``audience``, at ``timestamp``, once (``nonce``)."""

    subject_id: str
    timestamp: int
    nonce: str
    audience: str

    def fields(self) -> dict[str, Any]:
        """The challenge as the request body carries it (no purpose, no signature)."""
        return {
            "subject_id": self.subject_id,
            "timestamp": self.timestamp,
            "nonce": self.nonce,
            "audience": self.audience,
        }

    def to_json(self) -> dict[str, Any]:
        """What the subject signs: the fields, tagged with :data:`TOKEN_PURPOSE`."""
        return {"purpose": TOKEN_PURPOSE, **self.fields()}

    @classmethod
    def from_json(cls, obj: object) -> TokenChallenge:
        """Inverse of :meth:`to_json`; strict (exact keys and types), ``bad-field`` otherwise."""
        if not isinstance(obj, dict) or obj.get("purpose") != TOKEN_PURPOSE:
            raise ProtocolError("bad-field", "a token challenge is an object with its purpose")
        return cls._parse({k: v for k, v in obj.items() if k != "purpose"})

    def to_request(self, signing_key: Ed25519PrivateKey) -> dict[str, Any]:
        """The body of ``POST /v1/tokens``: the fields and the subject's signature."""
        return {**self.fields(), "signature": sign_json(signing_key, self.to_json())}

    @classmethod
    def from_request(cls, body: object) -> tuple[TokenChallenge, object]:
        """Inverse of :meth:`to_request`: the challenge and the signature (unchecked)."""
        if not isinstance(body, dict) or "signature" not in body:
            raise ProtocolError("bad-field", "a token request is an object with a signature")
        return cls._parse({k: v for k, v in body.items() if k != "signature"}), body["signature"]

    @classmethod
    def _parse(cls, fields: dict[str, Any]) -> TokenChallenge:
        if set(fields) != {"subject_id", "timestamp", "nonce", "audience"}:
            raise ProtocolError(
                "bad-field", "a token challenge has subject_id, timestamp, nonce and audience"
            )
        timestamp = fields["timestamp"]
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise ProtocolError("bad-field", "timestamp must be an integer")
        for name in ("subject_id", "nonce", "audience"):
            if not isinstance(fields[name], str):
                raise ProtocolError("bad-field", f"{name} must be a string")
        return cls(fields["subject_id"], timestamp, fields["nonce"], fields["audience"])


def token_challenge(subject_id: str, timestamp: int, nonce: str, audience: str) -> dict[str, Any]:
    """What a subject signs to get a token for ``audience`` (``POST /v1/tokens``)."""
    return TokenChallenge(subject_id, timestamp, nonce, audience).to_json()


def token_request(
    signing_key: Ed25519PrivateKey, subject_id: str, timestamp: int, nonce: str, audience: str
) -> dict[str, Any]:
    """The body of ``POST /v1/tokens``: the challenge's fields and the subject's signature."""
    return TokenChallenge(subject_id, timestamp, nonce, audience).to_request(signing_key)


def check_nonce(nonce: str) -> None:
    """A challenge's nonce is 8 to 128 printable ASCII characters; ``bad-field`` otherwise.

    Checked before anything is looked up, so a malformed request learns nothing.
    """
    if not _NONCE.match(nonce):
        raise ProtocolError("bad-field", "nonce must be 8 to 128 printable ASCII characters")


def verify_token_challenge(challenge: TokenChallenge, signature: object, signing_key: str) -> None:
    """The challenge is signed by ``signing_key`` (the subject's certified Ed25519 key, hex);
    ``bad-signature`` otherwise."""
    try:
        verify_json(public_key_from_hex(signing_key), challenge.to_json(), signature)
    except (SignatureError, ValueError):
        raise ProtocolError("bad-signature", "the challenge signature does not verify") from None


def check_timestamp(challenge: TokenChallenge, *, now: float, max_skew: float) -> None:
    """The challenge was made within ``max_skew`` seconds of ``now``, either way;
    ``stale-timestamp`` otherwise. With the nonce's record, this bounds a replay."""
    if abs(now - challenge.timestamp) > max_skew:
        raise ProtocolError("stale-timestamp", f"timestamp is more than {max_skew:g} s off")
