"""Test support for the participant side: a KGC-signed job and fake KGC and PS services.

Used by the participant's unit and API tests (and by anyone who wants to drive a
:class:`~trapdoor.participant.client.ParticipantClient` without running the services). Every
message is built with the shared protocol code (:mod:`trapdoor.protocol`,
:mod:`trapdoor.crypto.signing`), never re-implemented: :class:`JobWorld` signs a job's terms with
:func:`~trapdoor.protocol.job.sign_job_terms` and serves the view a PS would serve;
:class:`FakeNetwork` answers HTTP calls for a fake KGC and fake PSs and is installed in place
of :class:`trapdoor.service.http.ServiceClient`::

    world = JobWorld(params, rng, ["alice", "bob", "carol"])
    network = FakeNetwork(world)
    monkeypatch.setattr("trapdoor.participant.client.ServiceClient", network.service_client)
    client = ParticipantClient(world.identities["bob"], KGC_URL)
    job = client.fetch_job(PS_URL, world.job_id)

A dishonest PS is played by changing what it serves: :attr:`FakePs.serve` maps the honest
view to the one the PS sends.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.crypto.bcp import PublicParams
from trapdoor.crypto.blocks import EncryptedVector, generate_job_key, trivial_encryption
from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.signing import (
    TokenError,
    b64encode,
    generate_signing_key,
    issue_token,
    public_key_hex,
    sign_json,
    verify_token,
)
from trapdoor.crypto.wire import WireError, decode_frame, encode_frame, to_obj
from trapdoor.ml.models import MLP
from trapdoor.participant.client import Identity
from trapdoor.protocol.audit import AuditedRound, audit_round, verify_audit_statement
from trapdoor.protocol.bundle import blind_to_text
from trapdoor.protocol.commitment import (
    build_closed_set,
    build_commitment,
    verify_closed_set,
    verify_commitment,
)
from trapdoor.protocol.common import ProtocolError, vector_sha256
from trapdoor.protocol.enrolment import Certificate, sign_certificate
from trapdoor.protocol.job import (
    initial_ciphertext,
    initial_ciphertext_sha256,
    initial_weights_of,
    requested_terms,
    sign_job_terms,
    verify_job_terms,
)
from trapdoor.protocol.metrics import verify_metrics_report
from trapdoor.protocol.receipt import build_receipt
from trapdoor.protocol.token import (
    KGC_AUDIENCE,
    TokenChallenge,
    check_nonce,
    verify_token_challenge,
)
from trapdoor.protocol.upload import UploadStatement, verify_upload_statement
from trapdoor.service.http import ServiceError

__all__ = [
    "KGC_URL",
    "PS_SUBJECT",
    "PS_URL",
    "FakeKgc",
    "FakeNetwork",
    "FakePs",
    "JobWorld",
    "certify",
    "node_test_config",
]

KGC_URL = "http://kgc.test"
PS_URL = "http://ps.test"
PS_SUBJECT = "sub-ps"
TOKEN_TTL = 300


def node_test_config(database_url: str, admin_token: str) -> dict[str, Any]:
    """A node app's config for API tests: no background worker, fast polling, and a
    fixed partition (2 of 4, seed 7) of the bundled digits as its local data."""
    return {
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": admin_token,
        "PASSPHRASE": "node-pass",
        "BACKGROUND": False,
        "DATASET": "digits",
        "NUM_PARTITIONS": 4,
        "PARTITION_INDEX": 2,
        "PARTITION_SEED": 7,
        "POLL_SECONDS": 0.05,
    }


def certify(kgc_key: Ed25519PrivateKey, identity: Identity, *, now: int = 1_700_000_000) -> None:
    """Give ``identity`` the certificate and pinned key a KGC with ``kgc_key`` would."""
    certificate = {
        "subject_id": identity.subject_id,
        "name": identity.subject_id,
        "role": "participant",
        "signing_key": identity.signing_key_hex,
        "issued_at": now,
        "bcp_public_key": to_obj(identity.public_key),
    }
    identity.certificate = certificate
    identity.certificate_signature = sign_json(kgc_key, certificate)
    identity.kgc_url = KGC_URL
    identity.kgc_verify_key = public_key_hex(kgc_key)


class JobWorld:
    """A KGC key, enrolled participants, and one job the KGC signed for a PS.

    ``definition``, ``packing`` and ``weights`` are what the PS serves; :meth:`resign`
    signs them again (after a test changed them, or for another PS, quorum, key).
    """

    def __init__(
        self,
        params: PublicParams,
        rng: random.Random,
        subjects: Sequence[str],
        *,
        quorum: int = 3,
        rounds: int = 3,
        width: int = 4,
        job_id: str = "unit-1",
        ps_subject: str = PS_SUBJECT,
        layers: Sequence[int] = (8, 5, 3),
    ) -> None:
        self.params = params
        self.rng = rng
        self.kgc_key = generate_signing_key()
        #: The PS's certified key: it signs closed commitment sets.
        self.ps_key = generate_signing_key()
        self.job_id = job_id
        self.ps_subject = ps_subject
        self.width = width
        self.identities: dict[str, Identity] = {}
        for subject in subjects:
            identity = Identity.generate(subject, params, rng)
            certify(self.kgc_key, identity)
            self.identities[subject] = identity
        model = MLP(list(layers))
        self.model = model
        self.initial_weights = model.init_parameters(np.random.default_rng(1))
        counts = [30 + 20 * i for i in range(len(subjects))]
        self.definition: dict[str, Any] = {
            "job_id": job_id,
            "model": model.spec(),
            "initial_weights": b64encode(np.asarray(self.initial_weights, dtype="<f8").tobytes()),
            "training": {"learning_rate": 0.5, "local_epochs": 2, "batch_size": 8, "seed": 7},
            "participants": [
                {"subject_id": s, "num_samples": n} for s, n in zip(subjects, counts, strict=True)
            ],
            "quorum": quorum,
            "rounds": rounds,
            "aggregation": "bcp",
            "encoding": {"clip_bound": 16.0},
        }
        self.packing = PackingLayout(modulus=int(params.n), length=model.num_parameters).to_json()
        self.weights = {s: n / sum(counts) for s, n in zip(subjects, counts, strict=True)}
        self.job_key = to_obj(generate_job_key(params, width, rng))
        self.job_terms: dict[str, Any] = {}
        self.job_terms_signature = ""
        self.resign()

    @property
    def kgc_verify_key(self) -> str:
        return public_key_hex(self.kgc_key)

    @property
    def num_plaintexts(self) -> int:
        return PackingLayout.from_json(self.packing).num_plaintexts

    def resign(
        self,
        *,
        kgc_key: Ed25519PrivateKey | None = None,
        param_server: str | None = None,
        job_key: dict[str, Any] | None = None,
    ) -> None:
        """Sign the current definition, packing and weights (as the KGC would)."""
        requested = requested_terms(
            job_id=self.job_id,
            definition=self.definition,
            packing=self.packing,
            weights=self.weights,
            width=self.width,
            num_plaintexts=self.num_plaintexts,
            initial_ciphertext_sha256=initial_ciphertext_sha256(
                self.params,
                self.width,
                PackingLayout.from_json(self.packing),
                initial_weights_of(self.definition),
            ),
        )
        self.job_terms, self.job_terms_signature = sign_job_terms(
            kgc_key or self.kgc_key,
            requested,
            param_server=param_server or self.ps_subject,
            param_server_key=public_key_hex(self.ps_key),
            signing_keys={s: i.signing_key_hex for s, i in self.identities.items()},
            job_key=job_key or self.job_key,
        )

    def terms(self) -> Any:
        """The verified :class:`~trapdoor.protocol.job.JobTerms` of the current signature."""
        return verify_job_terms(
            self.kgc_key.public_key(), self.job_terms, self.job_terms_signature, self.params
        )

    def view(self) -> dict[str, Any]:
        """What an honest PS serves at ``GET /v1/jobs/<id>``."""
        return copy.deepcopy(
            {
                "job_id": self.job_id,
                "definition": self.definition,
                "job_key": self.job_key,
                "packing": self.packing,
                "weights": self.weights,
                "job_terms": self.job_terms,
                "job_terms_signature": self.job_terms_signature,
                "current_round": 0,
                "rounds_total": self.definition["rounds"],
                "status": "running",
            }
        )

    def kgc_info(self) -> dict[str, Any]:
        return {"params": to_obj(self.params), "verify_key": self.kgc_verify_key, "demo": True}


# --------------------------------------------------------------------------- fake services


@dataclass
class FakeKgc:
    """``/v1/info``, enrolment completion and ``/v1/tokens`` of a KGC, with its checks."""

    world: JobWorld
    #: Enrolment codes the operator handed out: subject id -> code.
    codes: dict[str, str] = field(default_factory=dict)
    #: Subject id -> certified Ed25519 key (hex); the world's participants to begin with.
    signing_keys: dict[str, str] = field(default_factory=dict)
    #: What ``/v1/info`` answers (a test may swap the key or the parameters).
    info: dict[str, Any] = field(default_factory=dict)
    #: Every ``POST /v1/tokens`` body received.
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    clock: Callable[[], float] = lambda: 1_700_000_000.0
    #: Changes the certificate the KGC returns (a dishonest KGC or a man in the middle).
    tamper_certificate: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.info = self.info or self.world.kgc_info()
        for subject, identity in self.world.identities.items():
            self.signing_keys.setdefault(subject, identity.signing_key_hex)

    def handle(self, method: str, path: str, body: Any, token: str | None) -> Any:
        if method == "GET" and path == "/v1/info":
            return copy.deepcopy(self.info)
        match = re.fullmatch(r"/v1/enrolments/([^/]+)/complete", path)
        if method == "POST" and match:
            return self._complete(match.group(1), body)
        if method == "POST" and path == "/v1/tokens":
            return self._token(body)
        raise ServiceError(404, "not-found", f"fake KGC has no {method} {path}")

    def _complete(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.codes.get(subject) != body.get("code"):
            raise ServiceError(401, "invalid-code", "the enrolment code is not valid")
        del self.codes[subject]
        certificate = Certificate(
            subject_id=subject,
            name=subject,
            role="participant",
            signing_key=body["signing_key"],
            issued_at=int(self.clock()),
            bcp_public_key=body["bcp_public_key"],
        )
        if self.tamper_certificate is not None:
            certificate = Certificate.from_json(self.tamper_certificate(certificate.to_json()))
        self.signing_keys[subject] = str(body["signing_key"])
        return sign_certificate(self.world.kgc_key, certificate)

    def _token(self, body: dict[str, Any]) -> dict[str, Any]:
        """The KGC's checks of a challenge (:mod:`trapdoor.protocol.token`) against this
        fake's records (certified keys, the world's audiences). Its clock is the test's, not
        the clients', so it checks no timestamp, and it remembers no nonce."""
        self.token_requests.append(dict(body))
        try:
            challenge, signature = TokenChallenge.from_request(body)
            check_nonce(challenge.nonce)
        except ProtocolError as exc:
            raise ServiceError(400, exc.code, exc.message) from None
        key = self.signing_keys.get(challenge.subject_id)
        if key is None:
            raise ServiceError(404, "not-found", "no such subject")
        try:
            verify_token_challenge(challenge, signature, key)
        except ProtocolError as exc:
            raise ServiceError(401, exc.code, exc.message) from None
        audience = challenge.audience
        if audience != KGC_AUDIENCE and audience != self.world.ps_subject:
            raise ServiceError(422, "unknown-audience", "no such audience")
        now = self.clock()
        token = issue_token(
            self.world.kgc_key,
            subject=challenge.subject_id,
            role="participant",
            now=now,
            ttl_seconds=TOKEN_TTL,
            token_id=f"t{next(self._ids)}",
            audience=audience,
        )
        return {"token": token, "expires_at": now + TOKEN_TTL}


