"""Tokens and their challenges (trapdoor.protocol.token, trapdoor.crypto.signing).

A token is accepted only by its audience, is a standard EdDSA JWT checked against the
injected clock, and the challenge that asks for it names its audience and purpose.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_support import HYP, refused

from trapdoor.crypto.signing import (
    TokenError,
    b64encode,
    canonical_json,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from trapdoor.protocol.token import (
    KGC_AUDIENCE,
    TokenChallenge,
    check_nonce,
    check_timestamp,
    token_challenge,
    token_request,
    verify_token_challenge,
)

# --------------------------------------------------------------------------- tokens


def test_tokens_are_accepted_only_by_their_audience() -> None:
    key = generate_signing_key()
    token = issue_token(
        key,
        subject="sub-a",
        role="participant",
        now=1000,
        ttl_seconds=60,
        token_id="t1",
        audience="sub-ps-1",
    )
    claims = verify_token(key.public_key(), token, now=1001, audience="sub-ps-1")
    assert (claims.subject, claims.audience, claims.issuer) == ("sub-a", "sub-ps-1", "kgc")
    for audience in ("sub-ps-2", KGC_AUDIENCE):
        with pytest.raises(TokenError, match="audience"):
            verify_token(key.public_key(), token, now=1001, audience=audience)
    with pytest.raises(TokenError, match="issued"):
        verify_token(key.public_key(), token, now=1001, audience="sub-ps-1", issuer="other-kgc")


def _token(key: Any, **changes: Any) -> str:
    args: dict[str, Any] = {
        "subject": "sub-a",
        "role": "participant",
        "now": 1000,
        "ttl_seconds": 60,
        "token_id": "t1",
        "audience": "sub-ps-1",
    }
    return issue_token(key, **{**args, **changes})


def test_tokens_are_standard_eddsa_jwts_checked_against_the_injected_clock() -> None:
    key = generate_signing_key()
    token = _token(key)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"]) == ("EdDSA", "JWT")
    assert jwt.decode(token, options={"verify_signature": False})["nbf"] == 1000

    def verify(t: str, now: float = 1001) -> Any:
        return verify_token(key.public_key(), t, now=now, audience="sub-ps-1")

    assert verify(token).expires_at == 1060
    assert verify(token, now=1060 + 5).token_id == "t1"  # within the 5 s leeway
    with pytest.raises(TokenError, match="expired"):
        verify(token, now=1066)
    with pytest.raises(TokenError, match="not yet valid"):
        verify(token, now=994)
    with pytest.raises(TokenError, match="not allowed"):
        verify_token(
            key.public_key(), token, now=1001, audience="sub-ps-1", roles=("param_server",)
        )


def test_tokens_with_another_algorithm_key_or_missing_claim_are_refused() -> None:
    """The classic JWT attacks: ``alg: none``, HS256 keyed with the public key, another
    signer, a claim left out, or tampered claims under the original signature."""
    key = generate_signing_key()
    claims = jwt.decode(_token(key), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")
    # "key confusion": HS256 keyed with the KGC's published verification key
    published = bytes.fromhex(public_key_hex(key.public_key()))
    hmac_token = jwt.encode(claims, published, algorithm="HS256")
    forged = [unsigned, hmac_token, _token(generate_signing_key())]
    header, _, signature = _token(key).split(".")
    tampered = json.dumps({**claims, "sub": "someone-else"}).encode()
    forged.append(f"{header}.{b64encode(tampered)}.{signature}")
    without_jti = {k: v for k, v in claims.items() if k != "jti"}
    forged.append(jwt.encode(without_jti, key, algorithm="EdDSA"))
    forged += ["", "a.b", "not-a-token", "x.y.z"]
    for token in forged:
        with pytest.raises(TokenError):
            verify_token(key.public_key(), token, now=1001, audience="sub-ps-1")
    with pytest.raises(TokenError):
        verify_token(key.public_key(), 17, now=1001, audience="sub-ps-1")


def test_the_token_challenge_names_its_audience() -> None:
    challenge = token_challenge("sub-a", 5, "nonce-123", "sub-ps")
    assert challenge == {
        "purpose": "token",
        "subject_id": "sub-a",
        "timestamp": 5,
        "nonce": "nonce-123",
        "audience": "sub-ps",
    }
    key = generate_signing_key()
    body = token_request(key, "sub-a", 5, "nonce-123", "sub-ps")
    assert {k: v for k, v in body.items() if k != "signature"} == {
        k: v for k, v in challenge.items() if k != "purpose"
    }
    verify_json(key.public_key(), challenge, body["signature"])


# --------------------------------------------------------------------------- typed challenge

#: Subject ids, nonces and audiences as JSON carries them: any text, including non-ASCII.
_TEXT = st.text(max_size=40)
_CHALLENGES = st.builds(
    TokenChallenge,
    subject_id=_TEXT,
    timestamp=st.integers(min_value=-(2**53), max_value=2**53),
    nonce=_TEXT,
    audience=_TEXT,
)


@HYP
@given(challenge=_CHALLENGES)
def test_a_typed_challenge_is_the_dict_it_replaces(challenge: TokenChallenge) -> None:
    """Same canonical JSON as the dict the services signed before it was typed, and back."""
    as_dict = token_challenge(
        challenge.subject_id, challenge.timestamp, challenge.nonce, challenge.audience
    )
    assert canonical_json(challenge.to_json()) == canonical_json(as_dict)
    assert TokenChallenge.from_json(json.loads(canonical_json(challenge.to_json()))) == challenge


@HYP
@given(challenge=_CHALLENGES)
def test_a_request_round_trips_with_its_signature(challenge: TokenChallenge) -> None:
    key = generate_signing_key()
    body = json.loads(canonical_json(challenge.to_request(key)))
    parsed, signature = TokenChallenge.from_request(body)
    assert parsed == challenge
    verify_token_challenge(parsed, signature, public_key_hex(key.public_key()))


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"subject_id": "sub-a", "timestamp": 5, "nonce": "nonce-123", "audience": "kgc"},
        {"subject_id": "sub-a", "timestamp": 5, "nonce": "nonce-123", "signature": "s"},
        {
            "subject_id": "sub-a",
            "timestamp": 5,
            "nonce": "nonce-123",
            "audience": "kgc",
            "extra": 1,
            "signature": "s",
        },
        {"subject_id": "sub-a", "timestamp": True, "nonce": "n", "audience": "kgc", "signature": 1},
        {"subject_id": "sub-a", "timestamp": 5.0, "nonce": "n", "audience": "kgc", "signature": 1},
        {"subject_id": 7, "timestamp": 5, "nonce": "nonce-123", "audience": "kgc", "signature": 1},
        {"subject_id": "a", "timestamp": 5, "nonce": None, "audience": "kgc", "signature": 1},
    ],
)
def test_a_malformed_request_is_refused(body: object) -> None:
    refused("bad-field", lambda: TokenChallenge.from_request(body))


def test_a_challenge_signed_for_another_purpose_is_refused() -> None:
    key = generate_signing_key()
    challenge = TokenChallenge("sub-a", 5, "nonce-123", KGC_AUDIENCE)
    other_purpose = {**challenge.to_json(), "purpose": "trapdoor/commitment/v2"}
    refused("bad-field", lambda: TokenChallenge.from_json(other_purpose))
    refused(
        "bad-signature",
        lambda: verify_token_challenge(
            challenge, sign_json(key, challenge.fields()), public_key_hex(key.public_key())
        ),
    )


def test_a_challenge_verifies_only_under_its_subjects_key_and_as_signed() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    key_hex = public_key_hex(key.public_key())
    challenge = TokenChallenge("sub-a", 5, "nonce-123", "sub-ps")
    signature = challenge.to_request(key)["signature"]
    verify_token_challenge(challenge, signature, key_hex)
    for changed in (
        TokenChallenge("sub-b", 5, "nonce-123", "sub-ps"),
        TokenChallenge("sub-a", 6, "nonce-123", "sub-ps"),
        TokenChallenge("sub-a", 5, "nonce-124", "sub-ps"),
        TokenChallenge("sub-a", 5, "nonce-123", KGC_AUDIENCE),
    ):
        refused("bad-signature", partial(verify_token_challenge, changed, signature, key_hex))
    for wrong in (public_key_hex(other.public_key()), "not-hex", ""):
        refused("bad-signature", partial(verify_token_challenge, challenge, signature, wrong))
    refused("bad-signature", partial(verify_token_challenge, challenge, None, key_hex))


@pytest.mark.parametrize(("offset", "fresh"), [(0, True), (60, True), (-60, True), (61, False)])
def test_a_challenge_is_fresh_within_the_skew_either_way(offset: int, fresh: bool) -> None:
    challenge = TokenChallenge("sub-a", 1000, "nonce-123", KGC_AUDIENCE)
    for now in (1000 + offset, 1000 - offset):
        if fresh:
            check_timestamp(challenge, now=now, max_skew=60)
        else:
            stale = partial(check_timestamp, challenge, now=now, max_skew=60)
            error = refused("stale-timestamp", stale)
            assert "60 s" in error.message


@pytest.mark.parametrize(
    ("nonce", "ok"),
    [
        ("n" * 8, True),
        ("n" * 128, True),
        ("!~" * 4, True),
        ("n" * 7, False),
        ("n" * 129, False),
        ("nonce 123", False),
        ("nonce-é23", False),
        ("nonce\n123", False),
        ("", False),
    ],
)
def test_a_nonce_is_8_to_128_printable_ascii_characters(nonce: str, ok: bool) -> None:
    if ok:
        check_nonce(nonce)
    else:
        refused("bad-field", lambda: check_nonce(nonce))
