"""The shared protocol messages: job terms, commitments, closed sets, upload statements,
audits, release requests, tokens.

Each check is played from the side that would break it: a PS that serves another job key
or definition than the KGC signed, a colluder that signs for another round, a PS that
relabels a round, names a contributor that never committed, swaps an upload, or asks the
KGC to open something the contributors did not audit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import jwt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import MasterKey, PublicParams, generate_params
from trapdoor.crypto.blocks import BlockLayout, decrypt_vector, generate_job_key
from trapdoor.crypto.encoding import PackingLayout, decode_vector
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.signing import (
    TokenError,
    b64encode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_json,
    verify_token,
)
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.messages import (
    AUDIT_PURPOSE,
    CLOSED_SET_PURPOSE,
    COMMITMENT_PURPOSE,
    JOB_TERMS_PURPOSE,
    KGC_AUDIENCE,
    MAX_ATTEMPT,
    MAX_RUN,
    UNDECODABLE_PURPOSE,
    UPLOAD_PURPOSE,
    AuditDigests,
    ClosedSet,
    JobTerms,
    ProtocolError,
    ReleaseCheck,
    UndecodedRelease,
    build_audit_statement,
    build_closed_set,
    build_commitment,
    build_undecodable_statement,
    build_upload_statement,
    check_job_view,
    check_release_request,
    check_requested_terms,
    contributors_sha256,
    initial_ciphertext,
    initial_ciphertext_sha256,
    initial_plaintexts,
    json_sha256,
    kgc_key_id,
    pok_context,
    release_request_header,
    requested_terms,
    sign_job_terms,
    token_challenge,
    token_request,
    vector_sha256,
    verify_audit_statement,
    verify_closed_set,
    verify_commitment,
    verify_job_terms,
    verify_release_signature,
    verify_undecodable_statement,
    verify_upload_statement,
)

#: Four participants and a quorum of three: room for a contributor outside the closed set
#: and for an attempt that drops one.
PARTICIPANTS = ["sub-a", "sub-b", "sub-c", "sub-d"]
THREE = PARTICIPANTS[:3]
PS = "sub-ps"
BASE = "ba" * 32
RELEASE = "f0" * 32
AGGREGATE = "a9" * 32
BLIND = "b1" * 32
BUNDLE = "bd" * 32  # run 0's bundle, as the KGC and every contributor name it
HYP = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
Params = tuple[PublicParams, MasterKey]


def payload(subject: str, round_number: int = 0) -> str:
    """A stand-in payload digest, distinct per subject and round."""
    return hashlib.sha256(f"{subject}/{round_number}".encode()).hexdigest()


class World:
    """A KGC key, a job signed for PS (and its key), its view, and the participants' keys."""

    def __init__(
        self,
        params: PublicParams,
        *,
        quorum: int = 3,
        rounds: int = 4,
        initial_digest: str | None = None,
    ) -> None:
        rng = random.Random(7)
        self.params = params
        self.kgc = generate_signing_key()
        self.ps = generate_signing_key()
        self.keys = {s: generate_signing_key() for s in PARTICIPANTS}
        self.initial_weights = np.array([0.5, -1.25, 0.0, 3.0, -0.125])
        self.definition: dict[str, Any] = {
            "job_id": "job-1",
            "model": {"kind": "mlp", "layers": [2, 3]},
            "initial_weights": b64encode(self.initial_weights.astype("<f8").tobytes()),
            "training": {"learning_rate": 0.1},
            "participants": [{"subject_id": s, "num_samples": 10} for s in PARTICIPANTS],
            "quorum": quorum,
            "rounds": rounds,
        }
        self.layout = PackingLayout(modulus=int(params.n), length=5)
        self.packing = self.layout.to_json()
        self.weights = {s: 1 / len(PARTICIPANTS) for s in PARTICIPANTS}
        if initial_digest is None:
            initial_digest = initial_ciphertext_sha256(params, 2, self.layout, self.initial_weights)
        requested = requested_terms(
            job_id="job-1",
            definition=self.definition,
            packing=self.packing,
            weights=self.weights,
            width=2,
            num_plaintexts=self.layout.num_plaintexts,
            initial_ciphertext_sha256=initial_digest,
        )
        self.job_key = to_obj(generate_job_key(params, 2, rng))
        self.signed, self.signature = sign_job_terms(
            self.kgc,
            requested,
            param_server=PS,
            param_server_key=public_key_hex(self.ps),
            signing_keys={s: public_key_hex(k) for s, k in self.keys.items()},
            job_key=self.job_key,
        )
        self.terms = verify_job_terms(self.kgc.public_key(), self.signed, self.signature, params)
        self.blocks = BlockLayout(self.terms.num_plaintexts, self.terms.width).num_blocks

    def randomness(self, subject: str, round_number: int) -> list[Any]:
        """The (made-up) block randomness of ``subject``'s round upload: ``A_b = g^{r_b}``."""
        rng = random.Random(f"{subject}/{round_number}")
        return [self.params.random_exponent(rng) for _ in range(self.blocks)]

    def a_of(self, subjects: list[str], round_number: int) -> list[Any]:
        """The ``A`` components of a released vector holding these subjects' uploads."""
        n2 = self.params.nsquare
        return [
            pow(
                int(self.params.g),
                sum(int(self.randomness(s, round_number)[b]) for s in subjects),
                int(n2),
            )
            for b in range(self.blocks)
        ]

    def view(self) -> dict[str, Any]:
        return {
            "job_id": "job-1",
            "definition": copy.deepcopy(self.definition),
            "packing": dict(self.packing),
            "weights": dict(self.weights),
            "job_key": copy.deepcopy(self.job_key),
            "job_terms": copy.deepcopy(self.signed),
            "job_terms_signature": self.signature,
        }

    # participant-signed messages

    def commitment(self, subject: str, round_number: int = 0, **kw: Any) -> dict[str, Any]:
        return build_commitment(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            payload_sha256=kw.pop("digest", payload(subject, round_number)),
            run=kw.pop("run", 0),
        )

    def closed_set(
        self,
        round_number: int = 0,
        subjects: list[str] = THREE,
        *,
        commitments: list[dict[str, Any]] | None = None,
        key: Any = None,
        closed_at: int = 1000,
        run: int = 0,
    ) -> dict[str, Any]:
        if commitments is None:
            commitments = [self.commitment(s, round_number, run=run) for s in subjects]
        return build_closed_set(
            key or self.ps,
            self.terms,
            round_number=round_number,
            commitments=commitments,
            closed_at=closed_at,
            run=run,
        )

    def closed(self, signed: dict[str, Any], round_number: int = 0, run: int = 0) -> ClosedSet:
        return verify_closed_set(signed, self.terms, round_number=round_number, run=run)

    def statement(
        self, subject: str, round_number: int = 0, *, closed: str = "cc" * 32, **kw: Any
    ) -> dict[str, Any]:
        return build_upload_statement(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            payload_sha256=kw.pop("digest", payload(subject, round_number)),
            closed_set_sha256=closed,
            randomness_proof=prove_randomness(
                self.params,
                self.randomness(subject, round_number),
                pok_context(self.terms, round_number, closed),
                subject,
                random.Random(0),
            ).to_obj(),
            run=kw.pop("run", 0),
        )

    def digests(
        self, closed: str, subjects: list[str], *, attempt: int = 0, **kw: str
    ) -> AuditDigests:
        return AuditDigests(
            attempt=attempt,
            closed_set_sha256=closed,
            contributors_sha256=contributors_sha256(subjects),
            base_sha256=kw.get("base", BASE),
            aggregate_sha256=kw.get("aggregate", AGGREGATE),
            release_sha256=kw.get("release", RELEASE),
            blind_sha256=kw.get("blind", BLIND),
        )

    def audit(
        self, subject: str, round_number: int, digests: AuditDigests, **kw: Any
    ) -> dict[str, Any]:
        return build_audit_statement(
            kw.pop("key", self.keys[subject]),
            kw.pop("terms", self.terms),
            round_number=round_number,
            subject_id=subject,
            digests=digests,
            run=kw.pop("run", 0),
        )

    def undecodable(
        self, subject: str, round_number: int, bundle: str = BUNDLE, **kw: Any
    ) -> dict[str, Any]:
        return build_undecodable_statement(
            kw.pop("key", self.keys[subject]),
            self.terms,
            round_number=round_number,
            run=kw.pop("run", 0),
            subject_id=subject,
            bundle_sha256=bundle,
        )

    def release_header(
        self,
        round_number: int,
        subjects: list[str],
        *,
        committed: list[str] | None = None,
        attempt: int = 0,
        ps_key: Any = None,
        run: int = 0,
        undecodable: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An honest request: closed set, statements and audits of ``subjects``, signed.

        A re-run (``run`` 1) carries every subject's report on run 0's bundle unless
        ``undecodable`` says otherwise.
        """
        closed_signed = self.closed_set(round_number, committed or subjects, run=run)
        closed = self.closed(closed_signed, round_number, run)
        digests = self.digests(closed.digest, subjects, attempt=attempt)
        if undecodable is None:
            undecodable = [self.undecodable(s, round_number) for s in subjects] if run else []
        header = release_request_header(
            job_id="job-1",
            round_number=round_number,
            attempt=attempt,
            closed_set=closed_signed,
            statements=[
                self.statement(s, round_number, closed=closed.digest, run=run) for s in subjects
            ],
            audits=[self.audit(s, round_number, digests, run=run) for s in subjects],
            run=run,
            undecodable=undecodable,
        )
        return {**header, "request_signature": sign_json(ps_key or self.ps, header)}


@pytest.fixture(scope="module")
def world(small_params: Params) -> World:
    return World(small_params[0])


def refused(code: str, call: Callable[..., object]) -> None:
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code == code, info.value.message


def check(
    world: World,
    header: dict[str, Any],
    next_round: int,
    undecoded: UndecodedRelease | None = None,
    **kw: str,
) -> ReleaseCheck:
    """The KGC's check; the vector it opens holds exactly the listed contributors' ``A``."""
    contributors = header.get("contributors")
    holds = [str(c) for c in contributors] if isinstance(contributors, list) else []
    round_number = header.get("round") if isinstance(header.get("round"), int) else 0
    return check_release_request(
        header,
        world.terms,
        next_round=next_round,
        base_sha256=kw.get("base", BASE),
        payload_sha256=kw.get("payload", RELEASE),
        previous_a=[1] * world.blocks,
        current_a=world.a_of(holds, int(round_number)),
        undecoded=undecoded,
    )


def resigned(field: str, body: dict[str, Any], key: Any) -> dict[str, Any]:
    return {field: body, "signature": sign_json(key, body)}


# --------------------------------------------------------------------------- job terms


def test_signed_terms_verify_and_carry_what_the_participant_relies_on(world: World) -> None:
    terms = world.terms
    assert isinstance(terms, JobTerms)
    assert terms.raw["purpose"] == JOB_TERMS_PURPOSE
    assert terms.raw["kgc_key_id"] == kgc_key_id(world.kgc.public_key())
    assert (terms.job_id, terms.param_server, terms.quorum, terms.rounds) == ("job-1", PS, 3, 4)
    assert terms.participants == tuple(PARTICIPANTS)
    assert terms.signing_keys["sub-b"] == public_key_hex(world.keys["sub-b"])
    assert terms.param_server_key == public_key_hex(world.ps)
    assert terms.initial_ciphertext_sha256 == vector_sha256(
        initial_ciphertext(terms.job_key, world.layout, world.initial_weights)
    )
    assert terms.num_plaintexts == world.layout.num_plaintexts
    assert check_job_view(world.view(), world.kgc.public_key(), world.params) == terms


def test_terms_signed_by_another_key_are_refused(world: World) -> None:
    impostor = generate_signing_key()
    view = world.view()
    view["job_terms_signature"] = sign_json(impostor, view["job_terms"])
    refused("bad-job-signature", lambda: check_job_view(view, world.kgc.public_key(), world.params))


def test_a_job_key_the_ps_made_itself_is_refused(world: World) -> None:
    """The attack of issue 11 point 1: the PS serves a key whose exponents it knows."""
    own_key = to_obj(generate_job_key(world.params, 2, random.Random(99)))
    view = world.view()
    view["job_key"] = own_key
    refused("job-mismatch", lambda: check_job_view(view, world.kgc.public_key(), world.params))
    view = world.view()
    view["job_terms"]["job_key"] = own_key  # in the signed part: the signature breaks
    refused("bad-job-signature", lambda: check_job_view(view, world.kgc.public_key(), world.params))


def test_a_job_key_under_other_parameters_is_refused(world: World) -> None:
    other, _ = generate_params(256, random.Random(5))
    refused(
        "bad-job-key",
        lambda: verify_job_terms(world.kgc.public_key(), world.signed, world.signature, other),
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v["definition"].__setitem__("rounds", 5),
        lambda v: v["definition"]["model"].__setitem__("layers", [2, 4]),
        lambda v: v["definition"].__setitem__("initial_weights", b64encode(bytes(40)[:-1] + b"\1")),
        lambda v: v["definition"]["training"].__setitem__("learning_rate", 9.0),
        lambda v: v["weights"].__setitem__("sub-a", 0.9),
        lambda v: v["packing"].__setitem__("frac_bits", 3),
        lambda v: v.__setitem__("job_id", "job-2"),
    ],
    ids=["rounds", "model", "initial-weights", "training", "weights", "packing", "job-id"],
)
def test_a_view_that_differs_from_the_signed_terms_is_refused(world: World, mutate: Any) -> None:
    view = world.view()
    mutate(view)
    refused("job-mismatch", lambda: check_job_view(view, world.kgc.public_key(), world.params))


def test_terms_naming_another_initial_ciphertext_are_refused(small_params: Params) -> None:
    """The KGC signed a digest of Enc(W_0) that the served W_0 does not encrypt to."""
    lying = World(small_params[0], initial_digest="0e" * 32)
    with pytest.raises(ProtocolError) as info:
        check_job_view(lying.view(), lying.kgc.public_key(), lying.params)
    assert info.value.code == "job-mismatch"
    assert "initial_ciphertext_sha256" in info.value.message
    assert "initial_model_sha256" not in info.value.message


def test_requested_terms_need_a_well_formed_initial_ciphertext_digest(world: World) -> None:
    added = {"purpose", "kgc_key_id", "param_server", "param_server_key", "signing_keys", "job_key"}
    requested = {k: v for k, v in world.signed.items() if k not in added}
    assert check_requested_terms(dict(requested)) == requested
    missing = {k: v for k, v in requested.items() if k != "initial_ciphertext_sha256"}
    refused("bad-terms", lambda: check_requested_terms(missing))
    for bad in ("AB" * 32, "ab" * 31, 7, None):
        refused(
            "bad-terms",
            lambda bad=bad: check_requested_terms({**requested, "initial_ciphertext_sha256": bad}),
        )


@pytest.mark.parametrize("bad", ["", "zz" * 32, "ab" * 31, 5, None])
def test_terms_with_a_malformed_server_key_are_refused(world: World, bad: object) -> None:
    signed = {**copy.deepcopy(world.signed), "param_server_key": bad}
    signature = sign_json(world.kgc, signed)
    refused(
        "bad-job-terms",
        lambda: verify_job_terms(world.kgc.public_key(), signed, signature, world.params),
    )


def test_quorum_below_the_participants_minimum_is_refused(small_params: Params) -> None:
    low = World(small_params[0], quorum=2)
    key = low.kgc.public_key()
    refused("quorum-too-small", lambda: check_job_view(low.view(), key, low.params))
    assert check_job_view(low.view(), key, low.params, min_quorum=2).quorum == 2


def test_terms_naming_another_server_are_refused(world: World) -> None:
    key = world.kgc.public_key()
    refused(
        "wrong-param-server",
        lambda: check_job_view(world.view(), key, world.params, param_server="sub-other"),
    )
    assert check_job_view(world.view(), key, world.params, param_server=PS).param_server == PS


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_change_to_a_signed_field_breaks_the_signature(world: World, data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(world.signed)))
    value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    signed = {**copy.deepcopy(world.signed), name: value}
    if signed == world.signed:
        return
    with pytest.raises(ProtocolError):
        verify_job_terms(world.kgc.public_key(), signed, world.signature, world.params)


# --------------------------------------------------------------------------- Enc(W_0)


@HYP
@given(
    width=st.integers(min_value=1, max_value=4),
    values=st.lists(
        st.floats(min_value=-30, max_value=30, allow_nan=False), min_size=1, max_size=30
    ),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_the_initial_digest_needs_no_job_key(
    small_params: Params, width: int, values: list[float], seed: int
) -> None:
    """Any job key of the width gives the bytes the PS hashed before asking the KGC."""
    params, master = small_params
    layout = PackingLayout(modulus=int(params.n), length=len(values))
    job_key = generate_job_key(params, width, random.Random(seed))
    vector = initial_ciphertext(job_key, layout, values)
    assert initial_ciphertext_sha256(params, width, layout, values) == vector_sha256(vector)
    assert vector.layout == BlockLayout(layout.num_plaintexts, width)
    assert all(vector.elements[offset] == 1 for offset, _ in vector.layout.block_offsets())
    plaintexts = decrypt_vector(master, vector)
    assert plaintexts == [int(m) for m in initial_plaintexts(layout, values)]
    resolution = 2.0**-layout.frac_bits
    np.testing.assert_allclose(decode_vector(plaintexts, layout), values, rtol=0, atol=resolution)


def test_the_initial_digest_depends_on_weights_width_and_packing(world: World) -> None:
    params, w0 = world.params, world.initial_weights
    assert initial_ciphertext_sha256(params, 2, world.layout, w0) == (
        world.terms.initial_ciphertext_sha256
    )
    longer = np.linspace(-3.0, 3.0, 20)
    layout = PackingLayout(modulus=int(params.n), length=20)  # 3 plaintexts
    digest = initial_ciphertext_sha256(params, 2, layout, longer)
    assert initial_ciphertext_sha256(params, 1, layout, longer) != digest
    assert initial_ciphertext_sha256(params, 3, layout, longer) != digest
    assert initial_ciphertext_sha256(params, 2, layout, longer + 2.0**-10) != digest
    finer = PackingLayout(modulus=int(params.n), length=20, frac_bits=18)
    assert initial_ciphertext_sha256(params, 2, finer, longer) != digest


def test_initial_plaintexts_use_at_most_half_a_slot(world: World) -> None:
    """W_0 is clipped to slot_bound / 2: the other half is left for the updates' sum."""
    layout = world.layout
    big = np.full(5, 10 * layout.slot_bound)
    decoded = decode_vector(initial_plaintexts(layout, big), layout)
    np.testing.assert_array_equal(decoded, np.full(5, layout.slot_bound / 2))


def test_digest_helpers_are_known_answers(world: World) -> None:
    assert contributors_sha256(["sub-b", "sub-a"]) == contributors_sha256(["sub-a", "sub-b"])
    assert contributors_sha256(["sub-b", "sub-a"]) == (
        hashlib.sha256(b'["sub-a","sub-b"]').hexdigest()
    )
    assert contributors_sha256(["sub-a"]) != contributors_sha256(["sub-a", "sub-b"])
    vector = initial_ciphertext(world.terms.job_key, world.layout, world.initial_weights)
    assert vector_sha256(vector) == hashlib.sha256(vector.to_bytes()).hexdigest()


# --------------------------------------------------------------------------- participant-signed

#: The three participant-signed messages of a round, made and checked the same way.
Kind = tuple[str, str, Callable[..., dict[str, Any]], Callable[..., Any]]


def _commit(world: World, subject: str, rnd: int, **kw: Any) -> dict[str, Any]:
    return world.commitment(subject, rnd, **kw)


def _state(world: World, subject: str, rnd: int, **kw: Any) -> dict[str, Any]:
    return world.statement(subject, rnd, **kw)


def _audit(world: World, subject: str, rnd: int, **kw: Any) -> dict[str, Any]:
    return world.audit(subject, rnd, world.digests("cc" * 32, THREE, attempt=2), **kw)


KINDS: list[Kind] = [
    ("commitment", COMMITMENT_PURPOSE, _commit, verify_commitment),
    ("statement", UPLOAD_PURPOSE, _state, verify_upload_statement),
    ("audit", AUDIT_PURPOSE, _audit, verify_audit_statement),
]
KIND_IDS = [k[0] for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_participant_signed_message_verifies_for_its_round_and_subject(
    world: World, kind: Kind
) -> None:
    field, purpose, build, verify = kind
    signed = build(world, "sub-a", 2)
    checked = verify(signed, world.terms, round_number=2, subject_id="sub-a")
    body = checked[0] if isinstance(checked, tuple) else checked
    assert body == signed[field]
    assert body["purpose"] == purpose
    assert body["audience"] == PS and body["job_terms_sha256"] == world.terms.digest
    assert body["kgc_key_id"] == world.terms.raw["kgc_key_id"]
    assert (body["round"], body["subject_id"], body["job_id"]) == (2, "sub-a", "job-1")
    assert verify(signed, world.terms, round_number=2) == checked  # any subject


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_for_another_round_or_subject_is_refused(world: World, kind: Kind) -> None:
    field, _, build, verify = kind
    signed = build(world, "sub-a", 2)
    for rnd in (0, 1, 3):
        refused(f"{field}-mismatch", lambda r=rnd: verify(signed, world.terms, round_number=r))
    refused(
        f"{field}-mismatch",
        lambda: verify(signed, world.terms, round_number=2, subject_id="sub-b"),
    )


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_signed_by_another_key_is_refused(world: World, kind: Kind) -> None:
    """Neither the PS nor a colluder can sign in an honest participant's name."""
    field, _, build, verify = kind
    for key in (world.keys["sub-b"], world.ps, generate_signing_key()):
        forged = build(world, "sub-a", 0, key=key)
        refused(f"bad-{field}-signature", lambda f=forged: verify(f, world.terms, round_number=0))
    outsider = build(world, "sub-a", 0)
    outsider = {**outsider, field: {**outsider[field], "subject_id": "sub-x"}}
    refused("not-a-participant", lambda: verify(outsider, world.terms, round_number=0))
    refused(f"bad-{field}", lambda: verify({"body": {}}, world.terms, round_number=0))
    refused(f"bad-{field}", lambda: verify([outsider], world.terms, round_number=0))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_for_another_job_audience_or_purpose_is_refused(
    world: World, small_params: Params, kind: Kind
) -> None:
    field, _, build, verify = kind
    key = world.keys["sub-a"]
    other = World(small_params[0], rounds=9)  # another job: another terms digest
    # other's terms carry other's keys; re-sign with world's key so only the job differs
    body = build(other, "sub-a", 0)[field]
    refused(
        f"{field}-mismatch",
        lambda: verify(resigned(field, body, key), world.terms, round_number=0),
    )
    mine = build(world, "sub-a", 0)[field]
    for name, value in (
        ("audience", "sub-other-ps"),
        ("purpose", JOB_TERMS_PURPOSE),
        ("purpose", CLOSED_SET_PURPOSE),
        ("kgc_key_id", "00" * 16),
        ("job_id", "job-2"),
        ("round", True),
        ("round", "0"),
    ):
        moved = {**mine, name: value}
        refused(
            f"{field}-mismatch",
            lambda m=moved: verify(resigned(field, m, key), world.terms, round_number=0),
        )
    extra = {**mine, "note": "x"}
    refused(
        f"{field}-mismatch",
        lambda: verify(resigned(field, extra, key), world.terms, round_number=0),
    )


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_message_with_a_malformed_digest_is_refused(world: World, kind: Kind) -> None:
    field, _, build, verify = kind
    body = build(world, "sub-a", 0)[field]
    for name in [k for k in body if k.endswith("_sha256") and k != "job_terms_sha256"]:
        for bad in ("AB" * 32, "ab" * 31, 7, None):
            changed = {**body, name: bad}
            refused(
                f"bad-{field}",
                lambda c=changed: verify(
                    resigned(field, c, world.keys["sub-a"]), world.terms, round_number=0
                ),
            )


def test_one_kind_of_signed_message_never_passes_as_another(world: World) -> None:
    """A commitment and an upload statement both name a payload; the purpose tells them apart."""
    commitment = world.commitment("sub-a", 0)
    statement = world.statement("sub-a", 0)
    audit = _audit(world, "sub-a", 0)
    as_statement = {"statement": commitment["commitment"], "signature": commitment["signature"]}
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(as_statement, world.terms, round_number=0),
    )
    as_commitment = {"commitment": statement["statement"], "signature": statement["signature"]}
    refused(
        "commitment-mismatch",
        lambda: verify_commitment(as_commitment, world.terms, round_number=0),
    )
    # the same fields under another purpose tag (re-signed): still refused by purpose
    relabelled = {**commitment["commitment"], "purpose": UPLOAD_PURPOSE}
    refused(
        "commitment-mismatch",
        lambda: verify_commitment(
            resigned("commitment", relabelled, world.keys["sub-a"]), world.terms, round_number=0
        ),
    )
    as_audit = {"audit": statement["statement"], "signature": statement["signature"]}
    refused("audit-mismatch", lambda: verify_audit_statement(as_audit, world.terms, round_number=0))
    as_statement = {"statement": audit["audit"], "signature": audit["signature"]}
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(as_statement, world.terms, round_number=0),
    )


