"""Upload statements (trapdoor.protocol.upload), both modes.

bcp: a statement names its payload and closed set, and is refused for any other. masked:
the seed ciphertext's one spelling, the mask context, and statements a PS cannot swap
between uploads or pass off as the other mode's.

Seeds are 256 bits, so the masked tests use BCP parameters with a 512-bit ``N``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from masked_support import JOB, LENGTH, MaskedWorld, Upload
from protocol_support import HYP, PS, Params, World, refused

from trapdoor.crypto.masking import derive_mask, encrypt_seed, seed_to_int
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.signing import sign_json
from trapdoor.protocol.commitment import pok_context
from trapdoor.protocol.common import kgc_key_id
from trapdoor.protocol.upload import (
    MASKED_UPLOAD_PURPOSE,
    UPLOAD_PURPOSE,
    MaskedUploadStatement,
    build_upload_statement,
    seed_from_obj,
    seed_sha256,
    seed_to_obj,
    verify_masked_upload_statement,
    verify_upload_statement,
)

# --------------------------------------------------------------------------- upload statements


def test_an_upload_statement_names_its_payload_and_closed_set(world: World) -> None:
    signed = world.statement("sub-a", 2, digest="ab" * 32, closed="cc" * 32)
    body = verify_upload_statement(
        signed,
        world.terms,
        round_number=2,
        subject_id="sub-a",
        payload_sha256="ab" * 32,
        closed_set_sha256="cc" * 32,
    )
    assert (body.payload_sha256, body.closed_set_sha256) == ("ab" * 32, "cc" * 32)
    assert body.purpose == UPLOAD_PURPOSE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_sha256": "cd" * 32},
        {"closed_set_sha256": "dd" * 32},
        {"payload_sha256": "ab" * 32, "closed_set_sha256": "dd" * 32},
        {"subject_id": "sub-b"},
        {"round_number": 3},
    ],
    ids=["payload", "closed-set", "closed-set-only", "signer", "round"],
)
def test_a_statement_for_another_payload_closed_set_signer_or_round_is_refused(
    world: World, kwargs: dict[str, Any]
) -> None:
    signed = world.statement("sub-a", 2, digest="ab" * 32, closed="cc" * 32)
    call = {"round_number": 2, **kwargs}
    refused("statement-mismatch", lambda: verify_upload_statement(signed, world.terms, **call))


# --------------------------------------------------------------------------- seeds


def test_seed_object_round_trip(masked_world: MaskedWorld) -> None:
    seed = bytes(range(32))
    ciphertext = encrypt_seed(masked_world.job_key.component(0), seed, random.Random(1))
    obj = seed_to_obj(ciphertext)
    assert set(obj) == {"A", "B"}
    assert obj == {"A": format(int(ciphertext.A), "x"), "B": format(int(ciphertext.B), "x")}
    back = seed_from_obj(json.loads(json.dumps(obj)), masked_world.job_key)
    assert back == ciphertext
    assert back.public_key == masked_world.job_key.component(0)
    assert masked_world.master.decrypt(back) == seed_to_int(seed)


def test_seed_object_names_no_key(masked_world: MaskedWorld) -> None:
    """A ciphertext under another key parses as if under the job key's first component."""
    other_key, _ = masked_world.params.keygen(random.Random(3))
    ciphertext = other_key.encrypt(5, random.Random(4))
    back = seed_from_obj(seed_to_obj(ciphertext), masked_world.job_key)
    assert back.public_key == masked_world.job_key.component(0) != other_key
    assert (back.A, back.B) == (ciphertext.A, ciphertext.B)


@HYP
@given(seed=st.binary(min_size=32, max_size=32))
def test_seed_round_trip_property(masked_world: MaskedWorld, seed: bytes) -> None:
    ciphertext = encrypt_seed(masked_world.job_key.component(0), seed, random.Random(seed))
    back = seed_from_obj(seed_to_obj(ciphertext), masked_world.job_key)
    assert back == ciphertext
    assert masked_world.master.decrypt(back) == int.from_bytes(seed, "big")


SEED_OBJ = {"A": "1", "B": "1"}