@dataclass
class _FakeRound:
    """What a fake PS holds about one round."""

    commitments: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed: dict[str, Any] | None = None
    uploads: dict[str, EncryptedVector] = field(default_factory=dict)
    statements: dict[str, UploadStatement] = field(default_factory=dict)
    audited: AuditedRound | None = None
    blind: list[int] = field(default_factory=list)
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Verified metrics reports by subject (the fake takes them in any phase).
    metric_reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.closed is None:
            return "open"
        if self.audited is None:
            return "committed"
        return "released" if set(self.audits) == set(self.audited.contributors) else "closed"


@dataclass
class FakePs:
    """A parameter server's participant-facing API: info, the job view, one round's phases.

    It accepts only tokens whose audience is its own ``subject_id`` (as the real PS), and
    checks commitments, upload statements and audits with :mod:`trapdoor.protocol`. The
    other participants of the world are played by the fake: with ``others`` on, the first
    commitment of a round brings theirs (random ciphertexts) and closes the set; once the
    test's client uploaded, the round is aggregated with
    :func:`trapdoor.protocol.audit.audit_round`
    and its audit package served; when every contributor audited, the round is released
    (no bundle: the fake has no KGC). ``serve`` turns the honest job view into the one it
    sends (a dishonest PS).
    """

    world: JobWorld
    subject_id: str = PS_SUBJECT
    #: What ``/v1/info`` names as this PS's subject id (a lying PS may claim another's).
    claimed_subject: str | None = None
    serve: Callable[[dict[str, Any]], dict[str, Any]] = lambda view: view
    #: Every request received: (method, path, bearer token or None).
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: What each participant's node said about the job (``PUT .../participation``).
    participation: dict[str, Any] = field(default_factory=dict)
    #: Every upload frame received, by round.
    uploads: list[tuple[int, bytes]] = field(default_factory=list)
    #: Whether the world's other participants commit, upload and audit (see above).
    others: bool = True
    #: Changes the audit package served (a dishonest PS).
    serve_audit: Callable[[dict[str, Any]], dict[str, Any]] = lambda package: package
    rounds: dict[int, _FakeRound] = field(default_factory=dict)
    clock: Callable[[], float] = lambda: 1_700_000_000.0

    def _claims(self, token: str | None) -> str:
        try:
            claims = verify_token(
                self.world.kgc_key.public_key(), token, now=self.clock(), audience=self.subject_id
            )
        except TokenError as exc:
            raise ServiceError(401, "invalid-token", str(exc)) from None
        return claims.subject

    def handle(self, method: str, path: str, body: Any, token: str | None) -> Any:
        self.requests.append((method, path, token))
        if method == "GET" and path == "/v1/info":
            return {
                "service": "trapdoor-param-server",
                "subject_id": self.claimed_subject or self.subject_id,
            }
        subject = self._claims(token)
        if subject not in self.world.identities:
            raise ServiceError(403, "not-a-participant", "not a participant of this job")
        if method == "GET" and path == f"/v1/jobs/{self.world.job_id}":
            return self.serve(self.world.view())
        if method == "PUT" and path == f"/v1/jobs/{self.world.job_id}/participation":
            self.participation[subject] = body
            return {"job_id": self.world.job_id, "subject_id": subject, **body, "at": 0.0}
        match = re.fullmatch(
            rf"/v1/jobs/{re.escape(self.world.job_id)}/rounds/(\d+)(/[a-z]+)?(/[^/]+)?", path
        )
        if match is None:
            raise ServiceError(404, "not-found", f"fake PS has no {method} {path}")
        t, action, item = int(match.group(1)), match.group(2) or "", (match.group(3) or "")[1:]
        rnd = self.rounds.setdefault(t, _FakeRound())
        try:
            return self._route(method, action, item, subject, t, rnd, body)
        except ProtocolError as exc:
            raise ServiceError(422, exc.code, exc.message) from None

    def _route(
        self, method: str, action: str, item: str, subject: str, t: int, rnd: _FakeRound, body: Any
    ) -> Any:
        terms = self.world.terms()
        if method == "GET" and action == "":
            attempt = 0 if rnd.audited is not None else None
            return {"round": t, "status": rnd.status, "run": 0, "attempt": attempt}
        if method == "POST" and action == "/commitments":
            verify_commitment(body, terms, round_number=t, subject_id=subject)
            if rnd.closed is not None:
                raise ServiceError(409, "round-not-open", "the commitment set is closed")
            rnd.commitments[subject] = body
            if self.others:
                self.commit_others(t)
            return {"round": t, "subject_id": subject}
        if method == "GET" and action == "/commitments":
            if rnd.closed is None:
                raise ServiceError(409, "set-not-closed", "the commitment set is not closed")
            return {"closed_set": rnd.closed}
        if method == "POST" and action == "/uploads":
            return self._upload(subject, t, rnd, body)
        if method == "POST" and action == "/metrics":
            if not self.world.definition.get("share_metrics", False):
                raise ServiceError(409, "metrics-not-shared", "the job does not share metrics")
            verify_metrics_report(body, terms, round_number=t, subject_id=subject)
            rnd.metric_reports[subject] = body
            return {"job_id": self.world.job_id, "round": t, "run": 0, "subject_id": subject}
        if rnd.audited is None:
            raise ServiceError(409, "not-aggregated", "the round is not aggregated yet")
        if subject not in rnd.audited.contributors:
            raise ServiceError(403, "not-a-contributor", "not a contributor of this attempt")
        if method == "GET" and action == "/audit":
            return self.serve_audit(self._package(t, rnd))
        if method == "GET" and action == "/base":
            return encode_frame(self._base(), {"job_id": self.world.job_id, "round": t})
        if method == "GET" and action == "/uploads" and item in rnd.uploads:
            return encode_frame(rnd.uploads[item], {"job_id": self.world.job_id, "round": t})
        if method == "POST" and action == "/audits":
            audit = verify_audit_statement(body, terms, round_number=t, subject_id=subject)
            if audit.digests != rnd.audited.digests:
                raise ServiceError(422, "audit-mismatch", "the audit names other digests")
            rnd.audits[subject] = body
            return {"round": t, "subject_id": subject, "attempt": 0}
        raise ServiceError(404, "not-found", f"fake PS has no {method} {action}")

    def _base(self) -> EncryptedVector:
        return initial_ciphertext(
            self.world.terms().job_key,
            PackingLayout.from_json(self.world.packing),
            self.world.initial_weights,
        )

    def commit_others(self, t: int, *, skip: Collection[str] = ()) -> None:
        """Every participant not yet committed (but ``skip``) commits to a random
        ciphertext; then the set closes."""
        rnd = self.rounds.setdefault(t, _FakeRound())
        terms = self.world.terms()
        n = int(self.world.params.n)
        for other, identity in self.world.identities.items():
            if other in rnd.commitments or other in skip:
                continue
            vector = trivial_encryption(
                terms.job_key, [self.world.rng.randrange(n) for _ in range(terms.num_plaintexts)]
            )
            rnd.uploads[other] = vector
            rnd.commitments[other] = build_commitment(
                identity.signing_key,
                terms,
                round_number=t,
                subject_id=other,
                payload_sha256=vector_sha256(vector),
            )
        self.close_set(t)

    def close_set(self, t: int) -> dict[str, Any]:
        """Sign and close round ``t``'s commitment set as it stands."""
        rnd = self.rounds.setdefault(t, _FakeRound())
        rnd.closed = build_closed_set(
            self.world.ps_key,
            self.world.terms(),
            round_number=t,
            commitments=list(rnd.commitments.values()),
            closed_at=int(self.clock()),
        )
        return rnd.closed

    def _upload(self, subject: str, t: int, rnd: _FakeRound, data: bytes) -> dict[str, Any]:
        if rnd.closed is None:
            raise ServiceError(409, "set-not-closed", "the commitment set is not closed")
        terms = self.world.terms()
        closed = verify_closed_set(rnd.closed, terms, round_number=t)
        try:
            frame = decode_frame(data)
        except WireError as exc:
            raise ServiceError(400, "bad-frame", str(exc)) from None
        if closed.payloads.get(subject) != frame.header["sha256"]:
            raise ServiceError(422, "upload-mismatch", "not the committed payload")
        rnd.statements[subject] = verify_upload_statement(
            frame.header.get("statement"),
            terms,
            round_number=t,
            subject_id=subject,
            payload_sha256=frame.header["sha256"],
            closed_set_sha256=closed.digest,
        )
        self.uploads.append((t, data))
        rnd.uploads[subject] = frame.vector(terms.job_key)
        if set(rnd.uploads) >= set(closed.payloads):
            n = int(self.world.params.n)
            rnd.blind = [self.world.rng.randrange(n) for _ in range(terms.num_plaintexts)]
            rnd.audited = audit_round(
                terms,
                closed,
                attempt=0,
                base=self._base(),
                uploads={s: rnd.uploads[s] for s in closed.payloads},
                blind=rnd.blind,
            )
            if self.others:  # the others audit at once
                for other in rnd.audited.contributors:
                    if other != subject:
                        rnd.audits[other] = {}
        return build_receipt(
            self.world.ps_key,
            job_id=self.world.job_id,
            round_number=t,
            subject_id=subject,
            sha256=frame.header["sha256"],
            accepted_at=self.clock(),
        )

    def _package(self, t: int, rnd: _FakeRound) -> dict[str, Any]:
        assert rnd.audited is not None and rnd.closed is not None
        return {
            "job_id": self.world.job_id,
            "round": t,
            "run": 0,
            "contributors": list(rnd.audited.contributors),
            "closed_set": rnd.closed,
            "blind": blind_to_text(rnd.blind, int(self.world.params.n)),
            **rnd.audited.digests.fields(),
        }