@HYP
@given(data=st.data())
def test_any_change_to_a_signed_message_is_refused(world: World, data: Any) -> None:
    field, _, build, verify = data.draw(st.sampled_from(KINDS))
    signed = build(world, "sub-a", 1)
    name = data.draw(st.sampled_from(sorted(signed[field])))
    value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none(), st.just("ab" * 32)))
    tampered = {**signed, field: {**signed[field], name: value}}
    if tampered == signed:
        return
    with pytest.raises(ProtocolError):
        verify(tampered, world.terms, round_number=1)


# --------------------------------------------------------------------------- commitments


def test_a_commitment_names_the_payload(world: World) -> None:
    signed = world.commitment("sub-c", 3, digest="ab" * 32)
    body = verify_commitment(signed, world.terms, round_number=3, subject_id="sub-c")
    assert body["payload_sha256"] == "ab" * 32
    tampered = {**signed, "commitment": {**body, "payload_sha256": "cd" * 32}}
    refused(
        "bad-commitment-signature",
        lambda: verify_commitment(tampered, world.terms, round_number=3),
    )


# --------------------------------------------------------------------------- closed sets


def test_a_closed_set_verifies_and_lists_the_committed_payloads(world: World) -> None:
    signed = world.closed_set(1, ["sub-d", "sub-b", "sub-a"], closed_at=1234)
    closed = world.closed(signed, 1)
    assert closed.round == 1
    assert dict(closed.payloads) == {s: payload(s, 1) for s in ("sub-a", "sub-b", "sub-d")}
    assert list(closed.payloads) == ["sub-a", "sub-b", "sub-d"]  # sorted by the builder
    assert closed.digest == json_sha256(signed["closed_set"])
    body = signed["closed_set"]
    assert (body["purpose"], body["param_server"], body["closed_at"]) == (
        CLOSED_SET_PURPOSE,
        PS,
        1234,
    )
    assert body["job_terms_sha256"] == world.terms.digest
    # another set (another time of closing) has another digest
    assert world.closed(world.closed_set(1, ["sub-a", "sub-b", "sub-d"]), 1).digest != (
        closed.digest
    )


