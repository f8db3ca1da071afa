"""Upload receipts (trapdoor.protocol.receipt): the PS's signed word that it stored an upload.

The receipt is the one the PS has always answered an upload with (same fields, same
canonical JSON, so the same Ed25519 signature); what changed is that it has one builder
and one check. Each field is tampered with after signing, and a receipt is checked
against the upload it is claimed for.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_support import HYP, refused

from trapdoor.crypto.signing import (
    canonical_json,
    generate_signing_key,
    public_key_hex,
    sign_json,
    verify_json,
)
from trapdoor.protocol.receipt import Receipt, build_receipt, verify_receipt

DIGEST = "5a" * 32
PS_KEY = generate_signing_key()
PS_KEY_HEX = public_key_hex(PS_KEY.public_key())


def signed_receipt(**changes: Any) -> dict[str, Any]:
    fields = {
        "job_id": "job-1",
        "round_number": 3,
        "subject_id": "sub-a",
        "sha256": DIGEST,
        "accepted_at": 1_700_000_000.75,
    }
    return build_receipt(PS_KEY, **{**fields, **changes})


def test_a_receipt_is_the_signed_object_the_ps_answers_with() -> None:
    """Known answer: the fields, their order and types (``accepted_at`` in whole seconds)."""
    signed = signed_receipt()
    assert list(signed) == ["receipt", "signature"]
    assert signed["receipt"] == {
        "job_id": "job-1",
        "round": 3,
        "subject_id": "sub-a",
        "sha256": DIGEST,
        "accepted_at": 1_700_000_000,
    }
    assert list(signed["receipt"]) == ["job_id", "round", "subject_id", "sha256", "accepted_at"]
    assert signed["signature"] == sign_json(PS_KEY, signed["receipt"])
    verify_json(PS_KEY.public_key(), signed["receipt"], signed["signature"])


def test_a_receipt_verifies_under_the_ps_key_for_its_upload() -> None:
    signed = signed_receipt()
    expected = Receipt("job-1", 3, "sub-a", DIGEST, 1_700_000_000)
    assert verify_receipt(PS_KEY_HEX, signed) == expected
    assert verify_receipt(PS_KEY.public_key(), signed) == expected
    assert (
        verify_receipt(
            PS_KEY_HEX, signed, job_id="job-1", round_number=3, subject_id="sub-a", sha256=DIGEST
        )
        == expected
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "job-2"),
        ("round", 4),
        ("subject_id", "sub-b"),
        ("sha256", "5b" * 32),
        ("accepted_at", 1_700_000_001),
    ],
)
def test_a_tampered_field_breaks_the_signature(field: str, value: object) -> None:
    signed = signed_receipt()
    tampered = {**signed, "receipt": {**signed["receipt"], field: value}}
    refused("bad-receipt-signature", partial(verify_receipt, PS_KEY_HEX, tampered))


def test_a_receipt_signed_by_another_key_is_refused() -> None:
    other = generate_signing_key()
    signed = signed_receipt()
    resigned = {"receipt": signed["receipt"], "signature": sign_json(other, signed["receipt"])}
    refused("bad-receipt-signature", partial(verify_receipt, PS_KEY_HEX, resigned))
    refused("bad-receipt-signature", partial(verify_receipt, "not-a-key", signed))
    refused(
        "bad-receipt-signature", partial(verify_receipt, PS_KEY_HEX, {**signed, "signature": 1})
    )


@pytest.mark.parametrize(
    ("expected", "names"),
    [
        ({"job_id": "job-2"}, "job_id"),
        ({"round_number": 2}, "round"),
        ({"subject_id": "sub-b"}, "subject_id"),
        ({"sha256": "5b" * 32}, "sha256"),
        ({"job_id": "job-2", "sha256": "5b" * 32}, "job_id, sha256"),
    ],
)
def test_a_receipt_for_another_upload_is_refused(expected: dict[str, Any], names: str) -> None:
    check = partial(verify_receipt, PS_KEY_HEX, signed_receipt(), **expected)
    assert refused("receipt-mismatch", check).message.endswith(names)


@pytest.mark.parametrize(
    "receipt",
    [
        {"job_id": "job-1", "round": 3, "subject_id": "sub-a", "sha256": DIGEST},
        {"job_id": "j", "round": 3, "subject_id": "s", "sha256": DIGEST, "accepted_at": 1, "x": 1},
        {"job_id": 1, "round": 3, "subject_id": "s", "sha256": DIGEST, "accepted_at": 1},
        {"job_id": "j", "round": True, "subject_id": "s", "sha256": DIGEST, "accepted_at": 1},
        {"job_id": "j", "round": 3, "subject_id": "s", "sha256": DIGEST, "accepted_at": 1.5},
        {"job_id": "j", "round": 3, "subject_id": "s", "sha256": "5A" * 32, "accepted_at": 1},
        {"job_id": "j", "round": 3, "subject_id": "s", "sha256": "5a", "accepted_at": 1},
    ],
)
def test_a_malformed_receipt_is_refused_even_when_signed(receipt: dict[str, Any]) -> None:
    signed = {"receipt": receipt, "signature": sign_json(PS_KEY, receipt)}
    refused("bad-receipt", partial(verify_receipt, PS_KEY_HEX, signed))


@pytest.mark.parametrize("signed", [None, [], {}, {"receipt": []}, {"signature": "s"}])
def test_something_that_is_not_a_signed_receipt_is_refused(signed: object) -> None:
    refused("bad-receipt", partial(verify_receipt, PS_KEY_HEX, signed))


@HYP
@given(
    receipt=st.builds(
        Receipt,
        job_id=st.text(max_size=40),
        round=st.integers(min_value=0, max_value=2**31 - 1),
        subject_id=st.text(max_size=40),
        sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
        accepted_at=st.integers(min_value=0, max_value=2**40),
    )
)
def test_a_typed_receipt_round_trips_to_identical_canonical_json(receipt: Receipt) -> None:
    """The dataclass is the PS's dict exactly: same canonical JSON, so the same signature."""
    as_dict = {
        "job_id": receipt.job_id,
        "round": receipt.round,
        "subject_id": receipt.subject_id,
        "sha256": receipt.sha256,
        "accepted_at": receipt.accepted_at,
    }
    wire = canonical_json(receipt.to_json())
    assert wire == canonical_json(as_dict)
    assert Receipt.from_json(json.loads(wire)) == receipt
    signed = build_receipt(
        PS_KEY,
        job_id=receipt.job_id,
        round_number=receipt.round,
        subject_id=receipt.subject_id,
        sha256=receipt.sha256,
        accepted_at=receipt.accepted_at,
    )
    assert signed == {"receipt": as_dict, "signature": sign_json(PS_KEY, as_dict)}
    assert verify_receipt(PS_KEY_HEX, json.loads(canonical_json(signed))) == receipt
