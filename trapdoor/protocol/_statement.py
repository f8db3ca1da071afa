"""The envelope every participant-signed round message shares (package-internal).

Commitments (:mod:`trapdoor.protocol.commitment`), upload statements
(:mod:`trapdoor.protocol.upload`), audits and ``undecodable`` reports
(:mod:`trapdoor.protocol.audit`) are each ``{kind: body, "signature"}``, signed with the
participant's certified Ed25519 key over a body that starts with the same fields (purpose,
KGC key id, job, terms digest, round, run, signer, audience). One builder and one check
for those fields, so no step can drift from the others. Needs the job terms, so it sits
after :mod:`trapdoor.protocol.job` (and not in :mod:`trapdoor.protocol.common`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trapdoor.crypto.signing import SignatureError, public_key_from_hex, verify_json
from trapdoor.protocol.common import MAX_ATTEMPT, ProtocolError, in_range, is_digest, is_json_int
from trapdoor.protocol.job import JobTerms

__all__ = ["statement_base", "verify_participant_signed"]


def statement_base(
    terms: JobTerms, purpose: str, round_number: int, subject_id: str, run: int = 0
) -> dict[str, Any]:
    """The fields every participant-signed message of a round starts with.

    ``run`` is 0, or 1 for the single re-run of a round whose release did not decode: a
    message of one run is never valid in the other.
    """
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
    field: str,
    terms: JobTerms,
    purpose: str,
    *,
    round_number: int,
    subject_id: str | None,
    digests: Sequence[str],
    integers: Sequence[str] = (),
    objects: Sequence[str] = (),
    run: int = 0,
) -> dict[str, Any]:
    """Check one participant-signed ``{field: body, "signature"}`` message; return the body.

    The key is the one the KGC certified and wrote into the terms, so the PS, the KGC and
    any participant check it offline and identically. ``digests`` are the body's other
    fields (64 lowercase hex characters each), ``integers`` its non-negative counters.
    """
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
    expected = statement_base(terms, purpose, round_number, str(subject), run)
    if subject_id is not None and subject != subject_id:
        raise ProtocolError(f"{field}-mismatch", f"the {what} is signed by another participant")
    if set(body) != {*expected, *digests, *integers, *objects} or any(
        body.get(k) != v or (k in ("round", "run") and not is_json_int(body.get(k)))
        for k, v in expected.items()
    ):
        raise ProtocolError(
            f"{field}-mismatch", f"the {what} is for another job, round, run, signer or audience"
        )
    for name in digests:
        if not is_digest(body.get(name)):
            raise ProtocolError(f"bad-{field}", f"{name} must be 64 lowercase hex characters")
    for name in integers:
        if not in_range(body.get(name), 0, MAX_ATTEMPT):
            raise ProtocolError(f"bad-{field}", f"{name} must be an integer in [0, {MAX_ATTEMPT}]")
    return body