def test_a_closed_set_for_another_round_or_job_is_refused(
    world: World, small_params: Params
) -> None:
    signed = world.closed_set(1)
    for rnd in (0, 2):
        refused("closed-set-mismatch", lambda r=rnd: world.closed(signed, r))
    other = World(small_params[0], rounds=9)
    refused(
        "bad-closed-set-signature",  # other's terms name other's PS key
        lambda: verify_closed_set(signed, other.terms, round_number=1),
    )
    body = signed["closed_set"]
    for name, value in (
        ("job_terms_sha256", other.terms.digest),
        ("job_id", "job-2"),
        ("param_server", "sub-other-ps"),
        ("purpose", COMMITMENT_PURPOSE),
        ("kgc_key_id", "00" * 16),
        ("round", True),
        ("closed_at", "now"),
        ("commitments", {}),
    ):
        moved = {**body, name: value}
        refused(
            "closed-set-mismatch",
            lambda m=moved: world.closed(resigned("closed_set", m, world.ps), 1),
        )
    extra = {**body, "note": 1}
    refused("closed-set-mismatch", lambda: world.closed(resigned("closed_set", extra, world.ps), 1))


def test_a_closed_set_not_signed_by_the_terms_server_key_is_refused(world: World) -> None:
    """Only the key the KGC certified for this job's PS signs its closed sets."""
    for key in (generate_signing_key(), world.kgc, world.keys["sub-a"]):
        refused("bad-closed-set-signature", lambda k=key: world.closed(world.closed_set(0, key=k)))
    signed = world.closed_set(0)
    tampered = {**signed, "closed_set": {**signed["closed_set"], "closed_at": 1}}
    refused("bad-closed-set-signature", lambda: world.closed(tampered))
    refused("bad-closed-set-signature", lambda: world.closed({**signed, "signature": None}))
    refused("bad-closed-set", lambda: world.closed({"closed_set": []}))
    refused("bad-closed-set", lambda: world.closed(signed["closed_set"]))


