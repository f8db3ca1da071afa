"""The envelope every participant-signed round message shares (package-internal).

Commitments (:mod:`trapdoor.protocol.commitment`), upload statements
(:mod:`trapdoor.protocol.upload`), audits and ``undecodable`` reports
(:mod:`trapdoor.protocol.audit`) are each ``{kind: body, "signature"}``, signed with the
participant's certified Ed25519 key over a body that starts with the same fields (purpose,
KGC key id, job, terms digest, round, run, signer, audience). One typed base
(:class:`ParticipantStatement`), one builder and one check for those fields, so no step can
drift from the others. Needs the job terms, so it sits after :mod:`trapdoor.protocol.job`
(and not in :mod:`trapdoor.protocol.common`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Generic, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.signing import SignatureError, public_key_from_hex, sign_json, verify_json
from trapdoor.protocol.common import (
    MAX_ATTEMPT,
    MAX_ROUND,
    MAX_RUN,
    ProtocolError,
    in_range,
    is_digest,
    is_json_int,
)
from trapdoor.protocol.job import JobTerms

__all__ = ["ParticipantStatement", "Signed", "verify_participant_signed"]

_TEXT_FIELDS = ("purpose", "kgc_key_id", "job_id", "subject_id", "audience")


@dataclass(frozen=True)
class ParticipantStatement:
    """The body of a participant-signed round message: the shared fields, then the step's.

    Subclasses name their envelope key (``FIELD``), their ``PURPOSE`` and which of their
    own fields are digests, bounded counters or JSON objects; :meth:`from_json` checks
    exactly that shape, so a body that parses is one that :meth:`to_json` gives back
    unchanged (and whose signature therefore still verifies).
    """

    FIELD: ClassVar[str]
    PURPOSE: ClassVar[str]
    DIGESTS: ClassVar[tuple[str, ...]] = ()
    INTEGERS: ClassVar[tuple[str, ...]] = ()
    OBJECTS: ClassVar[tuple[str, ...]] = ()

    purpose: str
    kgc_key_id: str
    job_id: str
    job_terms_sha256: str
    round: int
    run: int
    subject_id: str
    audience: str

    @classmethod
    def for_round(
        cls, terms: JobTerms, round_number: int, subject_id: str, run: int = 0, **own: Any
    ) -> Self:
        """This step's body for one signer, round and run of the job (``own``: its fields).

        ``run`` is 0, or 1 for the single re-run of a round whose release did not decode:
        a message of one run is never valid in the other.
        """
        shared: dict[str, Any] = _expected(terms, cls.PURPOSE, round_number, subject_id, run)
        return cls(**shared, **own)

    def to_json(self) -> dict[str, Any]:
        """The signed body, in field order (what the wire and the PS's database hold)."""
        body: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            body[f.name] = dict(value) if isinstance(value, Mapping) else value
        return body

    @classmethod
    def from_json(cls, obj: object) -> Self:
        """Inverse of :meth:`to_json`; strict (exact keys, purpose, types), ``bad-<field>``."""
        what = cls.FIELD.replace("_", " ")
        names = {f.name for f in fields(cls)}
        if not isinstance(obj, dict) or set(obj) != names:
            raise ProtocolError(f"bad-{cls.FIELD}", f"a {what} has the fields {sorted(names)}")
        if not all(isinstance(obj[k], str) for k in _TEXT_FIELDS):
            raise ProtocolError(f"bad-{cls.FIELD}", f"{', '.join(_TEXT_FIELDS)} must be strings")
        if obj["purpose"] != cls.PURPOSE:
            raise ProtocolError(f"bad-{cls.FIELD}", f"a {what}'s purpose is {cls.PURPOSE}")
        if not in_range(obj["round"], 0, MAX_ROUND) or not in_range(obj["run"], 0, MAX_RUN):
            raise ProtocolError(f"bad-{cls.FIELD}", "round and run must be in range")
        for name in ("job_terms_sha256", *cls.DIGESTS):
            if not is_digest(obj[name]):
                raise ProtocolError(
                    f"bad-{cls.FIELD}", f"{name} must be 64 lowercase hex characters"
                )
        for name in cls.INTEGERS:
            if not in_range(obj[name], 0, MAX_ATTEMPT):
                raise ProtocolError(
                    f"bad-{cls.FIELD}", f"{name} must be an integer in [0, {MAX_ATTEMPT}]"
                )
        for name in cls.OBJECTS:
            if not isinstance(obj[name], dict):
                raise ProtocolError(f"bad-{cls.FIELD}", f"{name} must be an object")
        values: dict[str, Any] = {k: dict(v) if k in cls.OBJECTS else v for k, v in obj.items()}
        return cls(**values)

    def sign(self, signing_key: Ed25519PrivateKey) -> Signed[Self]:
        """This body signed with the participant's certified key."""
        return Signed(self, sign_json(signing_key, self.to_json()))


_S = TypeVar("_S", bound=ParticipantStatement)
_S_co = TypeVar("_S_co", bound=ParticipantStatement, covariant=True)


@dataclass(frozen=True)
class Signed(Generic[_S_co]):
    """A signed statement as it travels and is stored: ``{FIELD: body, "signature"}``."""

    message: _S_co
    signature: str

    def to_json(self) -> dict[str, Any]:
        return {self.message.FIELD: self.message.to_json(), "signature": self.signature}


def _expected(
    terms: JobTerms, purpose: str, round_number: int, subject_id: str, run: int
) -> dict[str, object]:
    """The shared fields a body for this job, round, run and signer must carry."""
    return {
        "purpose": purpose,
        "kgc_key_id": str(terms.raw["kgc_key_id"]),
        "job_id": terms.job_id,
        "job_terms_sha256": terms.digest,
        "round": int(round_number),
        "run": int(run),
        "subject_id": subject_id,
        "audience": terms.param_server,
    }


def verify_participant_signed(
    signed: object,
    kind: type[_S],
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str | None,
    run: int = 0,
) -> _S:
    """Check one participant-signed ``{kind.FIELD: body, "signature"}`` message; its body.

    The key is the one the KGC certified and wrote into the terms, so the PS, the KGC and
    any participant check it offline and identically. The body must then parse as
    ``kind`` (:meth:`ParticipantStatement.from_json`).
    """
    field = kind.FIELD
    what = field.replace("_", " ")
    if not isinstance(signed, dict) or not isinstance(signed.get(field), dict):
        raise ProtocolError(f"bad-{field}", f'a signed {what} is {{"{field}", "signature"}}')
    body: dict[str, Any] = signed[field]
    subject = body.get("subject_id")
    key_hex = terms.signing_keys.get(subject) if isinstance(subject, str) else None
    if key_hex is None:
        raise ProtocolError("not-a-participant", f"the {what}'s signer is not a participant")
    try:
        verify_json(public_key_from_hex(key_hex), body, signed.get("signature"))
    except (SignatureError, ValueError):
        raise ProtocolError(
            f"bad-{field}-signature", f"the {what} is not signed by its participant"
        ) from None
    expected = _expected(terms, kind.PURPOSE, round_number, str(subject), run)
    if subject_id is not None and subject != subject_id:
        raise ProtocolError(f"{field}-mismatch", f"the {what} is signed by another participant")
    if set(body) != {f.name for f in fields(kind)} or any(
        body.get(k) != v or (k in ("round", "run") and not is_json_int(body.get(k)))
        for k, v in expected.items()
    ):
        raise ProtocolError(
            f"{field}-mismatch", f"the {what} is for another job, round, run, signer or audience"
        )
    return kind.from_json(body)