class FakeNetwork:
    """Routes the client's HTTP calls to fake services by base URL.

    :meth:`service_client` stands in for :class:`trapdoor.service.http.ServiceClient` (same
    constructor and methods); a URL with no service behind it is ``ServiceError(0,
    "unreachable")``, like a refused connection.
    """

    def __init__(self, world: JobWorld | None = None) -> None:
        self.services: dict[str, FakeKgc | FakePs] = {}
        if world is not None:
            self.kgc = FakeKgc(world)
            self.ps = FakePs(world)
            self.services[KGC_URL] = self.kgc
            self.services[PS_URL] = self.ps

    def service_client(self, base_url: str, token: Any = None, **_: Any) -> _FakeServiceClient:
        return _FakeServiceClient(self, base_url.rstrip("/"), token)


class _FakeServiceClient:
    def __init__(self, network: FakeNetwork, base_url: str, token: Any) -> None:
        self.network = network
        self.base_url = base_url
        self._token = token

    def _call(self, method: str, path: str, body: Any, auth: bool) -> Any:
        service = self.network.services.get(self.base_url)
        if service is None:
            raise ServiceError(0, "unreachable", f"{method} {self.base_url}{path}: no service")
        token = None
        if auth and self._token is not None:
            token = self._token() if callable(self._token) else self._token
        return service.handle(method, path, copy.deepcopy(body), token)

    def get_json(self, path: str, *, auth: bool = True, **_: Any) -> Any:
        return self._call("GET", path, None, auth)

    def post_json(self, path: str, body: Any, *, auth: bool = True, **_: Any) -> Any:
        return self._call("POST", path, body, auth)

    def put_json(self, path: str, body: Any, *, auth: bool = True, **_: Any) -> Any:
        return self._call("PUT", path, body, auth)

    def post_bytes(self, path: str, data: bytes, *, auth: bool = True, **_: Any) -> Any:
        return self._call("POST", path, data, auth)

    def get_bytes(self, path: str, *, auth: bool = True, **_: Any) -> bytes:
        data: bytes = self._call("GET", path, None, auth)
        return data