def test_a_closed_set_with_a_duplicate_subject_is_refused(world: World) -> None:
    twice = [*(world.commitment(s) for s in THREE), world.commitment("sub-a", digest="ee" * 32)]
    refused("duplicate-commitment", lambda: world.closed(world.closed_set(commitments=twice)))
    same = [*(world.commitment(s) for s in THREE), world.commitment("sub-b")]
    refused("duplicate-commitment", lambda: world.closed(world.closed_set(commitments=same)))


def hand_made_set(world: World, commitments: list[Any], round_number: int = 0) -> dict[str, Any]:
    """A closed set the PS signs in exactly the given order (no builder to tidy it up)."""
    body = {**world.closed_set(round_number)["closed_set"], "commitments": commitments}
    return resigned("closed_set", body, world.ps)


def test_an_unsorted_closed_set_is_refused(world: World) -> None:
    commitments = [world.commitment(s) for s in reversed(PARTICIPANTS)]
    refused("bad-closed-set", lambda: world.closed(hand_made_set(world, commitments)))
    swapped = [world.commitment(s) for s in ("sub-a", "sub-c", "sub-b")]
    refused("bad-closed-set", lambda: world.closed(hand_made_set(world, swapped)))
    ordered = [world.commitment(s) for s in PARTICIPANTS]
    assert list(world.closed(hand_made_set(world, ordered)).payloads) == PARTICIPANTS