@pytest.mark.parametrize(
    "make",
    [
        lambda n2, p: None,
        lambda n2, p: ["1", "1"],
        lambda n2, p: {"A": "1"},
        lambda n2, p: {**SEED_OBJ, "h": "1"},
        lambda n2, p: {"A": "1", "B": "zz"},
        lambda n2, p: {"A": "-1", "B": "1"},
        lambda n2, p: {"A": 1, "B": "1"},
        lambda n2, p: {"A": "1", "B": None},
        lambda n2, p: {"A": "0", "B": "1"},
        lambda n2, p: {"A": "1", "B": "0"},
        lambda n2, p: {"A": format(n2, "x"), "B": "1"},
        lambda n2, p: {"A": "1", "B": format(n2 + 1, "x")},
        lambda n2, p: {"A": format(p, "x"), "B": "1"},
        lambda n2, p: {"A": "1", "B": format(7 * p, "x")},
        # one spelling per ciphertext: its digest must name exactly one seed
        lambda n2, p: {"A": "0x1", "B": "1"},
        lambda n2, p: {"A": "1", "B": "01"},
        lambda n2, p: {"A": format(n2 - 1, "X"), "B": "1"},
    ],
)
def test_seed_from_obj_refuses(
    masked_world: MaskedWorld, make: Callable[[int, int], object]
) -> None:
    obj = make(int(masked_world.params.nsquare), int(masked_world.master.p))
    refused("bad-seed", lambda: seed_from_obj(obj, masked_world.job_key))


def test_seed_sha256_is_the_canonical_json_digest(masked_world: MaskedWorld) -> None:
    obj = seed_to_obj(encrypt_seed(masked_world.job_key.component(0), bytes(32), random.Random(2)))
    text = '{"A":"' + obj["A"] + '","B":"' + obj["B"] + '"}'
    assert seed_sha256(obj) == hashlib.sha256(text.encode()).hexdigest()
    assert seed_sha256({"B": obj["B"], "A": obj["A"]}) == seed_sha256(obj)
    # The same ciphertext written otherwise is another object: another digest.
    assert seed_sha256({**obj, "A": "0x" + obj["A"]}) != seed_sha256(obj)


# --------------------------------------------------------------------------- mask context


def test_mask_context_names_the_job_round_run_and_signer(masked_world: MaskedWorld) -> None:
    context = masked_world.context("sub-b", 2, 1)
    assert (context.job_id, context.job_terms_sha256) == (JOB, masked_world.terms.digest)
    assert (context.round, context.run, context.attempt, context.signer) == (2, 1, 0, "sub-b")
    assert (context.length, context.ring_bits) == (LENGTH, 32)
    value = seed_to_int(b"\x07" * 32)
    ring = masked_world.layout.ring
    masks = {
        (s, t, r): derive_mask(value, masked_world.n, masked_world.context(s, t, r), ring).tobytes()
        for s in ("sub-a", "sub-b")
        for t in (0, 1)
        for r in (0, 1)
    }
    assert len(set(masks.values())) == len(masks)  # every counter changes the mask
    again = derive_mask(value, masked_world.n, masked_world.context("sub-a", 1, 0), ring)
    assert again.tobytes() == masks[("sub-a", 1, 0)]


# --------------------------------------------------------------------------- upload statements


def test_upload_statement_shape_and_verify(masked_world: MaskedWorld, round0: list[Upload]) -> None:
    upload = round0[0]
    body = upload.statement["statement"]
    assert body == {
        "purpose": MASKED_UPLOAD_PURPOSE,
        "kgc_key_id": kgc_key_id(masked_world.kgc),
        "job_id": JOB,
        "job_terms_sha256": masked_world.terms.digest,
        "round": 0,
        "run": 0,
        "subject_id": "sub-a",
        "audience": PS,
        "payload_sha256": hashlib.sha256(upload.y_bytes).hexdigest(),
        "seed_sha256": seed_sha256(upload.seed_obj),
    }
    checked = verify_masked_upload_statement(
        upload.statement,
        masked_world.terms,
        round_number=0,
        run=0,
        subject_id="sub-a",
        payload_sha256=body["payload_sha256"],
        seed_sha256=body["seed_sha256"],
    )
    assert checked.to_json() == body


