"""The participant client library without HTTP: identity, pinned KGC, tokens, jobs, uploads.

The KGC and the PS are fakes (:mod:`trapdoor.participant.testing`) whose answers are built with the
shared protocol code. Most tests play a dishonest PS: it serves a job the KGC did not sign,
swaps in a job key of its own, changes what the participants train, lowers the quorum, or
names another server. The client must refuse each before it encrypts anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import BlockLayout, decrypt_vector, generate_job_key
from trapdoor.crypto.encoding import PackingLayout, decode_vector
from trapdoor.crypto.sealing import SealError, open_with_passphrase, seal_with_passphrase
from trapdoor.crypto.signing import (
    b64decode,
    b64encode,
    generate_signing_key,
    private_key_to_bytes,
    public_key_from_hex,
    public_key_hex,
    sign_json,
    verify_json,
)
from trapdoor.crypto.wire import decode_frame, to_obj
from trapdoor.ml.training import TrainingConfig, local_fit, participant_rng
from trapdoor.participant.client import (
    ClientError,
    Identity,
    JobView,
    ParticipantClient,
    decode_weights,
)
from trapdoor.participant.testing import KGC_URL, PS_SUBJECT, PS_URL, FakeNetwork, FakePs, JobWorld
from trapdoor.protocol.audit import verify_audit_statement
from trapdoor.protocol.commitment import verify_closed_set
from trapdoor.protocol.common import ProtocolError
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.protocol.token import KGC_AUDIENCE, token_challenge
from trapdoor.protocol.upload import verify_upload_statement

SUBJECTS = ["p0", "bob", "p2"]


@pytest.fixture
def world(params_1024: tuple[PublicParams, MasterKey], rng: random.Random) -> JobWorld:
    return JobWorld(params_1024[0], rng, SUBJECTS)


@pytest.fixture
def bob(world: JobWorld, network: FakeNetwork, rng: random.Random) -> Iterator[ParticipantClient]:
    client = ParticipantClient(world.identities["bob"], KGC_URL, rng=rng, clock=network.kgc.clock)
    yield client
    client.close()


def _data() -> tuple[np.ndarray, np.ndarray]:
    data_rng = np.random.default_rng(3)
    return data_rng.random((40, 8)), data_rng.integers(0, 3, 40)


def _refused(client: ParticipantClient, reason: str, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        client.fetch_job(PS_URL, "unit-1", **kwargs)
    assert caught.value.code == "job-refused"
    assert caught.value.reason == reason
    assert str(caught.value).startswith(f"job refused: {reason}: ")
    return caught.value


def _nothing_encrypted(client: ParticipantClient, ps: FakePs) -> None:
    assert not client._encryptors and not client._masks
    assert ps.uploads == []
    assert [r for r in ps.requests if r[0] == "POST"] == []


# --------------------------------------------------------------------------- identity


def test_identity_sealing_round_trip(world: JobWorld) -> None:
    identity = world.identities["bob"]
    sealed = identity.to_sealed("correct horse")
    # Nothing readable at rest: no field name, no key, no signature. (Not the 3-letter
    # subject id itself: random ciphertext text contains "bob" about once in 1,000 runs.)
    at_rest = str(sealed)
    signing_key_hex = private_key_to_bytes(identity.signing_key).hex()
    for readable in ("subject_id", signing_key_hex, str(identity.certificate_signature)):
        assert readable not in at_rest
    opened = Identity.from_sealed(sealed, "correct horse")
    assert opened.subject_id == "bob"
    assert opened.secret_key == identity.secret_key
    assert opened.signing_key_hex == identity.signing_key_hex
    assert opened.certificate == identity.certificate
    assert opened.kgc_url == KGC_URL
    assert opened.kgc_verify_key == world.kgc_verify_key
    with pytest.raises(SealError):
        Identity.from_sealed(sealed, "wrong")
    assert "a=" not in repr(opened)


def test_an_identity_sealed_before_pinning_opens_without_a_key(world: JobWorld) -> None:
    plain = json.loads(open_with_passphrase(world.identities["bob"].to_sealed("pw"), "pw"))
    del plain["kgc_verify_key"]  # what older node databases hold
    old = Identity.from_sealed(seal_with_passphrase(json.dumps(plain).encode(), "pw"), "pw")
    assert old.kgc_verify_key is None and old.certificate is not None


def test_enrolment_pins_the_kgc_key_after_checking_the_certificate(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    network.kgc.codes["dave"] = "code-1"
    client = ParticipantClient.enrol(KGC_URL, "dave", "code-1", rng=rng)
    identity = client.identity
    assert identity.kgc_verify_key == world.kgc_verify_key
    assert identity.certificate is not None
    assert identity.certificate["signing_key"] == identity.signing_key_hex
    assert identity.certificate["bcp_public_key"] == to_obj(identity.public_key)
    reopened = Identity.from_sealed(identity.to_sealed("pw"), "pw")
    assert reopened.kgc_verify_key == world.kgc_verify_key
    client.close()


def test_enrolment_refuses_a_certificate_for_other_keys(
    network: FakeNetwork, rng: random.Random
) -> None:
    other = public_key_hex(generate_signing_key())
    network.kgc.codes["dave"] = "code-1"
    network.kgc.tamper_certificate = lambda cert: {**cert, "signing_key": other}
    with pytest.raises(ClientError, match="signing_key") as caught:
        ParticipantClient.enrol(KGC_URL, "dave", "code-1", rng=rng)
    assert caught.value.code == "bad-certificate"


def test_enrolment_refuses_a_certificate_not_signed_by_the_published_key(
    network: FakeNetwork, rng: random.Random
) -> None:
    network.kgc.codes["dave"] = "code-1"
    network.kgc.info["verify_key"] = public_key_hex(generate_signing_key())
    with pytest.raises(ClientError) as caught:
        ParticipantClient.enrol(KGC_URL, "dave", "code-1", rng=rng)
    assert caught.value.code == "bad-certificate"


def test_enrolment_refuses_other_parameters(
    network: FakeNetwork, rng: random.Random, small_params: tuple[PublicParams, MasterKey]
) -> None:
    network.kgc.codes["dave"] = "code-1"
    with pytest.raises(ClientError) as caught:
        ParticipantClient.enrol(KGC_URL, "dave", "code-1", small_params[0], rng=rng)
    assert caught.value.code == "bad-kgc-info"


def test_an_older_identity_pins_the_kgc_key_once(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    identity = copy.copy(world.identities["bob"])
    identity.kgc_verify_key = None
    client = ParticipantClient(identity, KGC_URL, rng=rng)
    assert client.ensure_kgc_pinned() is True
    assert identity.kgc_verify_key == world.kgc_verify_key
    assert client.ensure_kgc_pinned() is False  # never fetched (nor changed) again
    network.kgc.info["verify_key"] = public_key_hex(generate_signing_key())
    assert client.kgc_verify_key == world.kgc_verify_key


def test_an_older_identity_refuses_a_kgc_key_that_did_not_sign_its_certificate(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    identity = copy.copy(world.identities["bob"])
    identity.kgc_verify_key = None
    network.kgc.info["verify_key"] = public_key_hex(generate_signing_key())
    client = ParticipantClient(identity, KGC_URL, rng=rng)
    with pytest.raises(ClientError) as caught:
        client.ensure_kgc_pinned()
    assert caught.value.code == "bad-certificate"
    assert identity.kgc_verify_key is None


# --------------------------------------------------------------------------- tokens


def test_tokens_are_per_audience_signed_challenges_and_cached(
    world: JobWorld, rng: random.Random
) -> None:
    identity = world.identities["bob"]
    now = [1_700_000_000.0]
    client = ParticipantClient(identity, KGC_URL, rng=rng, clock=lambda: now[0])
    sent: list[dict[str, Any]] = []

    def post_json(path: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        assert path == "/v1/tokens"
        sent.append(body)
        return {"token": f"tok{len(sent)}", "expires_at": now[0] + 300}

    client._kgc.post_json = post_json  # type: ignore[method-assign]
    assert client.token(PS_SUBJECT) == "tok1"
    assert client.token(PS_SUBJECT) == "tok1"  # cached per audience
    assert client.token() == "tok2"  # the KGC's own audience is another token
    assert client.token(KGC_AUDIENCE) == "tok2"
    assert [b["audience"] for b in sent] == [PS_SUBJECT, KGC_AUDIENCE]
    for body in sent:
        challenge = token_challenge("bob", body["timestamp"], body["nonce"], body["audience"])
        verify_json(public_key_from_hex(identity.signing_key_hex), challenge, body["signature"])
    now[0] += 290  # within the renewal margin
    assert client.token(PS_SUBJECT) == "tok3"
    assert sent[2]["nonce"] != sent[0]["nonce"]


def test_the_ps_gets_only_tokens_for_its_own_subject_id(
    bob: ParticipantClient, network: FakeNetwork
) -> None:
    bob.fetch_job(PS_URL, "unit-1")
    assert bob.ps_subject(PS_URL) == PS_SUBJECT  # learned from its /v1/info
    assert [r["audience"] for r in network.kgc.token_requests] == [PS_SUBJECT]
    assert all(tok is None for m, p, tok in network.ps.requests if p == "/v1/info")


def test_a_ps_claiming_another_ps_subject_id_gets_no_token(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork
) -> None:
    bob.fetch_job(PS_URL, "unit-1")
    liar = FakePs(world, subject_id="sub-liar", claimed_subject=PS_SUBJECT)
    network.services["http://liar.test"] = liar
    with pytest.raises(ClientError) as caught:
        bob.fetch_job("http://liar.test", "unit-1")
    assert caught.value.code == "ps-subject-conflict"
    assert all(tok is None for _, _, tok in liar.requests)  # only /v1/info, no token
    with pytest.raises(ClientError):
        bob.fetch_job("http://liar.test", "unit-1", ps_subject_id=PS_SUBJECT)


# --------------------------------------------------------------------------- honest jobs


def test_an_honest_job_is_accepted_and_typed_from_the_signed_terms(
    world: JobWorld, bob: ParticipantClient
) -> None:
    job = bob.fetch_job(PS_URL, "unit-1")
    terms = world.terms()
    assert job.terms.digest == terms.digest
    assert job.job_key == terms.job_key
    assert job.participants == SUBJECTS and job.weights == pytest.approx(world.weights)
    assert job.rounds_total == 3 and job.ps_subject_id == PS_SUBJECT
    assert job.job_id == "unit-1"
    np.testing.assert_array_equal(job.initial_weights, world.initial_weights)


def test_unsigned_fields_of_the_view_are_not_used(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork
) -> None:
    """``rounds_total`` is not part of the terms: the signed ``rounds`` wins."""
    network.ps.serve = lambda view: {**view, "rounds_total": 99}
    assert bob.fetch_job(PS_URL, "unit-1").rounds_total == 3


# --------------------------------------------------------------------------- dishonest PS


def test_a_job_not_signed_by_the_pinned_kgc_is_refused(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork
) -> None:
    world.resign(kgc_key=generate_signing_key())  # the PS (or anyone) signed it
    error = _refused(bob, "bad-job-signature")
    assert "pinned KGC key" in error.message
    assert not bob._jobs  # no view of it is kept to train or upload for
    _nothing_encrypted(bob, network.ps)


def test_a_job_key_of_the_ps_in_the_view_is_refused(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork, rng: random.Random
) -> None:
    own = to_obj(generate_job_key(world.params, world.width, rng))  # the PS knows its a_j
    network.ps.serve = lambda view: {**view, "job_key": own}
    _refused(bob, "job-mismatch")
    _nothing_encrypted(bob, network.ps)


def test_a_job_key_of_the_ps_in_the_terms_is_refused(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork, rng: random.Random
) -> None:
    own = to_obj(generate_job_key(world.params, world.width, rng))

    def swap(view: dict[str, Any]) -> dict[str, Any]:
        return {**view, "job_key": own, "job_terms": {**view["job_terms"], "job_key": own}}

    network.ps.serve = swap
    _refused(bob, "bad-job-signature")
    _nothing_encrypted(bob, network.ps)


def _change_definition(view: dict[str, Any]) -> None:
    view["definition"]["training"]["learning_rate"] = 5.0


def _change_initial_weights(view: dict[str, Any]) -> None:
    w = decode_weights(view["definition"]["initial_weights"]) + 1.0
    view["definition"]["initial_weights"] = b64encode(np.asarray(w, dtype="<f8").tobytes())


def _change_weights(view: dict[str, Any]) -> None:
    view["weights"] = {s: (1.0 if s == "bob" else 0.01) for s in view["weights"]}


def _change_packing(view: dict[str, Any]) -> None:
    view["packing"]["frac_bits"] = int(view["packing"].get("frac_bits", 20)) - 4


def _change_model(view: dict[str, Any]) -> None:
    view["definition"]["model"]["layer_sizes"] = [8, 6, 3]


def _change_job_id(view: dict[str, Any]) -> None:
    view["job_id"] = "unit-2"


@pytest.mark.parametrize(
    "change",
    [
        _change_definition,
        _change_initial_weights,
        _change_weights,
        _change_packing,
        _change_model,
        _change_job_id,
    ],
)
def test_a_view_that_differs_from_the_signed_digests_is_refused(
    bob: ParticipantClient, network: FakeNetwork, change: Any
) -> None:
    def serve(view: dict[str, Any]) -> dict[str, Any]:
        change(view)
        return view

    network.ps.serve = serve
    _refused(bob, "job-mismatch")
    _nothing_encrypted(bob, network.ps)


def test_another_signed_job_served_under_this_id_is_refused(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork
) -> None:
    world.job_id = world.definition["job_id"] = "other-job"
    world.resign()
    other = world.view()
    network.ps.serve = lambda _view: other
    world.job_id = "unit-1"  # the fake PS still routes the requested id
    with pytest.raises(ClientError) as caught:
        bob.fetch_job(PS_URL, "unit-1")
    assert caught.value.code == "job-refused" and caught.value.reason == "job-mismatch"
    assert "other-job" in caught.value.message


def test_a_quorum_below_the_minimum_is_refused_unless_configured(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    world.definition["quorum"] = 2
    world.resign()
    assert DEFAULT_MIN_QUORUM == 3
    default = ParticipantClient(world.identities["bob"], KGC_URL, rng=rng)
    error = _refused(default, "quorum-too-small")
    assert "at least 3" in error.message
    _nothing_encrypted(default, network.ps)
    lowered = ParticipantClient(world.identities["bob"], KGC_URL, rng=rng, min_quorum=2)
    assert lowered.fetch_job(PS_URL, "unit-1").terms.quorum == 2
    with pytest.raises(ValueError):
        ParticipantClient(world.identities["bob"], KGC_URL, min_quorum=0)


def test_terms_naming_another_ps_are_refused(
    world: JobWorld, bob: ParticipantClient, network: FakeNetwork
) -> None:
    world.resign(param_server="sub-other-ps")
    _refused(bob, "wrong-param-server")
    _nothing_encrypted(bob, network.ps)


def test_a_pinned_ps_subject_id_is_the_audience_without_asking_the_ps(
    bob: ParticipantClient, network: FakeNetwork
) -> None:
    assert bob.fetch_job(PS_URL, "unit-1", ps_subject_id=PS_SUBJECT).ps_subject_id == PS_SUBJECT
    assert [p for _, p, _ in network.ps.requests] == ["/v1/jobs/unit-1"]
    assert [r["audience"] for r in network.kgc.token_requests] == [PS_SUBJECT]


def test_terms_naming_another_ps_than_the_pinned_one_are_refused(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    """The PS at the URL is ``sub-ps``, but the operator pinned ``sub-other-ps`` for it."""
    other = FakePs(world, subject_id="sub-other-ps")
    network.services[PS_URL] = other
    world.ps_subject = "sub-other-ps"  # the fake KGC issues tokens for it...
    world.resign(param_server=PS_SUBJECT)  # ...but the KGC signed the job for sub-ps
    client = ParticipantClient(world.identities["bob"], KGC_URL, rng=rng)
    _refused(client, "wrong-param-server", ps_subject_id="sub-other-ps")
    _nothing_encrypted(client, other)


def test_terms_with_another_signing_key_for_us_are_refused(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    me = copy.copy(world.identities["bob"])
    me.signing_key = generate_signing_key()  # the KGC certified someone else's key as bob
    client = ParticipantClient(me, KGC_URL, rng=rng)
    network.kgc.signing_keys["bob"] = me.signing_key_hex
    _refused(client, "wrong-signing-key")


# --------------------------------------------------------------------------- uploads


def test_upload_frame_decodes_to_weighted_update_with_a_signed_statement(
    params_1024: tuple[PublicParams, MasterKey],
    world: JobWorld,
    bob: ParticipantClient,
    network: FakeNetwork,
) -> None:
    _, master = params_1024
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    w0 = job.initial_weights

    receipt, metrics = bob.contribute(job, 1, w0, X, y, poll_seconds=0)

    assert receipt["receipt"]["subject_id"] == "bob"  # the fake PS checked the statement
    [(round_number, frame)] = network.ps.uploads
    assert round_number == 1
    parsed = decode_frame(frame)
    assert parsed.header["job_id"] == "unit-1" and parsed.header["round"] == 1
    payload_sha256 = hashlib.sha256(parsed.payload).hexdigest()
    closed = verify_closed_set(network.ps.rounds[1].closed, world.terms(), round_number=1)
    assert closed.payloads["bob"] == payload_sha256  # committed before it uploaded
    statement = verify_upload_statement(
        parsed.header["statement"],
        world.terms(),
        round_number=1,
        subject_id="bob",
        payload_sha256=payload_sha256,
        closed_set_sha256=closed.digest,
    )
    assert statement.audience == PS_SUBJECT
    for wrong in ({"round_number": 2}, {"round_number": 1, "subject_id": "p0"}):
        with pytest.raises(ProtocolError):
            verify_upload_statement(
                parsed.header["statement"], world.terms(), payload_sha256=payload_sha256, **wrong
            )
    with pytest.raises(ProtocolError):
        verify_upload_statement(
            parsed.header["statement"],
            world.terms(),
            round_number=1,
            payload_sha256=hashlib.sha256(b"another payload").hexdigest(),
        )
    decoded = decode_vector(decrypt_vector(master, parsed.vector(job.job_key)), job.packing)
    config = TrainingConfig(learning_rate=0.5, local_epochs=2, batch_size=8)
    expected = local_fit(job.model, w0, X, y, config, participant_rng(7, 1, 1)).update
    w_i = world.weights["bob"]
    assert np.max(np.abs(decoded - w_i * expected)) <= 2.0**-18
    assert metrics["bytes_up"] == len(frame)
    assert metrics["clip"]["clipped"] == 0
    timings = metrics["timings"]
    assert {"train_s", "encode_s", "masks_s", "encrypt_s", "upload_s"} <= set(timings)
    assert timings["masks_wait_s"] <= timings["encrypt_s"]


def test_masks_for_the_next_round_are_prepared_and_never_reused(
    params_1024: tuple[PublicParams, MasterKey], bob: ParticipantClient, network: FakeNetwork
) -> None:
    """After an upload the next round's masks are computed in the background, once."""
    _, master = params_1024
    job = bob.fetch_job(PS_URL, "unit-1")
    assert job.rounds_total > 2
    X, y = np.ones((6, 8)), np.array([0, 1, 2, 0, 1, 2])
    w0 = job.initial_weights
    bob.contribute(job, 0, w0, X, y, poll_seconds=0)
    pending = bob._masks[job.job_id]
    masks, _ = pending.result()
    assert not masks.used and masks._zero is not None
    prepared_a = [masks._zero.elements[i] for i in range(len(masks._zero.elements))]
    bob.contribute(job, 1, w0, X, y, poll_seconds=0)
    assert masks.used  # round 1 used exactly the masks prepared after round 0
    a_offsets = [offset for offset, _ in job_layout(job).block_offsets()]
    first, second = (decode_frame(f).vector(job.job_key) for _, f in network.ps.uploads)
    assert all(first.elements[i] != second.elements[i] for i in a_offsets)  # fresh g^r
    assert [second.elements[i] for i in a_offsets] == [prepared_a[i] for i in a_offsets]
    assert len(decrypt_vector(master, second)) == job.packing.num_plaintexts
    bob.contribute(job, job.rounds_total - 1, w0, X, y, poll_seconds=0)
    assert job.job_id not in bob._masks  # no round after the last one
    bob.close()
    assert bob._mask_thread is None and not bob._encryptors