def test_a_closed_set_below_the_quorum_is_refused(world: World) -> None:
    for subjects in (["sub-a", "sub-b"], ["sub-c"], []):
        refused("below-quorum", lambda s=subjects: world.closed(world.closed_set(0, s)))


def test_a_closed_set_with_a_bad_commitment_inside_is_refused(world: World) -> None:
    honest = [world.commitment(s, 1) for s in THREE]
    for bad, code in (
        (world.commitment("sub-d", 0), "commitment-mismatch"),  # another round
        (world.commitment("sub-d", 2), "commitment-mismatch"),
        (world.commitment("sub-d", 1, key=world.ps), "bad-commitment-signature"),
        (world.commitment("sub-d", 1) | {"signature": "x"}, "bad-commitment-signature"),
        (world.statement("sub-d", 1), "bad-commitment"),  # not a commitment at all
        ("sub-d", "bad-commitment"),
    ):
        signed = hand_made_set(world, [*honest, bad], 1)
        refused(code, lambda s=signed: world.closed(s, 1))


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
    assert (body["payload_sha256"], body["closed_set_sha256"]) == ("ab" * 32, "cc" * 32)
    assert body["purpose"] == UPLOAD_PURPOSE


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


# --------------------------------------------------------------------------- audits


def test_an_audit_returns_the_digests_it_vouches_for(world: World) -> None:
    digests = world.digests("cc" * 32, THREE, attempt=7)
    signed = world.audit("sub-b", 1, digests)
    body, checked = verify_audit_statement(signed, world.terms, round_number=1, subject_id="sub-b")
    assert checked == digests
    assert {k: body[k] for k in digests.fields()} == digests.fields()
    assert body["purpose"] == AUDIT_PURPOSE


