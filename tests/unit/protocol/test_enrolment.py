"""Enrolment certificates (trapdoor.protocol.enrolment): what the KGC signs, what a subject checks.

A KGC, or a man in the middle, that certifies other keys, or signs with another key than
the one the subject is about to pin, is not trusted; the certificate is the object the KGC
has always signed (same fields, same canonical JSON).
"""

from __future__ import annotations

import json
import random
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_support import HYP, Params, refused

from trapdoor.crypto.signing import (
    canonical_json,
    generate_signing_key,
    public_key_hex,
    sign_json,
)
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.enrolment import Certificate, sign_certificate, verify_certificate

KGC = generate_signing_key()
KGC_HEX = public_key_hex(KGC.public_key())
SUBJECT_KEY = public_key_hex(generate_signing_key().public_key())


@pytest.fixture(scope="module")
def bcp_key(small_params: Params) -> dict[str, Any]:
    """A participant's BCP public key as the certificate carries it."""
    public, _ = small_params[0].keygen(random.Random(5))
    return to_obj(public)


def participant(bcp_key: dict[str, Any]) -> Certificate:
    return Certificate("sub-a", "alice", "participant", SUBJECT_KEY, 1_700_000_000, bcp_key)


def test_the_certificate_is_the_object_the_kgc_signs(bcp_key: dict[str, Any]) -> None:
    """Known answer: the fields in order; a subject without a BCP key has no such field."""
    signed = sign_certificate(KGC, participant(bcp_key))
    assert signed["certificate"] == {
        "subject_id": "sub-a",
        "name": "alice",
        "role": "participant",
        "signing_key": SUBJECT_KEY,
        "issued_at": 1_700_000_000,
        "bcp_public_key": bcp_key,
    }
    assert signed["signature"] == sign_json(KGC, signed["certificate"])
    server = Certificate("sub-ps", "ps", "param_server", SUBJECT_KEY, 5).to_json()
    assert list(server) == ["subject_id", "name", "role", "signing_key", "issued_at"]


def test_a_certificate_of_our_keys_verifies(bcp_key: dict[str, Any]) -> None:
    signed = sign_certificate(KGC, participant(bcp_key))
    for key in (KGC_HEX, KGC.public_key()):
        checked = verify_certificate(
            key,
            signed["certificate"],
            signed["signature"],
            subject_id="sub-a",
            role="participant",
            signing_key=SUBJECT_KEY,
            bcp_public_key=bcp_key,
        )
        assert checked == participant(bcp_key)


def _verify(signed: dict[str, Any], key: Any = KGC_HEX, **expected: Any) -> Certificate:
    mine = {"subject_id": "sub-a", "role": "participant", "signing_key": SUBJECT_KEY, **expected}
    return verify_certificate(key, signed["certificate"], signed["signature"], **mine)


def test_a_certificate_signed_by_another_key_is_refused(bcp_key: dict[str, Any]) -> None:
    signed = sign_certificate(generate_signing_key(), participant(bcp_key))
    error = refused("bad-certificate-signature", partial(_verify, signed))
    assert error.message == "the certificate is not signed by the KGC's verify_key"
    good = sign_certificate(KGC, participant(bcp_key))
    refused("bad-certificate-signature", partial(_verify, good, "not-a-key"))
    tampered = {**good, "certificate": {**good["certificate"], "name": "mallory"}}
    refused("bad-certificate-signature", partial(_verify, tampered))


@pytest.mark.parametrize(
    ("expected", "wrong"),
    [
        ({"subject_id": "sub-b"}, "subject_id"),
        ({"role": "param_server"}, "role"),
        ({"signing_key": "ab" * 32}, "signing_key"),
        ({"bcp_public_key": {"kind": "another"}}, "bcp_public_key"),
        ({"subject_id": "sub-b", "signing_key": "ab" * 32}, "signing_key, subject_id"),
    ],
)
def test_a_certificate_of_other_keys_is_refused(
    bcp_key: dict[str, Any], expected: dict[str, Any], wrong: str
) -> None:
    signed = sign_certificate(KGC, participant(bcp_key))
    error = refused("certificate-mismatch", partial(_verify, signed, **expected))
    assert error.message.endswith(": " + wrong)


def test_no_certificate_is_refused() -> None:
    error = refused("bad-certificate", partial(_verify, {"certificate": None, "signature": "s"}))
    assert error.message == "the KGC returned no certificate"


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {"subject_id": "s", "name": "n", "role": "r", "signing_key": "k"},
        {"subject_id": "s", "name": "n", "role": "r", "signing_key": "k", "issued_at": 1, "x": 1},
        {"subject_id": "s", "name": "n", "role": "r", "signing_key": "k", "issued_at": True},
        {"subject_id": "s", "name": 1, "role": "r", "signing_key": "k", "issued_at": 1},
        {
            "subject_id": "s",
            "name": "n",
            "role": "r",
            "signing_key": "k",
            "issued_at": 1,
            "bcp_public_key": "k",
        },
    ],
)
def test_a_malformed_certificate_does_not_parse(obj: object) -> None:
    refused("bad-certificate", partial(Certificate.from_json, obj))


_TEXT = st.text(max_size=30)


@HYP
@given(
    certificate=st.builds(
        Certificate,
        subject_id=_TEXT,
        name=_TEXT,
        role=st.sampled_from(["participant", "param_server"]),
        signing_key=st.text("0123456789abcdef", min_size=64, max_size=64),
        issued_at=st.integers(min_value=0, max_value=2**40),
        bcp_public_key=st.none() | st.dictionaries(_TEXT, _TEXT, max_size=3),
    )
)
def test_a_typed_certificate_round_trips_to_identical_canonical_json(
    certificate: Certificate,
) -> None:
    """The dataclass is the KGC's dict exactly: same canonical JSON, so the same signature."""
    as_dict: dict[str, Any] = {
        "subject_id": certificate.subject_id,
        "name": certificate.name,
        "role": certificate.role,
        "signing_key": certificate.signing_key,
        "issued_at": certificate.issued_at,
    }
    if certificate.bcp_public_key is not None:
        as_dict["bcp_public_key"] = dict(certificate.bcp_public_key)
    wire = canonical_json(certificate.to_json())
    assert wire == canonical_json(as_dict)
    assert Certificate.from_json(json.loads(wire)) == certificate
    assert sign_certificate(KGC, certificate)["signature"] == sign_json(KGC, as_dict)