def test_a_contributor_audits_the_aggregate_before_the_release(
    params_1024: tuple[PublicParams, MasterKey],
    world: JobWorld,
    bob: ParticipantClient,
    network: FakeNetwork,
) -> None:
    """Bob recomputes Agg and F from every committed upload and signs exactly those."""
    _, master = params_1024
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    bob.contribute(job, 0, job.initial_weights, X, y, poll_seconds=0)
    status = bob.audit_until_released(job, 0, timeout=5, poll_seconds=0)

    assert status["status"] == "released"
    rnd = network.ps.rounds[0]
    assert rnd.audited is not None
    signed = rnd.audits["bob"]
    digests = verify_audit_statement(
        signed, world.terms(), round_number=0, subject_id="bob"
    ).digests
    assert digests == rnd.audited.digests
    assert digests.base_sha256 == world.terms().initial_ciphertext_sha256
    # F really is W_0 + Σ w_i Δ_i + R, slot by slot (the KGC would open exactly this).
    opened = decrypt_vector(master, rnd.audited.release)
    parts = [decrypt_vector(master, rnd.uploads[s]) for s in rnd.audited.contributors]
    base = decrypt_vector(master, network.ps._base())
    n = int(world.params.n)
    assert opened == [
        (b + sum(column) + r) % n for b, r, *column in zip(base, rnd.blind, *parts, strict=True)
    ]
    assert bob.last_audit["contributors"] == 3 and bob.last_audit["bytes_down"] > 0


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda p: {**p, "blind": b64encode(bytes(len(b64decode(p["blind"]))))}, "audit-mismatch"),
        (lambda p: {**p, "contributors": p["contributors"][:1]}, "below-quorum"),
        (
            lambda p: {**p, "closed_set": {**p["closed_set"], "signature": "AA"}},
            "bad-closed-set-signature",
        ),
    ],
)
def test_a_ps_that_serves_another_audit_package_gets_no_audit_signature(
    bob: ParticipantClient, network: FakeNetwork, tamper: Any, code: str
) -> None:
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    bob.contribute(job, 0, job.initial_weights, X, y, poll_seconds=0)
    network.ps.serve_audit = tamper
    with pytest.raises(ClientError) as caught:
        bob.audit(job, 0)
    assert caught.value.code == code
    assert "bob" not in network.ps.rounds[0].audits  # nothing signed