@pytest.mark.parametrize("attempt", [-1, MAX_ATTEMPT + 1, True, "0", 1.0, None])
def test_an_audit_with_a_bad_attempt_is_refused(world: World, attempt: object) -> None:
    body = {**world.audit("sub-a", 0, world.digests("cc" * 32, THREE))["audit"]}
    body["attempt"] = attempt
    refused(
        "bad-audit",
        lambda: verify_audit_statement(
            resigned("audit", body, world.keys["sub-a"]), world.terms, round_number=0
        ),
    )


def test_the_last_attempt_is_accepted(world: World) -> None:
    signed = world.audit("sub-a", 0, world.digests("cc" * 32, THREE, attempt=MAX_ATTEMPT))
    assert verify_audit_statement(signed, world.terms, round_number=0)[1].attempt == MAX_ATTEMPT


# --------------------------------------------------------------------------- releases


def test_a_release_request_in_schedule_passes(world: World) -> None:
    header = world.release_header(1, THREE)
    assert verify_release_signature(header, world.ps.public_key()) == 1
    result = check(world, header, 1)
    closed = world.closed(header["closed_set"], 1)
    assert result == ReleaseCheck(1, 0, tuple(THREE), world.digests(closed.digest, THREE))
    assert result.digests.release_sha256 == RELEASE and result.digests.base_sha256 == BASE


def test_a_release_of_a_later_attempt_over_part_of_the_closed_set_passes(world: World) -> None:
    """sub-d committed but did not audit attempt 0: attempt 1 runs over the other three."""
    subjects = ["sub-c", "sub-a", "sub-b"]  # any order: the header lists them as given
    header = world.release_header(2, subjects, committed=PARTICIPANTS, attempt=1)
    result = check(world, header, 2)
    assert result.round == 2 and result.contributors == tuple(subjects)
    assert result.digests.attempt == 1
    assert result.digests.contributors_sha256 == contributors_sha256(THREE)


def test_release_requests_out_of_schedule_are_refused(world: World) -> None:
    """Relabelled rounds (issue 11 point 2): only the next round, only below ``rounds``."""
    refused("out-of-schedule", lambda: check(world, world.release_header(1, THREE), 0))
    refused("out-of-schedule", lambda: check(world, world.release_header(0, THREE), 1))
    refused("round-out-of-range", lambda: check(world, world.release_header(4, THREE), 4))
    refused("round-out-of-range", lambda: check(world, world.release_header(1000, THREE), 1000))
    for bad in (-1, True, "1", None):
        header = {**world.release_header(1, THREE), "round": bad}
        refused("round-out-of-range", lambda h=header: check(world, h, 1))


def test_a_request_for_another_job_is_refused(world: World) -> None:
    header = {**world.release_header(0, THREE), "job_id": "job-2"}
    refused("job-mismatch", lambda: check(world, header, 0))
    refused(
        "job-mismatch", lambda: check(world, {k: v for k, v in header.items() if k != "job_id"}, 0)
    )


def test_a_replayed_old_round_is_refused(world: World) -> None:
    """Round 0's request, or its messages relabelled as round 1, cannot release round 1."""
    old = world.release_header(0, THREE)
    refused("out-of-schedule", lambda: check(world, old, 1))
    relabelled = {**old, "round": 1}
    refused("closed-set-mismatch", lambda: check(world, relabelled, 1))
    fresh = world.release_header(1, THREE)
    refused(
        "statement-mismatch",
        lambda: check(world, {**fresh, "statements": old["statements"]}, 1),
    )
    refused("audit-mismatch", lambda: check(world, {**fresh, "audits": old["audits"]}, 1))