def _resigned(masked_world: MaskedWorld, upload: Upload, **changes: Any) -> dict[str, Any]:
    body = {**upload.statement["statement"], **changes}
    subject = upload.statement["statement"]["subject_id"]
    return {"statement": body, "signature": sign_json(masked_world.keys[subject], body)}


def test_upload_statement_refusals(masked_world: MaskedWorld, params_512: Params) -> None:
    upload = masked_world.upload("sub-a", 1, run=1)
    body = upload.statement["statement"]

    def verify(signed: object = upload.statement, **kw: Any) -> MaskedUploadStatement:
        terms = kw.pop("terms", masked_world.terms)
        args: dict[str, Any] = {"round_number": 1, "run": 1, **kw}
        return verify_masked_upload_statement(signed, terms, **args)

    assert verify().round == 1
    refused("statement-mismatch", lambda: verify(round_number=0))
    refused("statement-mismatch", lambda: verify(round_number=2))
    refused("statement-mismatch", lambda: verify(run=0))
    refused("statement-mismatch", lambda: verify(subject_id="sub-b"))
    refused("statement-mismatch", lambda: verify(payload_sha256="00" * 32))
    refused("statement-mismatch", lambda: verify(seed_sha256="00" * 32))
    refused("statement-mismatch", lambda: verify(seed_sha256=body["payload_sha256"]))
    refused("statement-mismatch", lambda: verify(_resigned(masked_world, upload, audience="sub-x")))
    refused("statement-mismatch", lambda: verify(_resigned(masked_world, upload, round=True)))
    refused("statement-mismatch", lambda: verify(_resigned(masked_world, upload, extra=1)))
    refused("bad-statement", lambda: verify(_resigned(masked_world, upload, seed_sha256="AB" * 32)))
    refused("bad-statement", lambda: verify(_resigned(masked_world, upload, payload_sha256="ab")))
    refused("bad-statement", lambda: verify({"statement": "x", "signature": "y"}))
    refused("bad-statement", lambda: verify(None))
    # Signed by another participant's key, or by nobody.
    forged = masked_world.upload("sub-a", 1, run=1, key=masked_world.keys["sub-b"])
    refused("bad-statement-signature", lambda: verify(forged.statement))
    refused("bad-statement-signature", lambda: verify({**upload.statement, "signature": "x"}))
    refused(
        "not-a-participant", lambda: verify(_resigned(masked_world, upload, subject_id="sub-x"))
    )
    # Another job with the same participant keys: another terms digest and job id.
    other = MaskedWorld(
        *params_512, job_id="job-other", keys=masked_world.keys, kgc=masked_world.kgc
    )
    elsewhere = masked_world.upload("sub-a", 1, run=1, terms=other.terms)
    refused("statement-mismatch", lambda: verify(elsewhere.statement))
    assert verify(elsewhere.statement, terms=other.terms).job_id == "job-other"
    refused("statement-mismatch", lambda: verify(terms=other.terms))


def test_masked_and_bcp_upload_statements_do_not_cross(
    masked_world: MaskedWorld, round0: list[Upload]
) -> None:
    masked = round0[0].statement
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(masked, masked_world.terms, round_number=0, run=0),
    )
    closed = "cc" * 32
    proof = prove_randomness(
        masked_world.params,
        [5],
        pok_context(masked_world.terms, 0, closed),
        "sub-a",
        random.Random(0),
    )
    bcp = build_upload_statement(
        masked_world.keys["sub-a"],
        masked_world.terms,
        round_number=0,
        subject_id="sub-a",
        payload_sha256=masked["statement"]["payload_sha256"],
        closed_set_sha256=closed,
        randomness_proof=proof.to_obj(),
    )
    assert verify_upload_statement(bcp, masked_world.terms, round_number=0).subject_id == "sub-a"
    refused(
        "statement-mismatch",
        lambda: verify_masked_upload_statement(bcp, masked_world.terms, round_number=0, run=0),
    )
