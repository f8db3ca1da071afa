"""The KGC's releases of a masked job (docs/PROTOCOL.md, "Masked mode"), over HTTP.

The PS sends a JSON request (``masked_release_request_header`` plus its signature); the
KGC checks it (``check_masked_release_request``), decrypts each contributor's seed under
the job key, derives the masks and seals their sum ``D`` to the contributors. Each test
plays the PS through the Flask test client; every refusal is checked for its status and
code and for leaving no release stored. A contributor checks what it gets with its own
view of the bundle: the KGC's release signature, then ``D`` against the masks it derives
from its own seeds.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gmpy2
import numpy as np
import pytest
from flask.testing import FlaskClient
from kgc_unit_support import DomainWorld

from trapdoor.crypto.bcp import Ciphertext
from trapdoor.crypto.masking import RingVector, derive_mask, ring_sum, seed_to_int
from trapdoor.crypto.signing import generate_signing_key, sign_json
from trapdoor.crypto.wire import encode_frame, to_hex
from trapdoor.kgc.app import create_app
from trapdoor.kgc.models import Job, Release
from trapdoor.kgc.testing import (
    MaskedUpload,
    TestSubject,
    encrypt_plaintexts,
    job_request,
    masked_job_request,
    masked_release_request,
    masked_test_layout,
    masked_upload,
)
from trapdoor.protocol.audit import build_undecodable_statement
from trapdoor.protocol.bundle import (
    MaskedReleaseBinding,
    bundle_sha256,
    open_mask_sum,
    verify_release_statement,
)
from trapdoor.protocol.common import ProtocolError, json_sha256
from trapdoor.protocol.job import JobTerms, MaskedLayout, verify_job_terms
from trapdoor.protocol.release_request import release_header_limit, release_schedule
from trapdoor.protocol.upload import build_masked_upload_statement, mask_context, seed_sha256
from trapdoor.service.errors import BadRequestError, InvalidError

ROUNDS = 3
LENGTH = 6
JSON_TYPE = {"Content-Type": "application/json"}
OCTET_TYPE = {"Content-Type": "application/octet-stream"}


def enrol(world: DomainWorld, subject: TestSubject, name: str) -> TestSubject:
    """Enrol and complete through the domain; returns the subject with its id."""
    answer = world.service.enrol(name, subject.role)
    done = replace(subject, subject_id=answer["subject_id"])
    body = done.completion(answer["code"])
    world.service.complete_enrolment(
        done.subject_id, body["code"], body["signing_key"], body.get("bcp_public_key")
    )
    return done


@dataclass
class Masked:
    """A masked job of three members (quorum 2), its PS, an outsider and the KGC app."""

    world: DomainWorld
    client: FlaskClient
    ps: TestSubject
    members: list[TestSubject]
    outsider: TestSubject
    terms: JobTerms
    layout: MaskedLayout
    rng: random.Random

    def auth(self, subject: TestSubject | None = None) -> dict[str, str]:
        """A fresh KGC token of ``subject`` (default: the PS)."""
        who = self.ps if subject is None else subject
        nonce = f"nonce-{self.rng.getrandbits(64):016x}"
        token = self.world.service.issue_token(**who.challenge(self.world.clock(), nonce))
        return {"Authorization": f"Bearer {token['token']}"}

    def uploads(
        self, signers: Sequence[TestSubject], round_number: int = 0, *, run: int = 0
    ) -> list[MaskedUpload]:
        return [masked_upload(s, self.terms, round_number, self.rng, run=run) for s in signers]

    def request(
        self,
        uploads: Sequence[MaskedUpload | Mapping[str, Any]],
        round_number: int = 0,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The PS-signed request (``ps_key`` forges it; the rest as
        :func:`trapdoor.kgc.testing.masked_release_request`)."""
        ps_key = kwargs.pop("ps_key", self.ps.signing_key)
        return masked_release_request(
            ps_key, self.terms, self.layout, round_number, uploads, **kwargs
        )

    def post(
        self,
        body: Mapping[str, Any] | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(
            f"/v1/jobs/{job_id or self.terms.job_id}/releases",
            data=data,
            headers={**(self.auth() if headers is None else headers), **JSON_TYPE},
        )

    def released(self) -> int:
        return self.world.count(Release)


def _create_masked_job(world: DomainWorld, ps: TestSubject, ids: list[str]) -> JobTerms:
    request = masked_job_request("job-m", ids, quorum=2, rounds=ROUNDS, length=LENGTH)
    answer = world.service.create_job(ps.subject_id, "job-m", request["terms"])
    return verify_job_terms(
        world.service.verify_key,
        answer["job_terms"],
        answer["job_terms_signature"],
        world.service.params,
    )


@pytest.fixture
def masked(world: DomainWorld, people: list[TestSubject]) -> Iterator[Masked]:
    ps = enrol(world, TestSubject.param_server(), "PS")
    members = [enrol(world, p, f"org{i}") for i, p in enumerate(people[:3])]
    outsider = enrol(world, people[3], "outsider")
    terms = _create_masked_job(world, ps, [m.subject_id for m in members])
    app = create_app({"SERVICE": world.service, "TESTING": True})
    layout = masked_test_layout(len(members), rounds=ROUNDS, length=LENGTH)
    yield Masked(world, app.test_client(), ps, members, outsider, terms, layout, random.Random(5))


def error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body


def _view(bundle: Mapping[str, Any], subject_id: str) -> dict[str, Any]:
    """A contributor's view of a bundle: everything but the others' wrapped keys."""
    view = {k: v for k, v in bundle.items() if k != "wrapped_keys"}
    view["wrapped_key"] = bundle["wrapped_keys"][subject_id]
    return view


def _own_mask_sum(
    job: Masked, round_number: int, run: int, values: Mapping[str, int]
) -> RingVector:
    """``Σ μ_i`` derived from each contributor's (decrypted) seed value."""
    n = int(job.terms.job_key.params.n)
    return ring_sum(
        [
            derive_mask(
                value,
                n,
                mask_context(
                    job.terms, job.layout, round_number=round_number, run=run, signer=subject
                ),
                job.layout.ring,
            )
            for subject, value in sorted(values.items())
        ],
        job.layout.ring,
        job.layout.length,
    )


def _opened(job: Masked, bundle: Mapping[str, Any], member: TestSubject) -> RingVector:
    """What ``member`` opens from its own view, after checking the KGC's signature."""
    view = _view(bundle, member.subject_id)
    binding = verify_release_statement(
        job.world.service.verify_key, view, subject_id=member.subject_id
    )
    assert member.secret_key is not None
    return open_mask_sum(
        member.secret_key, binding, view["sealed_mask"], view["wrapped_key"], job.layout
    )


def _seeds(uploads: Sequence[MaskedUpload]) -> dict[str, int]:
    return {u.subject_id: seed_to_int(u.seed) for u in uploads}


def _reports(job: Masked, bundle: Mapping[str, Any], signers: Sequence[TestSubject]) -> list[Any]:
    """Each signer's report that ``bundle`` did not decode."""
    binding = MaskedReleaseBinding.from_fields(bundle)
    digest = bundle_sha256(binding, bundle["sealed_mask"])
    return [
        build_undecodable_statement(
            s.signing_key,
            job.terms,
            round_number=binding.round,
            run=binding.run,
            subject_id=s.subject_id,
            bundle_sha256=digest,
        )
        for s in signers
    ]


# ---------------------------------------------------------------- jobs


def test_a_masked_job_is_signed_with_a_job_key_of_width_one(masked: Masked) -> None:
    terms = masked.terms
    assert (terms.aggregation, terms.width, terms.job_key.width) == ("masked", 1, 1)
    assert terms.packing_sha256 == json_sha256(masked.layout.to_json())
    assert terms.num_plaintexts == LENGTH


def test_a_masked_job_of_width_two_is_refused(masked: Masked) -> None:
    ids = [m.subject_id for m in masked.members]
    request = masked_job_request("job-w2", ids, quorum=2, rounds=ROUNDS, length=LENGTH, width=2)
    with pytest.raises(InvalidError) as info:
        masked.world.service.create_job(masked.ps.subject_id, "job-w2", request["terms"])
    assert info.value.code == "invalid-width"
    assert masked.world.count(Job) == 1
    # Over HTTP too.
    answer = masked.client.post("/v1/jobs", json=request, headers=masked.auth())
    error(answer, 422, "invalid-width")
    assert masked.world.count(Job) == 1


# ---------------------------------------------------------------- an honest release


def test_an_honest_masked_release_opens_the_sum_of_the_masks(masked: Masked) -> None:
    signers = masked.members[:2]
    uploads = masked.uploads(signers)
    body = masked.request(uploads)
    answer = masked.post(body)
    assert answer.status_code == 201, answer.get_json()
    bundle = answer.get_json()
    assert {
        "aggregation",
        "job_id",
        "job_terms_sha256",
        "round",
        "run",
        "uploads",
        "sealed_mask",
        "wrapped_keys",
        "wrapped_keys_sha256",
        "release_signature",
    } == set(bundle)
    assert (bundle["aggregation"], bundle["job_id"], bundle["round"], bundle["run"]) == (
        "masked",
        "job-m",
        0,
        0,
    )
    assert bundle["job_terms_sha256"] == masked.terms.digest
    assert bundle["uploads"] == {u.subject_id: u.payload_sha256 for u in uploads}
    assert sorted(bundle["wrapped_keys"]) == sorted(s.subject_id for s in signers)

    expected = _own_mask_sum(masked, 0, 0, _seeds(uploads))
    for member in signers:
        assert np.array_equal(_opened(masked, bundle, member), expected)

    with masked.world.sessions() as session:
        row = session.query(Release).one()
        assert (row.round, row.run, row.attempt, row.undecodable) == (0, 0, 0, None)
        # What the binding lists, and what makes a request "the same request again".
        assert row.aggregate_sha256 == json_sha256(bundle["uploads"])
        assert row.payload_sha256 == json_sha256(
            {
                u.subject_id: {
                    "payload_sha256": u.payload_sha256,
                    "seed_sha256": seed_sha256(u.seed_obj),
                }
                for u in uploads
            }
        )
        assert row.a_components == b""
        assert row.contributors == sorted(s.subject_id for s in signers)
        assert row.bundle == bundle

    # The same request again: 200 and the stored bundle.
    again = masked.post(body)
    assert again.status_code == 200
    assert again.get_json() == bundle
    assert masked.released() == 1


def test_a_contributor_refuses_a_bundle_the_kgc_did_not_sign(masked: Masked) -> None:
    """The release signature covers every wrapped key: a swapped one does not verify."""
    signers = masked.members[:2]
    bundle = masked.post(masked.request(masked.uploads(signers))).get_json()
    a, b = (s.subject_id for s in signers)
    swapped = {
        **bundle,
        "wrapped_keys": {a: bundle["wrapped_keys"][b], b: bundle["wrapped_keys"][a]},
    }
    with pytest.raises(ProtocolError, match="not the one the KGC signed"):
        verify_release_statement(masked.world.service.verify_key, _view(swapped, a), subject_id=a)


def _reseeded(job: Masked, upload: MaskedUpload) -> MaskedUpload:
    """Another seed for ``upload``'s ``y``, signed by the same contributor."""
    member = next(m for m in job.members if m.subject_id == upload.subject_id)
    fresh = masked_upload(member, job.terms, 0, job.rng)
    statement = build_masked_upload_statement(
        member.signing_key,
        job.terms,
        round_number=0,
        subject_id=member.subject_id,
        payload_sha256=upload.payload_sha256,
        seed_sha256=seed_sha256(fresh.seed_obj),
    )
    return replace(fresh, payload_sha256=upload.payload_sha256, statement=statement)


def test_another_request_for_a_released_round_is_409(masked: Masked) -> None:
    first = masked.uploads(masked.members[:2])
    assert masked.post(masked.request(first)).status_code == 201
    others = [
        masked.request(masked.uploads(masked.members[:2])),  # same set, other uploads
        masked.request(masked.uploads([masked.members[0], masked.members[2]])),  # other set
        masked.request(masked.uploads(masked.members)),  # a larger set
        masked.request(first[:1]),  # a subset (below quorum, but a repeat is checked first)
        # the same uploads but another seed for one of them (its statement names it)
        masked.request([first[0], _reseeded(masked, first[1])]),
    ]
    for body in others:
        error(masked.post(body), 409, "already-released")
    assert masked.released() == 1


def test_rounds_are_released_in_order(masked: Masked) -> None:
    signers = masked.members[:2]
    error(masked.post(masked.request(masked.uploads(signers, 1), 1)), 409, "out-of-schedule")
    error(
        masked.post(masked.request(masked.uploads(signers, ROUNDS), ROUNDS)),
        409,
        "round-out-of-range",
    )
    assert masked.released() == 0
    for t in range(ROUNDS):
        uploads = masked.uploads(signers, t)
        answer = masked.post(masked.request(uploads, t))
        assert answer.status_code == 201, answer.get_json()
        expected = _own_mask_sum(masked, t, 0, _seeds(uploads))
        assert np.array_equal(_opened(masked, answer.get_json(), signers[0]), expected)
    error(masked.post(masked.request(masked.uploads(signers, 1), 1)), 409, "already-released")
    assert masked.released() == ROUNDS


# ---------------------------------------------------------------- refusals


def _refusals(job: Masked) -> list[tuple[str, bytes, dict[str, str] | None, int, str]]:
    """(what, body, headers, status, code): a dishonest or confused PS, one piece each."""
    a, b, c = job.members
    ua, ub = job.uploads([a, b])
    rogue = generate_signing_key()

    def body(uploads: Sequence[Any], **kwargs: Any) -> bytes:
        return json.dumps(job.request(uploads, **kwargs)).encode()

    other_seed = masked_upload(c, job.terms, 0, job.rng).seed_obj
    names_other = masked_upload(b, job.terms, 0, job.rng, seed_obj=other_seed)
    copied = masked_upload(b, job.terms, 0, job.rng, seed_obj=ua.seed_obj)
    bcp_frame = encode_frame(
        encrypt_plaintexts(job.terms.job_key, [1] * LENGTH, job.rng), job.request([ua, ub])
    )
    wider = masked_test_layout(3, rounds=ROUNDS, length=LENGTH + 1)
    oversized = release_header_limit(len(job.terms.participants)) + 1
    other_ps = enrol(job.world, TestSubject.param_server(), "PS2")
    return [
        ("below the quorum", body([ua]), None, 422, "below-quorum"),
        (
            "a non-participant",
            body([ua, masked_upload(job.outsider, job.terms, 0, job.rng)]),
            None,
            422,
            "not-a-participant",
        ),
        (
            "a forged statement signature",
            body([ua, masked_upload(b, job.terms, 0, job.rng, signing_key=rogue)]),
            None,
            403,
            "bad-statement-signature",
        ),
        (
            "a statement signed by another participant",
            body([ua, masked_upload(b, job.terms, 0, job.rng, signing_key=a.signing_key)]),
            None,
            403,
            "bad-statement-signature",
        ),
        (
            "a statement naming another seed",
            body([ua, {**names_other.entry(), "seed": ub.seed_obj}]),
            None,
            422,
            "statement-mismatch",
        ),
        ("a seed sent twice", body([ua, copied]), None, 422, "duplicate-seed"),
        (
            "a statement of another run",
            body([ua, masked_upload(b, job.terms, 0, job.rng, run=1)]),
            None,
            422,
            "statement-mismatch",
        ),
        (
            "a seed that is not a group element",
            body([ua, masked_upload(b, job.terms, 0, job.rng, seed_obj={"A": "00", "B": "01"})]),
            None,
            422,
            "bad-seed",
        ),
        (
            "a layout that is not the signed one",
            body([ua, ub], extra={"layout": wider.to_json()}),
            None,
            422,
            "job-mismatch",
        ),
        (
            "a request signed by another key",
            body([ua, ub], ps_key=rogue),
            None,
            403,
            "bad-request-signature",
        ),
        (
            "a request for another job",
            body([ua, ub], extra={"job_id": "job-other"}),
            None,
            422,
            "job-mismatch",
        ),
        ("a bcp request", body([ua, ub], extra={"aggregation": "bcp"}), None, 400, "bad-field"),
        ("a run as text", body([ua, ub], extra={"run": "0"}), None, 400, "bad-field"),
        ("a re-run of nothing", body([ua, ub], run=1), None, 409, "out-of-schedule"),
        ("a bcp frame", bcp_frame, None, 400, "wrong-aggregation"),
        ("malformed JSON", b'{"job_id": ', None, 400, "malformed-json"),
        ("a JSON array", b"[1, 2]", None, 400, "malformed-json"),
        ("NaN", b'{"round": NaN}', None, 400, "malformed-json"),
        ("an empty body", b"", None, 400, "malformed-json"),
        ("an oversized body", b" " * oversized, None, 413, "too-large"),
        ("no token", body([ua, ub]), {}, 401, "unauthorized"),
        ("a participant's token", body([ua, ub]), job.auth(a), 403, "wrong-role"),
        (
            "another PS's job",
            body([ua, ub], ps_key=other_ps.signing_key),
            job.auth(other_ps),
            403,
            "not-job-owner",
        ),
    ]


def test_masked_refusals_store_nothing(masked: Masked) -> None:
    for what, body, headers, status, code in _refusals(masked):
        response = masked.post(body, headers=headers)
        assert response.get_json()["error"] == code, (what, response.get_json())
        error(response, status, code)
        assert masked.released() == 0, what
    error(masked.post(b"{}", job_id="job-none"), 404, "not-found")
    # The honest request still goes through afterwards: nothing moved the schedule.
    assert masked.post(masked.request(masked.uploads(masked.members[:2]))).status_code == 201


def test_malformed_fields_are_refused_never_a_server_error(masked: Masked) -> None:
    """Every field of a signed request (and of its first upload) missing or of another
    type: a 4xx, never a 500, and nothing stored."""
    uploads = masked.uploads(masked.members[:2])
    honest = masked.request(uploads)
    header = {k: v for k, v in honest.items() if k != "request_signature"}
    odd_values: list[Any] = [None, 1, -1, True, "x", [], {}, [1], {"a": 1}]

    def signed(changed: dict[str, Any]) -> dict[str, Any]:
        return {**changed, "request_signature": sign_json(masked.ps.signing_key, changed)}

    variants = []
    for key in header:
        variants.append(signed({k: v for k, v in header.items() if k != key}))
        variants.extend(
            signed({**header, key: value}) for value in odd_values if value != header[key]
        )
    entry = dict(header["uploads"][0])
    for key in ("statement", "seed"):
        for value in odd_values:
            variants.append(
                signed({**header, "uploads": [{**entry, key: value}, *header["uploads"][1:]]})
            )
    for body in variants:
        response = masked.post(body)
        assert 400 <= response.status_code < 500, (response.status_code, response.get_json())
        assert masked.released() == 0
    assert masked.post(honest).status_code == 201


def test_a_bcp_frame_for_a_masked_job_is_refused_before_it_is_read(masked: Masked) -> None:
    frame = encode_frame(encrypt_plaintexts(masked.terms.job_key, [1] * LENGTH, masked.rng), {})
    response = masked.client.post(
        "/v1/jobs/job-m/releases", data=frame, headers={**masked.auth(), **OCTET_TYPE}
    )
    error(response, 415, "unsupported-media-type")
    assert "masked" in response.get_json()["message"]
    # The domain refuses a frame as such whatever the content type said.
    with pytest.raises(BadRequestError) as info:
        masked.world.service.release(masked.ps.subject_id, "job-m", frame)
    assert info.value.code == "wrong-aggregation"
    assert masked.released() == 0


def test_a_bcp_job_refuses_a_masked_request(masked: Masked) -> None:
    ids = [m.subject_id for m in masked.members]
    request = job_request("job-b", ids, params=masked.world.service.params, quorum=2)
    masked.world.service.create_job(masked.ps.subject_id, "job-b", request["terms"])
    body = json.dumps(masked.request(masked.uploads(masked.members[:2]))).encode()
    as_frame = masked.client.post(
        "/v1/jobs/job-b/releases", data=body, headers={**masked.auth(), **OCTET_TYPE}
    )
    error(as_frame, 400, "wrong-aggregation")
    error(masked.post(body, job_id="job-b"), 415, "unsupported-media-type")
    assert masked.released() == 0


def test_masked_refusals_are_logged_with_their_code(
    masked: Masked, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trapdoor.kgc.domain")
    error(masked.post(masked.request(masked.uploads(masked.members[:1]))), 422, "below-quorum")
    record = caplog.records[-1]
    assert record.levelno == logging.WARNING
    assert "below-quorum" in record.getMessage() and "job-m" in record.getMessage()


# ---------------------------------------------------------------- re-runs


def test_a_round_reruns_after_every_contributor_reports_it_undecodable(masked: Masked) -> None:
    a, b, c = masked.members
    first = masked.post(masked.request(masked.uploads([a, b]))).get_json()
    reports = _reports(masked, first, [a, b])

    refusals = [
        (
            masked.request(masked.uploads([a, c], run=1), run=1, undecodable=reports),
            422,
            "rerun-set-mismatch",
        ),
        (
            masked.request(masked.uploads([a, b, c], run=1), run=1, undecodable=reports),
            422,
            "rerun-set-mismatch",
        ),
        (
            masked.request(masked.uploads([a, b], run=1), run=1, undecodable=reports[:1]),
            422,
            "undecodable-mismatch",
        ),
        (masked.request(masked.uploads([a, b], run=1), run=1), 422, "undecodable-mismatch"),
        (
            masked.request(
                masked.uploads([a, b], run=1),
                run=1,
                undecodable=_reports(masked, {**first, "sealed_mask": {"x": 1}}, [a, b]),
            ),
            422,
            "undecodable-mismatch",
        ),
        # Run-0 statements cannot be reused for the re-run.
        (
            masked.request(masked.uploads([a, b]), run=1, undecodable=reports),
            422,
            "statement-mismatch",
        ),
        # Reports are for run 1 only.
        (
            masked.request(masked.uploads([a, b], 1), 1, undecodable=reports),
            422,
            "undecodable-mismatch",
        ),
    ]
    for body, status, code in refusals:
        error(masked.post(body), status, code)
    assert masked.released() == 1

    uploads = masked.uploads([a, b], run=1)
    rerun = masked.post(masked.request(uploads, run=1, undecodable=reports))
    assert rerun.status_code == 201, rerun.get_json()
    bundle = rerun.get_json()
    assert (bundle["round"], bundle["run"]) == (0, 1)
    assert np.array_equal(_opened(masked, bundle, a), _own_mask_sum(masked, 0, 1, _seeds(uploads)))
    with masked.world.sessions() as session:
        row = session.query(Release).filter_by(run=1).one()
        assert row.undecodable == reports
    # No run 2; the next round continues after the re-run.
    second = _reports(masked, bundle, [a, b])
    error(
        masked.post(masked.request(masked.uploads([a, b], run=1), run=1, undecodable=second)),
        409,
        "already-released",
    )
    assert masked.post(masked.request(masked.uploads([a, b], 1), 1)).status_code == 201
    assert masked.released() == 3


# ---------------------------------------------------------------- no decryption oracle


def _tampered(seed_obj: Mapping[str, str], delta: int, n: int) -> dict[str, str]:
    """``c·(1+δN)``: ``B`` times ``1 + δN`` mod ``N²``, which decrypts to ``s + δ``."""
    b = gmpy2.mpz(int(seed_obj["B"], 16)) * (1 + delta * n) % (n * n)
    return {"A": seed_obj["A"], "B": to_hex(int(b))}


def test_a_tampered_seed_is_released_like_any_other(masked: Masked) -> None:
    """A colluder resubmits an honest seed as ``c·(1+δN)``: the KGC releases it without an
    error or a branch (so its answers say nothing about the seed), and ``D`` changes."""
    a, b = masked.members[:2]
    params = masked.terms.job_key.params
    n = int(params.n)
    for t, choose_delta in enumerate(
        (
            lambda s: n - 1 - s,  # decrypts to N - 1: the widest value, far beyond 2^256
            lambda s: 1,
            lambda s: n - s,  # decrypts to 0
        )
    ):
        honest = masked_upload(a, masked.terms, t, masked.rng)
        s = seed_to_int(honest.seed)
        delta = choose_delta(s)
        forged_obj = _tampered(honest.seed_obj, delta, n)
        # The tampered ciphertext is a valid element: nothing distinguishes it.
        key = masked.terms.job_key.component(0)
        Ciphertext(key, gmpy2.mpz(forged_obj["A"], 16), gmpy2.mpz(forged_obj["B"], 16))
        colluder = masked_upload(b, masked.terms, t, masked.rng, seed_obj=forged_obj)
        assert colluder.statement["statement"]["seed_sha256"] == seed_sha256(forged_obj)
        answer = masked.post(masked.request([honest, colluder], t))
        assert answer.status_code == 201, answer.get_json()
        opened = _opened(masked, answer.get_json(), a)
        value = (s + delta) % n
        assert np.array_equal(
            opened, _own_mask_sum(masked, t, 0, {a.subject_id: s, b.subject_id: value})
        )
        untampered = _own_mask_sum(masked, t, 0, {a.subject_id: s, b.subject_id: s})
        assert not np.array_equal(opened, untampered)
    assert masked.released() == 3


def test_a_request_that_loses_the_race_to_store_gets_the_stored_bundle(
    masked: Masked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers release at once: the one whose insert hits the unique (job, round, run)
    answers from the row the other stored, the bundle for the same request and 409 for
    another, exactly as a later retry would be answered."""
    uploads = masked.uploads(masked.members[:2])
    body = masked.request(uploads)
    first = masked.post(body)
    assert first.status_code == 201
    service = masked.world.service
    real_lookup, real_store = service._stored_release, service._store_release

    def race() -> None:
        """The next request's first lookup sees nothing (the other worker has not
        committed yet); its conflict path then sees the stored row."""
        monkeypatch.setattr(service, "_stored_release", lambda session, *key: None)

        def store(row: Any, same: Any) -> Any:
            monkeypatch.setattr(service, "_stored_release", real_lookup)
            return real_store(row, same)

        monkeypatch.setattr(service, "_store_release", store)

    monkeypatch.setattr(  # the schedule a racing worker saw: before round 0's release
        service, "_chain", lambda session, job_id, terms, run: release_schedule(terms, [], run)
    )
    race()
    again = masked.post(body)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()
    race()
    other = masked.post(masked.request(masked.uploads(masked.members[1:])))
    assert other.status_code == 409 and other.get_json()["error"] == "already-released"
    with masked.world.sessions() as session:
        assert session.query(Release).count() == 1