def test_release_requests_with_wrong_contributors_are_refused(world: World) -> None:
    refused("below-quorum", lambda: check(world, world.release_header(0, ["sub-a", "sub-b"]), 0))
    header = world.release_header(0, THREE)
    header["contributors"] = ["sub-a", "sub-b", "sub-x"]
    refused("not-a-participant", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    header["contributors"] = ["sub-a", "sub-b", "sub-b"]
    refused("duplicate-contributor", lambda: check(world, header, 0))
    for bad in ("sub-a", None, ["sub-a", 2, "sub-c"]):
        header = {**world.release_header(0, THREE), "contributors": bad}
        refused("bad-field", lambda h=header: check(world, h, 0))
    header = world.release_header(0, THREE)
    header["statements"][2] = world.statement("sub-c", 1)  # a statement of another round
    refused("statement-mismatch", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    header["statements"][2] = header["statements"][1]  # one contributor's statement twice
    refused("statement-mismatch", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    header["audits"][2] = header["audits"][1]  # one contributor's audit twice
    refused("audit-mismatch", lambda: check(world, header, 0))


def test_a_contributor_outside_the_closed_set_is_refused(world: World) -> None:
    """sub-d signs a statement and an audit, but never committed before the set closed."""
    header = world.release_header(0, PARTICIPANTS, committed=THREE)
    refused("not-committed", lambda: check(world, header, 0))


def test_a_request_whose_closed_set_is_below_quorum_or_forged_is_refused(world: World) -> None:
    header = world.release_header(0, THREE)
    header["closed_set"] = world.closed_set(0, ["sub-a", "sub-b"])
    refused("below-quorum", lambda: check(world, header, 0))
    header["closed_set"] = world.closed_set(0, THREE, key=generate_signing_key())
    refused("bad-closed-set-signature", lambda: check(world, header, 0))
    header["closed_set"] = None
    refused("bad-closed-set", lambda: check(world, header, 0))


def test_a_statement_under_another_closed_set_or_payload_is_refused(world: World) -> None:
    """The PS cannot show the KGC one closed set and the contributors another."""
    header = world.release_header(0, THREE)
    other = world.closed(world.closed_set(0, THREE, closed_at=999))
    header["statements"][0] = world.statement("sub-a", 0, closed=other.digest)
    refused("statement-mismatch", lambda: check(world, header, 0))
    header = world.release_header(0, THREE)
    closed = world.closed(header["closed_set"])
    header["statements"][1] = world.statement("sub-b", 0, closed=closed.digest, digest="ee" * 32)
    refused("statement-mismatch", lambda: check(world, header, 0))
    # the closed set swapped for another one the contributors did not upload under
    header = world.release_header(0, THREE)
    header["closed_set"] = world.closed_set(0, THREE, closed_at=999)
    refused("statement-mismatch", lambda: check(world, header, 0))


def test_a_missing_or_extra_audit_is_refused(world: World) -> None:
    header = world.release_header(0, THREE)
    for audits in (header["audits"][:2], [], None, [*header["audits"], header["audits"][0]]):
        refused("audit-mismatch", lambda a=audits: check(world, {**header, "audits": a}, 0))
    for statements in (header["statements"][:2], None):
        refused(
            "statement-mismatch",
            lambda s=statements: check(world, {**header, "statements": s}, 0),
        )


def test_a_release_of_something_the_contributors_did_not_audit_is_refused(world: World) -> None:
    """Another F, another base or another attempt than every audit names."""
    header = world.release_header(0, THREE)
    refused("audit-mismatch", lambda: check(world, header, 0, payload="f1" * 32))
    refused("audit-mismatch", lambda: check(world, header, 0, base="bb" * 32))
    refused("audit-mismatch", lambda: check(world, {**header, "attempt": 1}, 0))
    for bad in (-1, MAX_ATTEMPT + 1, True, None):
        refused("bad-field", lambda b=bad: check(world, {**header, "attempt": b}, 0))


@pytest.mark.parametrize(
    "change",
    [
        {"attempt": 1},
        {"closed_set_sha256": "cc" * 32},
        {"contributors_sha256": contributors_sha256(["sub-a", "sub-b"])},
        {"contributors_sha256": contributors_sha256(PARTICIPANTS)},
        {"base_sha256": "bb" * 32},
        {"aggregate_sha256": "ab" * 32},
        {"release_sha256": "f1" * 32},
        {"blind_sha256": "b2" * 32},
    ],
    ids=lambda c: next(iter(c)),
)
def test_one_audit_that_differs_from_the_others_is_refused(
    world: World, change: dict[str, Any]
) -> None:
    """Every contributor must have checked the same attempt, set, base, Agg, F and R."""
    header = world.release_header(0, THREE)
    closed = world.closed(header["closed_set"])
    honest = world.digests(closed.digest, THREE).fields()
    digests = AuditDigests(**{**honest, **change})
    for position in (0, 2):  # the first audit sets Agg and R for the others
        changed = copy.deepcopy(header)
        changed["audits"][position] = world.audit(THREE[position], 0, digests)
        with pytest.raises(ProtocolError) as info:
            check(world, changed, 0)
        assert info.value.code == "audit-mismatch"


def test_a_release_request_not_signed_by_the_server_is_refused(world: World) -> None:
    header = world.release_header(0, THREE)
    refused(
        "bad-request-signature",
        lambda: verify_release_signature(header, generate_signing_key().public_key()),
    )
    header["round"] = 1  # changed after signing
    refused(
        "bad-request-signature", lambda: verify_release_signature(header, world.ps.public_key())
    )


def test_the_release_header_lists_contributors_from_the_statements(world: World) -> None:
    header = world.release_header(3, ["sub-b", "sub-a", "sub-d"])
    assert header["contributors"] == ["sub-b", "sub-a", "sub-d"]
    assert (header["job_id"], header["round"], header["attempt"]) == ("job-1", 3, 0)
    assert (header["run"], header["undecodable"]) == (0, [])
    assert set(header) == {
        "job_id",
        "round",
        "run",
        "undecodable",
        "attempt",
        "contributors",
        "closed_set",
        "statements",
        "audits",
        "request_signature",
    }


# --------------------------------------------------------------------------- re-runs


def test_every_round_message_names_its_run_and_is_void_in_the_other(world: World) -> None:
    commitment = world.commitment("sub-a", 1, run=1)
    assert commitment["commitment"]["run"] == 1
    assert verify_commitment(commitment, world.terms, round_number=1, run=1)["run"] == 1
    refused(
        "commitment-mismatch", lambda: verify_commitment(commitment, world.terms, round_number=1)
    )
    closed = world.closed_set(1, run=1)
    assert world.closed(closed, 1, run=1).run == 1
    refused("closed-set-mismatch", lambda: world.closed(closed, 1, run=0))
    # a closed set of run 1 holding a commitment of run 0
    mixed = world.closed_set(
        1, commitments=[world.commitment(s, 1, run=0 if s == "sub-a" else 1) for s in THREE], run=1
    )
    refused("commitment-mismatch", lambda: world.closed(mixed, 1, run=1))
    audit = world.audit("sub-a", 1, world.digests("cc" * 32, THREE), run=1)
    refused("audit-mismatch", lambda: verify_audit_statement(audit, world.terms, round_number=1))
    statement = world.statement("sub-a", 1, run=1)
    refused(
        "statement-mismatch",
        lambda: verify_upload_statement(statement, world.terms, round_number=1),
    )


def test_undecodable_reports_name_their_bundle(world: World) -> None:
    report = world.undecodable("sub-b", 2)
    body = verify_undecodable_statement(
        report, world.terms, round_number=2, run=0, subject_id="sub-b", bundle_sha256=BUNDLE
    )
    assert (body["purpose"], body["run"], body["bundle_sha256"]) == (UNDECODABLE_PURPOSE, 0, BUNDLE)
    refused(
        "undecodable-mismatch",
        lambda: verify_undecodable_statement(
            report, world.terms, round_number=2, run=0, bundle_sha256="be" * 32
        ),
    )
    refused(
        "undecodable-mismatch",
        lambda: verify_undecodable_statement(report, world.terms, round_number=2, run=1),
    )
    refused(
        "undecodable-mismatch",
        lambda: verify_undecodable_statement(report, world.terms, round_number=3, run=0),
    )
    forged = world.undecodable("sub-b", 2, key=world.keys["sub-a"])
    refused(
        "bad-undecodable-signature",
        lambda: verify_undecodable_statement(forged, world.terms, round_number=2, run=0),
    )
    not_hex = world.undecodable("sub-b", 2, bundle="xyz")
    refused(
        "bad-undecodable",
        lambda: verify_undecodable_statement(not_hex, world.terms, round_number=2, run=0),
    )


UNDECODED = UndecodedRelease(round=1, contributors=tuple(THREE), bundle_sha256=BUNDLE)


def test_a_re_run_over_the_same_set_with_every_report_passes(world: World) -> None:
    header = world.release_header(1, ["sub-c", "sub-a", "sub-b"], run=1)
    result = check(world, header, 1, UNDECODED)
    assert (result.round, result.run, result.contributors) == (1, 1, ("sub-c", "sub-a", "sub-b"))
    assert result.digests.base_sha256 == BASE


def test_a_re_run_is_refused_without_an_undecoded_release_of_that_round(world: World) -> None:
    header = world.release_header(1, THREE, run=1)
    refused("out-of-schedule", lambda: check(world, header, 1))
    other_round = UndecodedRelease(round=0, contributors=tuple(THREE), bundle_sha256=BUNDLE)
    refused("out-of-schedule", lambda: check(world, header, 1, other_round))
    for bad in (MAX_RUN + 1, -1, "1", True, None):
        refused("bad-field", lambda b=bad: check(world, {**header, "run": b}, 1, UNDECODED))


def test_a_re_run_over_another_set_is_refused(world: World) -> None:
    """A smaller or larger set would let release₀ − release₁ reveal someone's update."""
    for subjects in (PARTICIPANTS, ["sub-a", "sub-b", "sub-d"]):
        header = world.release_header(1, subjects, run=1)
        refused("rerun-set-mismatch", lambda h=header: check(world, h, 1, UNDECODED))
    larger = UndecodedRelease(round=1, contributors=tuple(PARTICIPANTS), bundle_sha256=BUNDLE)
    refused(
        "rerun-set-mismatch", lambda: check(world, world.release_header(1, THREE, run=1), 1, larger)
    )


def test_a_re_run_needs_every_members_report_on_the_undecoded_bundle(world: World) -> None:
    reports = [world.undecodable(s, 1) for s in THREE]
    cases = {
        "one missing": reports[:2],
        "one twice": [reports[0], reports[0], reports[1]],
        "another bundle": [*reports[:2], world.undecodable("sub-c", 1, bundle="be" * 32)],
        "another round": [*reports[:2], world.undecodable("sub-c", 0)],
        "of run 1": [*reports[:2], world.undecodable("sub-c", 1, run=1)],
    }
    for name, sent in cases.items():
        header = world.release_header(1, THREE, run=1, undecodable=sent)
        with pytest.raises(ProtocolError) as info:
            check(world, header, 1, UNDECODED)
        assert info.value.code == "undecodable-mismatch", name
    forged = [*reports[:2], world.undecodable("sub-c", 1, key=world.keys["sub-a"])]
    header = world.release_header(1, THREE, run=1, undecodable=forged)
    refused("bad-undecodable-signature", lambda: check(world, header, 1, UNDECODED))
    header = world.release_header(1, THREE, run=1)
    refused("bad-field", lambda: check(world, {**header, "undecodable": None}, 1, UNDECODED))


def test_run_0_carries_no_reports_and_run_0_messages_do_not_serve_a_re_run(world: World) -> None:
    header = world.release_header(1, THREE, undecodable=[world.undecodable("sub-a", 1)])
    refused("undecodable-mismatch", lambda: check(world, header, 1))
    run0 = world.release_header(1, THREE)
    rerun = world.release_header(1, THREE, run=1)
    refused(
        "closed-set-mismatch",
        lambda: check(world, {**rerun, "closed_set": run0["closed_set"]}, 1, UNDECODED),
    )
    refused(
        "statement-mismatch",
        lambda: check(world, {**rerun, "statements": run0["statements"]}, 1, UNDECODED),
    )
    refused(
        "audit-mismatch", lambda: check(world, {**rerun, "audits": run0["audits"]}, 1, UNDECODED)
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


# --------------------------------------------------------------------------- randomness proofs


def test_the_kgc_refuses_a_statement_without_a_proof_of_its_randomness(world: World) -> None:
    """A colluder vouching for a ciphertext whose randomness it does not know: refused."""
    header = world.release_header(0, THREE)
    closed = world.closed(header["closed_set"]).digest
    forged = build_upload_statement(
        world.keys[THREE[0]],
        world.terms,
        round_number=0,
        subject_id=THREE[0],
        payload_sha256=payload(THREE[0], 0),
        closed_set_sha256=closed,
        randomness_proof=prove_randomness(  # knows some randomness, not the upload's
            world.params,
            world.randomness(THREE[0], 99),
            pok_context(world.terms, 0, closed),
            THREE[0],
            random.Random(1),
        ).to_obj(),
    )
    body = {k: v for k, v in header.items() if k != "request_signature"}
    body["statements"] = [forged, *body["statements"][1:]]
    refused("broken-a-chain", lambda: check(world, body, 0))
    # a proof made for another round's context does not verify in this one
    replayed = world.statement(THREE[0], 1, closed=closed)
    body["statements"] = [replayed, *header["statements"][1:]]
    refused("statement-mismatch", lambda: check(world, body, 0))


def test_the_kgc_refuses_a_vector_that_holds_more_than_the_proven_uploads(world: World) -> None:
    header = world.release_header(0, THREE)
    extra = world.a_of([*THREE, PARTICIPANTS[3]], 0)  # a fourth, unproven ciphertext inside
    refused(
        "broken-a-chain",
        lambda: check_release_request(
            header,
            world.terms,
            next_round=0,
            base_sha256=BASE,
            payload_sha256=RELEASE,
            previous_a=[1] * world.blocks,
            current_a=extra,
        ),
    )
    tampered = {k: v for k, v in header.items()}
    proof = dict(tampered["statements"][0]["statement"]["randomness_proof"])
    proof["z"] = format(int(proof["z"], 16) + 1, "x")
    body = {**tampered["statements"][0]["statement"], "randomness_proof": proof}
    tampered["statements"] = [
        {"statement": body, "signature": sign_json(world.keys[THREE[0]], body)},
        *tampered["statements"][1:],
    ]
    refused("bad-randomness-proof", lambda: check(world, tampered, 0))