def test_a_set_closed_without_our_commitment_means_no_upload(
    params_1024: tuple[PublicParams, MasterKey],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Committing late: the PS closed the set with the three others; bob never uploads."""
    world = JobWorld(params_1024[0], rng, [*SUBJECTS, "p3"])
    network = FakeNetwork(world)
    monkeypatch.setattr("trapdoor.participant.client.ServiceClient", network.service_client)
    bob = ParticipantClient(world.identities["bob"], KGC_URL, rng=rng, clock=network.kgc.clock)
    job = bob.fetch_job(PS_URL, "unit-1")
    X, y = _data()
    prepared = bob.prepare_update(job, 0, job.initial_weights, X, y)
    network.ps.commit_others(0, skip={"bob"})
    closed = verify_closed_set(network.ps.rounds[0].closed, world.terms(), round_number=0)
    assert "bob" not in closed.payloads
    with pytest.raises(ClientError) as caught:
        bob.upload(job, prepared, closed)
    assert caught.value.code == "not-included"
    assert network.ps.uploads == []


def job_layout(job: JobView) -> BlockLayout:
    return BlockLayout(job.packing.num_plaintexts, job.job_key.width)


def test_not_a_participant_is_refused(
    world: JobWorld, network: FakeNetwork, rng: random.Random
) -> None:
    job = JobView.parse(PS_URL, world.view(), world.terms())
    outsider = Identity.generate("mallory", world.params, rng)
    client = ParticipantClient(outsider, KGC_URL, rng=rng)
    with pytest.raises(ClientError, match="not a participant") as caught:
        client.contribute(job, 0, job.initial_weights, np.zeros((2, 8)), np.zeros(2, int))
    assert caught.value.code == "not-a-participant"
    assert network.ps.uploads == []


def test_a_packing_inconsistent_with_the_signed_terms_is_refused(
    world: JobWorld, params_1024: tuple[PublicParams, MasterKey]
) -> None:
    """Signed, but not usable: a packing modulo another N than the KGC's."""
    world.packing = PackingLayout(modulus=int(params_1024[0].n) - 2, length=63).to_json()
    world.resign()
    with pytest.raises(ClientError) as caught:
        JobView.parse(PS_URL, world.view(), world.terms())
    assert caught.value.reason == "bad-job"


def test_sign_json_fixture_sanity(world: JobWorld) -> None:
    """The fakes sign with the world's KGC key (what the client pins)."""
    cert = world.identities["bob"].certificate
    verify_json(world.kgc_key.public_key(), cert, world.identities["bob"].certificate_signature)
    assert sign_json(world.kgc_key, {"a": 1}) != sign_json(generate_signing_key(), {"a": 1})
