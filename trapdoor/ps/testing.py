"""Test support: an in-process KGC that does the real crypto, a clock, participants.

Used by the parameter server's unit and API tests (and usable by anyone testing against
the PS without a KGC process). :class:`FakeKgc` implements
:class:`~trapdoor.ps.kgc_gateway.KgcGateway` by calling the same :mod:`trapdoor.protocol`
checks as the real KGC (requested and signed job terms, the PS's request signature, and
:func:`~trapdoor.protocol.release_request.check_release_request` with the job's release
schedule and its chain of audited aggregates), plus frame validity and idempotent
releases. It seals with :func:`trapdoor.protocol.bundle.seal_release` bound to the
audited attempt, so a contributor really opens its bundle with
:func:`trapdoor.protocol.bundle.open_release`.

:class:`TestParticipant` plays a contributor's side of the round protocol
(docs/PROTOCOL.md) against anything with the PS's methods (:class:`PsPort`:
the :class:`~trapdoor.ps.domain.ParameterServer` itself, or :class:`HttpPs` over the
app): commit, upload under the closed set, and audit by really recomputing the attempt
with :func:`trapdoor.protocol.audit.audit_round` from what the PS serves. :func:`play_round`
does all three for a list of contributors::

    play_round(ps, terms, 0, [(p, p.encrypt(job, delta, encryptor, rng)) for p in ps_])
    ps.tick()                                    # the release
    open_model(job, p, ps.download(job_id, 0, p.subject_id))
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import MasterKey, PublicKey, SecretKey
from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    VectorEncryptor,
    generate_job_key,
)
from trapdoor.crypto.encoding import PackingLayout, decode_vector, encode_vector
from trapdoor.crypto.masking import (
    derive_mask,
    draw_seed,
    encode_ring,
    encrypt_seed,
    mask_vector,
    seed_to_int,
    vector_to_bytes,
)
from trapdoor.crypto.pok import prove_randomness
from trapdoor.crypto.signing import (
    b64encode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
)
from trapdoor.crypto.wire import (
    WireError,
    decode_frame,
    encode_frame,
    encode_ring_frame,
    from_obj,
    to_obj,
)
from trapdoor.protocol.audit import AuditDigests, audit_round, build_audit_statement
from trapdoor.protocol.bundle import (
    MaskedReleaseBinding,
    ReleaseBinding,
    blind_from_text,
    bundle_sha256,
    listed_uploads,
    next_model,
    open_mask_sum,
    open_release,
    seal_mask_sum,
    seal_release,
    verify_release_statement,
)
from trapdoor.protocol.commitment import ClosedSet, build_commitment, pok_context, verify_closed_set
from trapdoor.protocol.common import ProtocolError, json_sha256, vector_sha256
from trapdoor.protocol.job import (
    JobTerms,
    MaskedLayout,
    RequestedTerms,
    check_job_view,
    check_requested_terms,
    sign_job_terms,
    verify_job_terms,
)
from trapdoor.protocol.release_request import (
    ReleasedRound,
    ReleaseSchedule,
    check_masked_release_request,
    check_release_request,
    kgc_mask_sum,
    release_header_limit,
    release_schedule,
    repeats_release,
    request_run,
    verify_release_signature,
)
from trapdoor.protocol.upload import (
    build_masked_upload_statement,
    build_upload_statement,
    mask_context,
    seed_sha256,
    seed_to_obj,
)
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.kgc_gateway import KgcError, KgcInfo
from trapdoor.ps.models import metadata
from trapdoor.service.clock import ManualClock as FakeClock
from trapdoor.service.db import make_engine
from trapdoor.service.errors import TrapdoorError, kind_for_status

__all__ = [
    "PS_SUBJECT_ID",
    "FakeClock",
    "FakeKgc",
    "HttpPs",
    "PsPort",
    "PsWorld",
    "TestParticipant",
    "encode_weights",
    "job_key_of",
    "job_terms_of",
    "make_definition",
    "make_participants",
    "make_world",
    "masked_upload_frame",
    "open_masked_model",
    "open_model",
    "play_round",
    "upload_frame",
]


#: The subject id the test world gives its PS (its tokens' audience).
PS_SUBJECT_ID = "ps-test"
#: The KGC's bound on a job key's width (trapdoor.kgc.domain.MAX_WIDTH).
KGC_MAX_WIDTH = 1024
#: How the KGC answers a refused release (docs/PROTOCOL.md, ROUND_PROTOCOL_STEP2.md);
#: every other refusal is 422.
_RELEASE_STATUS = {
    "round-out-of-range": 409,
    "out-of-schedule": 409,
    "bad-request-signature": 403,
    "bad-statement-signature": 403,
    "bad-closed-set-signature": 403,
    "bad-commitment-signature": 403,
    "bad-audit-signature": 403,
    "bad-undecodable-signature": 403,
    "bad-field": 400,
}


@dataclass(frozen=True)
class _FakeRelease:
    """What the KGC keeps of a release: enough to answer a retry and to chain the next."""

    payload_sha256: str
    attempt: int
    bundle: dict[str, Any]
    #: what :func:`trapdoor.protocol.release_request.release_schedule` needs of it
    record: ReleasedRound


@dataclass
class _FakeJob:
    terms: JobTerms
    #: by (round, run)
    releases: dict[tuple[int, int], _FakeRelease] = field(default_factory=dict)

    def schedule(self, run: int) -> ReleaseSchedule:
        newest = [self.releases[key].record for key in sorted(self.releases, reverse=True)]
        return release_schedule(self.terms, newest[:2], run)


class FakeKgc:
    """In-process KGC: KGC-signed job terms, and releases sealed for the contributors only.

    Every check is the shared one the real KGC runs (:mod:`trapdoor.protocol`):
    :func:`~trapdoor.protocol.job.check_requested_terms` and
    :func:`~trapdoor.protocol.job.sign_job_terms` for a job,
    :func:`~trapdoor.protocol.release_request.verify_release_signature` and
    :func:`~trapdoor.protocol.release_request.check_release_request` (with the job's release
    schedule and the aggregate of its previous release as the base) for a release. ``participants``
    are the enrolled participants' BCP keys and ``signing_keys`` their certified Ed25519
    keys (hex); ``ps_subject_id`` and ``ps_verify_key`` are the PS the jobs are signed for
    and its certified key. Set ``failure`` to a :class:`KgcError` to make every call raise
    it (an unreachable or refusing KGC); ``release_calls`` counts release requests,
    ``release_frames`` keeps each request and ``release_headers`` each decodable header.
    """

    def __init__(
        self,
        master_key: MasterKey,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        rng: random.Random | None = None,
        participants: Mapping[str, PublicKey] | None = None,
        signing_keys: Mapping[str, str] | None = None,
        ps_verify_key: Ed25519PublicKey | None = None,
        ps_subject_id: str = PS_SUBJECT_ID,
    ) -> None:
        self.master_key = master_key
        self.signing_key = signing_key or generate_signing_key()
        self.rng = rng or random.Random(0)
        self.participants: dict[str, PublicKey] = dict(participants or {})
        self.signing_keys: dict[str, str] = dict(signing_keys or {})
        self.ps_verify_key = ps_verify_key
        self.ps_subject_id = ps_subject_id
        self.jobs: dict[str, _FakeJob] = {}
        self.failure: KgcError | None = None
        self.release_calls = 0
        self.release_frames: list[bytes] = []
        self.release_headers: list[dict[str, Any]] = []

    def _maybe_fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    def info(self) -> KgcInfo:
        return KgcInfo(self.master_key.params, self.signing_key.public_key(), demo=True)

    def enrol(self, participant: TestParticipant) -> None:
        """Register a participant's BCP and Ed25519 keys (an enrolment, minus the HTTP)."""
        self.participants[participant.subject_id] = participant.public_key
        self.signing_keys[participant.subject_id] = public_key_hex(participant.signing_key)

    def create_job(
        self,
        job_id: str,
        terms: RequestedTerms | Mapping[str, Any],
        *,
        param_server: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/jobs``: check the requested terms, make the job key, sign the terms."""
        self._maybe_fail()
        if self.ps_verify_key is None:
            raise KgcError(403, "not-enrolled", "no parameter server key is certified")
        if job_id in self.jobs:
            raise KgcError(409, "job-exists", f"job {job_id} exists")
        try:
            sent = terms.to_json() if isinstance(terms, RequestedTerms) else dict(terms)
            requested = check_requested_terms(sent)  # as the KGC reads it off the wire
        except ProtocolError as exc:
            raise KgcError(422, exc.code, exc.message) from None
        if requested.job_id != job_id:
            raise KgcError(422, "job-mismatch", "the terms are for another job")
        unknown = sorted(
            s
            for s in requested.participants
            if s not in self.participants or s not in self.signing_keys
        )
        if unknown:
            raise KgcError(422, "unknown-participant", f"unknown participants {unknown}")
        if not 1 <= requested.width <= KGC_MAX_WIDTH:
            raise KgcError(422, "invalid-width", f"width must be 1 to {KGC_MAX_WIDTH}")
        if requested.aggregation == "masked" and requested.width != 1:
            raise KgcError(422, "invalid-width", "a masked job's key has width 1")
        params = self.master_key.params
        job_key = generate_job_key(params, requested.width, self.rng)
        signed, signature = sign_job_terms(
            self.signing_key,
            requested,
            param_server=param_server or self.ps_subject_id,
            param_server_key=public_key_hex(self.ps_verify_key),
            signing_keys=self.signing_keys,
            job_key=to_obj(job_key),
        )
        job_terms = verify_job_terms(self.signing_key.public_key(), signed, signature, params)
        self.jobs[job_id] = _FakeJob(job_terms)
        return {
            "job_id": job_id,
            "job_key": to_obj(job_key),
            "job_terms": signed,
            "job_terms_signature": signature,
        }

    def release(self, frame: bytes) -> dict[str, Any]:
        """``POST /v1/jobs/<id>/releases``: the KGC's checks, then seal for the contributors."""
        self.release_calls += 1
        self.release_frames.append(frame)
        self._maybe_fail()
        try:
            parsed = decode_frame(frame, max_header_bytes=None)
        except WireError as exc:
            raise KgcError(400, "bad-frame", str(exc)) from None
        header = dict(parsed.header)
        self.release_headers.append(header)
        job = self.jobs.get(str(header.get("job_id")))
        if job is None:
            raise KgcError(404, "job-not-found", "no such job")
        terms = job.terms
        digest = str(header.get("sha256"))
        try:
            vector = parsed.vector(terms.job_key)
        except ValueError as exc:
            raise KgcError(422, "invalid-ciphertext", str(exc)) from None
        try:
            if self.ps_verify_key is None:
                raise ProtocolError("bad-request-signature", "no PS key registered")
            t = verify_release_signature(header, self.ps_verify_key)
            run = request_run(header)
            stored = job.releases.get((t, run))
            if stored is not None:
                if repeats_release(
                    header,
                    digest,
                    released_payload_sha256=stored.payload_sha256,
                    released_contributors=stored.record.contributors,
                    released_attempt=stored.attempt,
                ):
                    return stored.bundle  # the same request again: the same bundle
                raise KgcError(409, "already-released", f"round {t} was released already")
            schedule = job.schedule(run)
            current_a = vector.a_components()
            check = check_release_request(
                header,
                terms,
                next_round=schedule.next_round,
                base_sha256=schedule.base_sha256,
                payload_sha256=digest,
                previous_a=schedule.previous_a or [1] * len(current_a),
                current_a=current_a,
                undecoded=schedule.undecoded,
            )
        except ProtocolError as exc:
            raise KgcError(_RELEASE_STATUS.get(exc.code, 422), exc.code, exc.message) from None
        if (header.get("num_plaintexts"), header.get("width")) != (
            terms.num_plaintexts,
            terms.width,
        ):
            raise KgcError(422, "wrong-shape", "the frame does not have the job's shape")
        digests = check.digests
        binding = ReleaseBinding(
            job_id=terms.job_id,
            round=check.round,
            run=check.run,
            attempt=digests.attempt,
            base_sha256=digests.base_sha256,
            contributors_sha256=digests.contributors_sha256,
            blind_sha256=digests.blind_sha256,
        )
        bundle = seal_release(
            self.master_key,
            vector,
            {c: self.participants[c] for c in check.contributors},
            binding=binding,
            rng=self.rng,
        )
        bundle["kgc_signature"] = sign_json(self.signing_key, bundle)
        job.releases[(t, check.run)] = _FakeRelease(
            digest,
            digests.attempt,
            bundle,
            ReleasedRound(
                round=t,
                run=check.run,
                contributors=check.contributors,
                aggregate_sha256=digests.aggregate_sha256,
                a_components=current_a,
                bundle_sha256=bundle_sha256(binding, bundle["sealed_model"]),
            ),
        )
        return bundle

    def release_masked(self, body: bytes) -> dict[str, Any]:
        """``POST /v1/jobs/<id>/releases`` of a masked job (JSON): the KGC's checks
        (:func:`trapdoor.protocol.release_request.check_masked_release_request` over the job's
        release schedule), then every seed decrypted under the job key, the mask sum
        ``D_t`` derived and sealed to the contributors (:func:`kgc_mask_sum`,
        :func:`seal_mask_sum`). The same request again answers the stored bundle."""
        self.release_calls += 1
        self.release_frames.append(body)
        self._maybe_fail()
        try:
            header = json.loads(body)
        except (ValueError, RecursionError):
            raise KgcError(400, "bad-request", "the release request is not JSON") from None
        if not isinstance(header, dict):
            raise KgcError(400, "bad-request", "the release request is not an object")
        self.release_headers.append(header)
        job = self.jobs.get(str(header.get("job_id")))
        if job is None:
            raise KgcError(404, "job-not-found", "no such job")
        terms = job.terms
        if len(body) > release_header_limit(len(terms.participants)):
            raise KgcError(413, "too-large", "the release request is larger than its job allows")
        request_digest = json_sha256(header)
        try:
            if self.ps_verify_key is None:
                raise ProtocolError("bad-request-signature", "no PS key registered")
            t = verify_release_signature(header, self.ps_verify_key)
            run = request_run(header)
            stored = job.releases.get((t, run))
            if stored is not None:
                if stored.payload_sha256 == request_digest:
                    return stored.bundle  # the same request again: the same bundle
                raise KgcError(409, "already-released", f"round {t} was released already")
            schedule = job.schedule(run)
            check = check_masked_release_request(
                header, terms, next_round=schedule.next_round, undecoded=schedule.undecoded
            )
        except ProtocolError as exc:
            raise KgcError(_RELEASE_STATUS.get(exc.code, 422), exc.code, exc.message) from None
        mask_sum = kgc_mask_sum(self.master_key, terms, check)
        binding = MaskedReleaseBinding(
            terms.job_id, terms.digest, check.round, check.run, dict(check.payloads)
        )
        bundle = seal_mask_sum(
            self.signing_key,
            self.master_key,
            mask_sum,
            check.layout,
            {c: self.participants[c] for c in check.contributors},
            binding=binding,
            rng=self.rng,
            random_bytes=self.rng.randbytes,
        )
        job.releases[(t, check.run)] = _FakeRelease(
            request_digest,
            0,
            bundle,
            ReleasedRound(
                round=t,
                run=check.run,
                contributors=check.contributors,
                aggregate_sha256="",
                a_components=(),
                bundle_sha256=bundle_sha256(binding, bundle["sealed_mask"]),
            ),
        )
        return bundle


class PsPort(Protocol):
    """The PS's side of the round protocol, as a participant reaches it.

    :class:`~trapdoor.ps.domain.ParameterServer` has these methods; :class:`HttpPs`
    provides them over the app's HTTP API. Refusals raise the same
    :class:`~trapdoor.service.errors.TrapdoorError` subclass either way.
    """

    def accept_commitment(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]: ...

    def closed_set(self, job_id: str, t: int) -> dict[str, Any]: ...

    def accept_upload(
        self, job_id: str, t: int, subject_id: str, data: bytes
    ) -> dict[str, Any]: ...

    def audit_package(self, job_id: str, t: int, requester: str | None) -> dict[str, Any]: ...

    def base_frame(self, job_id: str, t: int, requester: str | None) -> bytes: ...

    def upload_frame(
        self, job_id: str, t: int, subject_id: str, requester: str | None
    ) -> bytes: ...

    def accept_audit(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]: ...


class HttpPs:
    """:class:`PsPort` over the PS app (a Flask test client), with each participant's token.

    ``auth(subject_id)`` gives the request headers of a participant (None: the operator).
    A refusal raises the :class:`~trapdoor.service.errors.TrapdoorError` subclass of the
    answer's status, with its code, so the same test helpers drive the domain and the
    HTTP API.
    """

    def __init__(self, client: FlaskClient, auth: Callable[[str | None], dict[str, str]]) -> None:
        self.client = client
        self.auth = auth

    def _call(self, method: str, path: str, subject: str | None, **kwargs: Any) -> Any:
        response = self.client.open(path, method=method, headers=self.auth(subject), **kwargs)
        if response.status_code >= 400:
            body = response.get_json(silent=True) or {}
            kind = kind_for_status(response.status_code) or TrapdoorError
            raise kind(str(body.get("error")), str(body.get("message")))
        return response

    @staticmethod
    def _path(job_id: str, t: int, tail: str) -> str:
        return f"/v1/jobs/{job_id}/rounds/{t}/{tail}"

    def accept_commitment(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        answer = self._call("POST", self._path(job_id, t, "commitments"), subject_id, json=signed)
        return answer.get_json(), answer.status_code == 201

    def closed_set(self, job_id: str, t: int) -> dict[str, Any]:
        body: dict[str, Any] = self._call(
            "GET", self._path(job_id, t, "commitments"), None
        ).get_json()
        return body

    def accept_upload(self, job_id: str, t: int, subject_id: str, data: bytes) -> dict[str, Any]:
        answer = self._call(
            "POST",
            self._path(job_id, t, "uploads"),
            subject_id,
            data=data,
            content_type="application/octet-stream",
        )
        body: dict[str, Any] = answer.get_json()
        return body

    def audit_package(self, job_id: str, t: int, requester: str | None) -> dict[str, Any]:
        body: dict[str, Any] = self._call(
            "GET", self._path(job_id, t, "audit"), requester
        ).get_json()
        return body

    def base_frame(self, job_id: str, t: int, requester: str | None) -> bytes:
        return bytes(self._call("GET", self._path(job_id, t, "base"), requester).get_data())

    def upload_frame(self, job_id: str, t: int, subject_id: str, requester: str | None) -> bytes:
        path = self._path(job_id, t, f"uploads/{subject_id}")
        return bytes(self._call("GET", path, requester).get_data())

    def accept_audit(
        self, job_id: str, t: int, subject_id: str, signed: Any
    ) -> tuple[dict[str, Any], bool]:
        answer = self._call("POST", self._path(job_id, t, "audits"), subject_id, json=signed)
        return answer.get_json(), answer.status_code == 201


@dataclass
class TestParticipant:
    """A data owner: subject id, sample count, its BCP key pair and its Ed25519 key.

    Its round helpers take the PS (:class:`PsPort`) and the job's checked terms; the
    vector it commits to and uploads is passed explicitly (participants are shared
    between tests, so they keep no round state).
    """

    __test__ = False  # not a pytest test class

    subject_id: str
    num_samples: int
    public_key: PublicKey
    secret_key: SecretKey
    #: The key the KGC certified: it signs this participant's commitments, upload
    #: statements and audits.
    signing_key: Ed25519PrivateKey = field(default_factory=generate_signing_key, repr=False)
    #: Payload SHA-256 -> the randomness of a vector this participant encrypted: its
    #: upload proves knowledge of it (a vector it did not encrypt gets a wrong proof).
    randomness: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def make(
        cls, subject_id: str, num_samples: int, master_key: MasterKey, rng: Any
    ) -> TestParticipant:
        public, secret = master_key.params.keygen(rng)
        return cls(subject_id, num_samples, public, secret)

    def token(
        self,
        kgc: FakeKgc,
        now: float,
        *,
        role: str = "participant",
        ttl: int = 300,
        audience: str | None = None,
        issuer: str = "kgc",
    ) -> str:
        """A token from ``kgc`` for ``audience`` (default: the PS the KGC signs jobs for)."""
        return issue_token(
            kgc.signing_key,
            subject=self.subject_id,
            role=role,
            now=now,
            ttl_seconds=ttl,
            token_id=f"{self.subject_id}-{next(_TOKEN_IDS)}",
            audience=kgc.ps_subject_id if audience is None else audience,
            issuer=issuer,
        )

    def encrypt(
        self, job: Mapping[str, Any], update: npt.ArrayLike, encryptor: VectorEncryptor, rng: Any
    ) -> EncryptedVector:
        """``Enc(w_i Δ_i)``: the update scaled by this participant's public weight."""
        packing = PackingLayout.from_json(job["packing"])
        clip = float(job["definition"]["encoding"]["clip_bound"])
        plaintexts, _ = encode_vector(
            update, packing, clip_bound=clip, scale=job["weights"][self.subject_id]
        )
        vector, randomness = encryptor.encrypt_with_randomness(plaintexts, rng)
        self.randomness[vector_sha256(vector)] = randomness
        return vector

    def commitment(
        self, terms: JobTerms, t: int, vector: EncryptedVector, run: int = 0
    ) -> dict[str, Any]:
        """The signed commitment to ``vector`` as this participant's round-``t`` upload."""
        return build_commitment(
            self.signing_key,
            terms,
            round_number=t,
            subject_id=self.subject_id,
            payload_sha256=vector_sha256(vector),
            run=run,
        )

    def commit(
        self, ps: PsPort, terms: JobTerms, t: int, vector: EncryptedVector, run: int = 0
    ) -> dict[str, Any]:
        """Send the commitment (commit phase); the PS's answer."""
        answer, _ = ps.accept_commitment(
            terms.job_id, t, self.subject_id, self.commitment(terms, t, vector, run)
        )
        return answer

    def closed(self, ps: PsPort, terms: JobTerms, t: int, run: int = 0) -> ClosedSet:
        """The round's closed set as the PS serves it, verified as a client verifies it."""
        served = ps.closed_set(terms.job_id, t)
        return verify_closed_set(served.get("closed_set"), terms, round_number=t, run=run)

    def frame(
        self,
        terms: JobTerms,
        t: int,
        vector: EncryptedVector,
        closed_set_sha256: str,
        run: int = 0,
    ) -> bytes:
        """This participant's upload frame (:func:`upload_frame`)."""
        return upload_frame(
            terms,
            self.subject_id,
            t,
            vector,
            signing_key=self.signing_key,
            closed_set_sha256=closed_set_sha256,
            randomness=self.randomness.get(vector_sha256(vector)),
            run=run,
        )

    def upload(
        self, ps: PsPort, terms: JobTerms, t: int, vector: EncryptedVector, run: int = 0
    ) -> dict[str, Any]:
        """Upload ``vector`` under the round's closed set (upload phase); the receipt."""
        closed = self.closed(ps, terms, t, run)
        return ps.accept_upload(
            terms.job_id, t, self.subject_id, self.frame(terms, t, vector, closed.digest, run)
        )

    def recompute(self, ps: PsPort, terms: JobTerms, t: int) -> AuditDigests:
        """The current attempt recomputed from what the PS serves (nothing is sent).

        :class:`~trapdoor.protocol.common.ProtocolError` ``audit-mismatch`` if the PS announces
        other digests than the recomputation gives.
        """
        package = ps.audit_package(terms.job_id, t, self.subject_id)
        closed = verify_closed_set(
            package["closed_set"], terms, round_number=t, run=int(package["run"])
        )
        key = terms.job_key

        def vector(data: bytes) -> EncryptedVector:
            return decode_frame(data).vector(key)

        audited = audit_round(
            terms,
            closed,
            attempt=int(package["attempt"]),
            base=vector(ps.base_frame(terms.job_id, t, self.subject_id)),
            uploads={
                s: vector(ps.upload_frame(terms.job_id, t, s, self.subject_id))
                for s in package["contributors"]
            },
            blind=blind_from_text(str(package["blind"]), int(key.params.n)),
            subject_id=self.subject_id,
        )
        fields = audited.digests.fields()
        differing = sorted(k for k in package if k in fields and package[k] != fields[k])
        if differing:
            raise ProtocolError("audit-mismatch", "the PS announces other " + ", ".join(differing))
        return audited.digests

    def audit_statement(
        self, terms: JobTerms, t: int, digests: AuditDigests, run: int = 0
    ) -> dict[str, Any]:
        return build_audit_statement(
            self.signing_key,
            terms,
            round_number=t,
            subject_id=self.subject_id,
            digests=digests,
            run=run,
        )

    def audit(self, ps: PsPort, terms: JobTerms, t: int, run: int = 0) -> AuditDigests:
        """Recompute the current attempt and sign and send its digests (audit phase)."""
        digests = self.recompute(ps, terms, t)
        ps.accept_audit(
            terms.job_id, t, self.subject_id, self.audit_statement(terms, t, digests, run)
        )
        return digests


def play_round(
    ps: PsPort,
    terms: JobTerms,
    t: int,
    contributions: Sequence[tuple[TestParticipant, EncryptedVector]],
    *,
    audit: bool = True,
    run: int = 0,
) -> None:
    """Every listed participant commits, then uploads, then (``audit``) audits.

    The set closes when all of the job's participants committed, so list them all (or
    close the set some other way before the uploads).
    """
    for p, vector in contributions:
        p.commit(ps, terms, t, vector, run)
    for p, vector in contributions:
        p.upload(ps, terms, t, vector, run)
    if audit:
        for p, _ in contributions:
            p.audit(ps, terms, t, run)


_TOKEN_IDS = itertools.count()


def encode_weights(values: npt.ArrayLike) -> str:
    """``initial_weights`` as the definition carries them: base64url float64 LE."""
    return b64encode(np.asarray(values, dtype="<f8").tobytes())


def mlp_spec(num_parameters: int) -> dict[str, Any]:
    """An MLP spec with exactly ``num_parameters`` parameters (4, or 6 and more), for tests
    that choose the vector's length first: ``[n - 5, 1, 2]`` has ``(n - 5 + 1) + (2 + 2)``."""
    if num_parameters == 4:
        return {"kind": "mlp", "layer_sizes": [1, 2]}
    if num_parameters < 6:
        raise ValueError(f"no MLP has exactly {num_parameters} parameters")
    return {"kind": "mlp", "layer_sizes": [num_parameters - 5, 1, 2]}


def make_definition(
    job_id: str,
    participants: Sequence[TestParticipant],
    initial_weights: npt.ArrayLike,
    **overrides: Any,
) -> dict[str, Any]:
    """A valid bcp job definition (small encoding width, for tests); pass
    ``aggregation="masked"`` with a masked ``encoding`` for the other mode. Its model is
    an MLP the size of ``initial_weights`` (:func:`mlp_spec`)."""
    definition: dict[str, Any] = {
        "job_id": job_id,
        "aggregation": "bcp",
        "model": mlp_spec(np.asarray(initial_weights).size),
        "initial_weights": encode_weights(initial_weights),
        "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 8, "seed": 7},
        "participants": [
            {"subject_id": p.subject_id, "num_samples": p.num_samples} for p in participants
        ],
        "quorum": 2,
        "rounds": 2,
        "round_deadline_seconds": 600,
        "below_quorum_policy": "stay-open",
        "encoding": {
            "frac_bits": 20,
            "slot_bits": 29,
            "slot_bound": 64.0,
            "clip_bound": 16.0,
            "width": 4,
        },
    }
    definition.update(overrides)
    return definition


def upload_frame(
    terms: JobTerms,
    subject_id: str,
    round_number: int,
    vector: EncryptedVector,
    *,
    signing_key: Ed25519PrivateKey,
    closed_set_sha256: str,
    randomness: Sequence[int] | None,
    run: int = 0,
) -> bytes:
    """What a participant uploads: its committed ciphertext framed for this job and round.

    The header carries the statement (:func:`trapdoor.protocol.upload.build_upload_statement`)
    naming the payload and the round's closed set, signed with ``signing_key``, with a
    proof of knowledge of ``randomness`` (``None``: of made-up randomness, a proof that
    does not verify, as from someone who re-randomised another's ciphertext).
    """
    proof = randomness_proof(terms, round_number, closed_set_sha256, subject_id, randomness)
    statement = build_upload_statement(
        signing_key,
        terms,
        round_number=round_number,
        subject_id=subject_id,
        payload_sha256=vector_sha256(vector),
        closed_set_sha256=closed_set_sha256,
        randomness_proof=proof,
        run=run,
    )
    return encode_frame(
        vector, {"job_id": terms.job_id, "round": round_number, "statement": statement}
    )


def randomness_proof(
    terms: JobTerms,
    round_number: int,
    closed_set_sha256: str,
    subject_id: str,
    randomness: Sequence[int] | None = None,
) -> dict[str, str]:
    """A statement's ``randomness_proof`` (wire form) for ``randomness``; ``None``: for
    made-up randomness, which does not verify against a real upload."""
    blocks = BlockLayout(terms.num_plaintexts, terms.width).num_blocks
    return prove_randomness(
        terms.job_key.params,
        [1] * blocks if randomness is None else randomness,
        pok_context(terms, round_number, closed_set_sha256),
        subject_id,
        random.Random(round_number),
    ).to_obj()


def masked_upload_frame(
    terms: JobTerms,
    layout: MaskedLayout,
    participant: TestParticipant,
    round_number: int,
    update: npt.ArrayLike,
    *,
    run: int = 0,
    rng: random.Random | None = None,
    seed: bytes | None = None,
) -> bytes:
    """What a contributor of a masked job uploads (docs/PROTOCOL.md, "Masked mode").

    A fresh seed (or ``seed``) encrypted under the job key's first component, the mask
    derived from it for this round, run and signer, ``y = encode(w·clip(Δ)) + μ`` and the
    signed statement naming ``y`` and the seed ciphertext, framed as a ``ring-vector``.
    """
    weight = terms.weights[participant.subject_id]
    clipped = np.clip(np.asarray(update, dtype=np.float64), -layout.clip_bound, layout.clip_bound)
    seed = draw_seed() if seed is None else seed
    ciphertext = encrypt_seed(terms.job_key.component(0), seed, rng)
    context = mask_context(
        terms, layout, round_number=round_number, run=run, signer=participant.subject_id
    )
    mask = derive_mask(seed_to_int(seed), int(terms.job_key.params.n), context, layout.ring)
    y = vector_to_bytes(mask_vector(encode_ring(weight * clipped, layout.ring), mask), layout.ring)
    seed_obj = seed_to_obj(ciphertext)
    statement = build_masked_upload_statement(
        participant.signing_key,
        terms,
        round_number=round_number,
        subject_id=participant.subject_id,
        payload_sha256=hashlib.sha256(y).hexdigest(),
        seed_sha256=seed_sha256(seed_obj),
        run=run,
    )
    return encode_ring_frame(
        y,
        bits=layout.ring.bits,
        num_elements=layout.length,
        extra_header={
            "job_id": terms.job_id,
            "round": round_number,
            "seed": seed_obj,
            "statement": statement,
        },
    )


def open_masked_model(
    kgc_verify_key: Ed25519PublicKey,
    layout: MaskedLayout,
    participant: TestParticipant,
    download: Mapping[str, Any],
    fetch_upload: Callable[[str], bytes],
    current: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """A contributor's side of a masked release: check the KGC's statement, open ``D_t``,
    fetch every listed upload and check it against its digest, ``next_model``."""
    binding = verify_release_statement(kgc_verify_key, download, subject_id=participant.subject_id)
    mask_sum = open_mask_sum(
        participant.secret_key, binding, download["sealed_mask"], download["wrapped_key"], layout
    )
    return next_model(layout, current, listed_uploads(binding, layout, fetch_upload), mask_sum)


def job_terms_of(
    job: Mapping[str, Any], info: KgcInfo, *, param_server: str | None = PS_SUBJECT_ID
) -> JobTerms:
    """A participant's check of a served job (:func:`trapdoor.protocol.job.check_job_view`).

    Quorum is not held to the client's default minimum (test jobs use quorum 2);
    ``param_server=None`` skips the server check.
    """
    return check_job_view(
        job, info.verify_key, info.params, min_quorum=1, param_server=param_server
    )


def job_key_of(job: Mapping[str, Any]) -> JobKey:
    """The job key from the PS's job view."""
    key = from_obj(job["job_key"])
    if not isinstance(key, JobKey):
        raise ValueError("job_key is not a bcp-job-key")
    return key


def open_model(
    job: Mapping[str, Any], participant: TestParticipant, download: Mapping[str, Any]
) -> npt.NDArray[np.float64]:
    """A contributor's side of the release: unwrap, open, subtract ``R``, decode.

    The binding is rebuilt from the download's fields after checking its job, as a
    client does; the sealing itself then checks the rest.
    """
    binding = ReleaseBinding.from_fields(download)
    if binding.job_id != job["job_id"]:
        raise ValueError("the download is for another job")
    packing = PackingLayout.from_json(job["packing"])
    plaintexts = open_release(
        participant.secret_key,
        binding=binding,
        sealed_model=download["sealed_model"],
        wrapped_key=download["wrapped_key"],
        blind=blind_from_text(str(download["blind"]), packing.modulus),
    )
    return decode_vector(plaintexts, packing)


def make_participants(
    master_key: MasterKey, count: int = 4, seed: int = 5
) -> list[TestParticipant]:
    """``count`` data owners ``p1 ..`` with ``100 * i`` samples and their own BCP keys."""
    rng = random.Random(seed)
    return [TestParticipant.make(f"p{i}", 100 * i, master_key, rng) for i in range(1, count + 1)]


@dataclass
class PsWorld:
    """A parameter server (subject :data:`PS_SUBJECT_ID`) over a fresh database, its fake
    KGC, clock and participants."""

    ps: ParameterServer
    kgc: FakeKgc
    clock: FakeClock
    engine: Engine
    sessions: sessionmaker[Session]
    ps_key: Ed25519PrivateKey
    participants: list[TestParticipant]

    def close(self) -> None:
        self.ps.close()
        self.engine.dispose()


def make_world(
    master_key: MasterKey,
    participants: list[TestParticipant],
    database_url: str,
    *,
    create_schema: bool = True,
    chunk_elements: int = 3,
) -> PsWorld:
    """Everything a PS test needs; small chunks."""
    ps_key = generate_signing_key()
    kgc = FakeKgc(
        master_key,
        rng=random.Random(2),
        participants={p.subject_id: p.public_key for p in participants},
        signing_keys={p.subject_id: public_key_hex(p.signing_key) for p in participants},
        ps_verify_key=ps_key.public_key(),
        ps_subject_id=PS_SUBJECT_ID,
    )
    engine = make_engine(database_url)
    if create_schema:
        metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    clock = FakeClock()
    ps = ParameterServer(
        sessions,
        kgc,
        ps_key,
        clock=clock,
        rng=random.Random(3),
        chunk_elements=chunk_elements,
        subject_id=PS_SUBJECT_ID,
    )
    return PsWorld(ps, kgc, clock, engine, sessions, ps_key, participants)
