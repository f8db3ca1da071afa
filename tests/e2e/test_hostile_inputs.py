"""Hostile uploads against the real KGC and parameter server processes.

One :class:`~trapdoor.demo.cluster.LocalCluster` (1024-bit demo parameters) runs for the
module. The test itself plays the four participants over real HTTP with the client library
(:class:`~trapdoor.participant.client.ParticipantClient`): it chooses each update
``Δ_i``, encodes it with the job's public weight and encrypts it under the job key, so the
released model can be checked against ``W_0 + Σ w_i Δ_i``.

Every participant commits to its honest upload when the job starts (the commitment set
closes), so the hostile uploads arrive where real ones would: in the upload phase.
Every refusal is checked three ways: the HTTP status, the JSON error code, and the round
status at the PS (upload count and contributors unchanged: nothing was stored). The tests
share one job and run in file order; the last one completes the round.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from e2e_support import enrol_clients

from trapdoor.crypto.blocks import EncryptedVector, element_bytes
from trapdoor.crypto.encoding import encode_vector
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import b64decode, b64encode, generate_signing_key, issue_token
from trapdoor.crypto.wire import FRAME_MAGIC, decode_frame, encode_frame
from trapdoor.demo.cluster import LocalCluster
from trapdoor.ml.models import MLP
from trapdoor.participant.client import JobView, ParticipantClient, PreparedUpload
from trapdoor.protocol.commitment import ClosedSet
from trapdoor.protocol.common import vector_sha256
from trapdoor.protocol.upload import build_upload_statement
from trapdoor.service.http import ServiceClient, ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

K = 4
QUORUM = 3
NUM_SAMPLES = [100, 200, 300, 400]  # unequal, so the public weights w_i differ
JOB_ID = "hostile-1"
ROUND = 0


@dataclass
class Deployment:
    """The running services, the job, and the participants the test plays."""

    cluster: LocalCluster
    ps_ops: ServiceClient
    clients: list[ParticipantClient]
    job: JobView
    w0: npt.NDArray[np.float64]
    outsider: ParticipantClient  # enrolled at the KGC, not a participant of the job
    #: Each participant's committed ciphertext of ``w_i Δ_i``, and the closed set.
    committed: dict[int, EncryptedVector]
    closed: ClosedSet
    #: Payload SHA-256 -> its encryption randomness (uploads prove knowledge of it).
    randomness: dict[str, list[Any]] = field(default_factory=dict)
    accepted: dict[int, npt.NDArray[np.float64]] = field(default_factory=dict)

    @property
    def ps_url(self) -> str:
        return self.cluster.ps_url

    def as_participant(self, i: int) -> ServiceClient:
        """The PS as participant ``i`` sees it (a fresh KGC token when needed)."""
        return ServiceClient(self.ps_url, partial(self.clients[i].ps_token, self.ps_url))

    def with_token(self, token: str) -> ServiceClient:
        return ServiceClient(self.ps_url, token)

    def round_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.ps_ops.get_json(f"/v1/jobs/{JOB_ID}/rounds/{ROUND}")
        return status

    def delta(self, i: int) -> npt.NDArray[np.float64]:
        """Participant ``i``'s update: small, deterministic, well inside the clip bound."""
        rng = np.random.default_rng(1000 + i)
        return rng.normal(0.0, 0.05, self.job.packing.length)

    def encrypt(self, i: int, plaintexts: int | None = None) -> EncryptedVector:
        """``Enc(w_i Δ_i)`` as the client library encrypts it (fresh randomness)."""
        client = self.clients[i]
        weight = self.job.weights[client.identity.subject_id]
        encoded, _ = encode_vector(
            self.delta(i), self.job.packing, clip_bound=self.job.clip_bound, scale=weight
        )
        vector, randomness = client.encryptor(self.job).encrypt_with_randomness(
            encoded[:plaintexts], client.rng
        )
        self.randomness[vector_sha256(vector)] = randomness
        return vector

    def frame(
        self,
        i: int,
        *,
        round_number: int = ROUND,
        plaintexts: int | None = None,
        fresh: bool = False,
    ) -> bytes:
        """Participant ``i``'s committed upload framed as the client library frames it.

        ``fresh`` (or another shape) encrypts anew: a ciphertext it did not commit to.
        """
        vector = (
            self.encrypt(i, plaintexts) if fresh or plaintexts is not None else self.committed[i]
        )
        return self.clients[i].upload_frame(
            self.job, round_number, vector, self.closed, self.randomness[vector_sha256(vector)]
        )

    def upload(self, i: int, data: bytes) -> dict[str, Any]:
        receipt: dict[str, Any] = self.as_participant(i).post_bytes(_uploads(), data)
        self.accepted[i] = self.delta(i)
        return receipt

    def ensure_uploaded(self, i: int) -> None:
        if i not in self.accepted:
            self.upload(i, self.frame(i))


def _uploads(job_id: str = JOB_ID, round_number: int = ROUND) -> str:
    return f"/v1/jobs/{job_id}/rounds/{round_number}/uploads"


def _reframe(
    header: dict[str, Any],
    payload: bytes,
    *,
    digest: bool = True,
    signer: tuple[ParticipantClient, JobView, ClosedSet] | None = None,
) -> bytes:
    """A frame with this header and payload; ``sha256`` recomputed unless ``digest=False``.

    With ``signer`` the upload statement is signed afresh for the new payload, as a
    malicious participant would: only the check under test then fails.
    """
    head = dict(header)
    if digest:
        head["sha256"] = hashlib.sha256(payload).hexdigest()
    if signer is not None:
        client, job, closed = signer
        head["statement"] = build_upload_statement(
            client.identity.signing_key,
            job.terms,
            round_number=int(head["round"]),
            subject_id=client.identity.subject_id,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            closed_set_sha256=closed.digest,
            # the proof of the original upload: the checks under test come first
            randomness_proof=head["statement"]["statement"]["randomness_proof"],
        )
    raw = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    return struct.pack(">4sBI", FRAME_MAGIC, 1, len(raw)) + raw + payload


def _refused(
    dep: Deployment,
    call: Callable[[], Any],
    status: int | tuple[int, ...],
    code: str,
) -> ServiceError:
    """``call`` fails with ``status`` and ``code``, and the round is exactly as before."""
    before = dep.round_status()
    with pytest.raises(ServiceError) as info:
        call()
    statuses = status if isinstance(status, tuple) else (status,)
    assert info.value.status in statuses, info.value
    assert info.value.code == code, info.value
    after = dep.round_status()
    assert after["uploads"] == before["uploads"]
    assert after["contributors"] == before["contributors"]
    assert after["status"] == before["status"] == "committed"
    return info.value


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir: Path = tmp_path_factory.mktemp("hostile")
    with LocalCluster(workdir) as cluster:
        cluster.start_kgc(1024, demo=True)
        enrolments = [cluster.enrol(f"participant-{i}", "participant") for i in range(K + 1)]
        cluster.start_param_server(wait=False)  # boots while the participants make keys
        clients = enrol_clients(cluster, enrolments)
        assert cluster.param_server is not None
        cluster.wait_ready([cluster.param_server], 120)

        model = MLP([64, 8, 10])
        w0 = model.init_parameters(np.random.default_rng(7))
        ps_ops = cluster.ps_operator(timeout=120)
        ps_ops.post_json(
            "/v1/jobs",
            {
                "job_id": JOB_ID,
                "model": model.spec(),
                "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
                "training": {"learning_rate": 0.1, "local_epochs": 1, "batch_size": 32},
                "participants": [
                    {"subject_id": c.identity.subject_id, "num_samples": n}
                    for c, n in zip(clients[:K], NUM_SAMPLES, strict=True)
                ],
                "quorum": QUORUM,
                "rounds": 1,
                "round_deadline_seconds": 3600,
                "below_quorum_policy": "stay-open",
                "aggregation": "bcp",
                "encoding": {
                    "frac_bits": 20,
                    "slot_bits": 29,
                    "slot_bound": 64.0,
                    "clip_bound": 16.0,
                    "width": 16,
                },
            },
        )
        job = clients[0].fetch_job(cluster.ps_url, JOB_ID)
        for c in clients[1:K]:
            c.fetch_job(cluster.ps_url, JOB_ID)
        deployment = Deployment(cluster, ps_ops, clients[:K], job, w0, clients[K], {}, None)  # type: ignore[arg-type]
        for i, c in enumerate(clients[:K]):  # the last commitment closes the set
            vector = deployment.encrypt(i)
            deployment.committed[i] = vector
            c.commit(job, PreparedUpload(ROUND, vector, vector_sha256(vector), {}))
        deployment.closed = clients[0].closed_set(job, ROUND)
        try:
            yield deployment
        finally:
            for c in clients:
                c.close()


# ---------------------------------------------------------------------- replay


def test_replayed_upload_is_409_and_not_stored(dep: Deployment) -> None:
    frame = dep.frame(0)
    receipt = dep.upload(0, frame)
    assert receipt["receipt"]["subject_id"] == dep.clients[0].identity.subject_id
    assert receipt["receipt"]["sha256"] == decode_frame(frame).header["sha256"]
    assert dep.round_status()["uploads"] == 1

    # the same bytes again, and a fresh encryption by the same participant (which is
    # not what it committed to)
    _refused(
        dep, lambda: dep.as_participant(0).post_bytes(_uploads(), frame), 409, "duplicate-upload"
    )
    _refused(
        dep,
        lambda: dep.as_participant(0).post_bytes(_uploads(), dep.frame(0, fresh=True)),
        422,
        "upload-mismatch",
    )
    # another participant replaying the captured frame: the statement names participant 0
    _refused(
        dep, lambda: dep.as_participant(1).post_bytes(_uploads(), frame), 422, "statement-mismatch"
    )
    # ... or the captured ciphertext under a statement of its own: not its commitment
    parsed = decode_frame(frame)
    own = _reframe(parsed.header, parsed.payload, signer=(dep.clients[1], dep.job, dep.closed))
    _refused(dep, lambda: dep.as_participant(1).post_bytes(_uploads(), own), 422, "upload-mismatch")


# ---------------------------------------------------------------------- credentials


def _flip_signature(token: str) -> str:
    version, body, signature = token.split(".")
    raw = bytearray(b64decode(signature))
    raw[0] ^= 0x01
    return f"{version}.{body}.{b64encode(bytes(raw))}"


def test_forged_expired_and_tampered_tokens_are_401(dep: Deployment) -> None:
    subject = dep.clients[1].identity.subject_id
    frame = dep.frame(1)  # a valid upload: only the credential is wrong
    rogue = generate_signing_key()
    now = dep.clients[1].clock()
    audience = dep.clients[1].ps_subject(dep.ps_url)
    forged = issue_token(
        rogue,
        subject=subject,
        role="participant",
        now=now,
        ttl_seconds=300,
        token_id="f1",
        audience=audience,
    )
    expired = issue_token(
        rogue,
        subject=subject,
        role="participant",
        now=now - 3600,
        ttl_seconds=300,
        token_id="f2",
        audience=audience,
    )
    real = dep.clients[1].ps_token(dep.ps_url)
    tampered = _flip_signature(real)
    version, body, signature = real.split(".")
    claims = json.loads(b64decode(body))
    as_other = (
        f"{version}.{b64encode(json.dumps({**claims, 'sub': 'someone'}).encode())}.{signature}"
    )

    for token in (forged, expired, tampered, as_other, "not-a-token", dep.cluster.ps_admin_token):
        _refused(
            dep,
            partial(dep.with_token(token).post_bytes, _uploads(), frame),
            401,
            "invalid-token",
        )
    _refused(
        dep,
        lambda: dep.as_participant(1).post_bytes(_uploads(), frame, auth=False),
        401,
        "unauthorized",
    )
    # a rejected upload left no trace: the very same bytes are accepted afterwards
    dep.upload(1, frame)
    assert dep.round_status()["contributors"] == sorted(
        c.identity.subject_id for c in dep.clients[:2]
    )


def test_enrolled_non_participant_is_403(dep: Deployment) -> None:
    frame = dep.frame(2)
    outsider = ServiceClient(dep.ps_url, partial(dep.outsider.ps_token, dep.ps_url))
    _refused(dep, lambda: outsider.post_bytes(_uploads(), frame), 403, "not-a-participant")
    _refused(dep, lambda: outsider.get_json(f"/v1/jobs/{JOB_ID}"), 403, "not-a-participant")


# ---------------------------------------------------------------------- malformed frames


def test_malformed_frames_are_400_or_422(dep: Deployment) -> None:
    good = dep.frame(2)
    parsed = decode_frame(good)
    header, payload = parsed.header, parsed.payload
    signer = (dep.clients[2], dep.job, dep.closed)
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0xFF
    cases: dict[str, tuple[bytes, str]] = {
        "garbage": (random.Random(5).randbytes(4096), "malformed-frame"),
        "empty": (b"", "malformed-frame"),
        "bad magic": (b"XXXX" + good[4:], "malformed-frame"),
        "bad version": (good[:4] + b"\x09" + good[5:], "malformed-frame"),
        "header length past the end": (
            good[:5] + struct.pack(">I", len(good)) + good[9:],
            "malformed-frame",
        ),
        "header not JSON": (
            struct.pack(">4sBI", FRAME_MAGIC, 1, 3) + b"{{{" + payload,
            "malformed-frame",
        ),
        "truncated payload": (good[:-10], "malformed-frame"),
        "digest mismatch": (_reframe(header, bytes(flipped), digest=False), "malformed-frame"),
        "truncated, digest fixed": (
            _reframe(header, payload[:-10], signer=signer),
            "invalid-ciphertext",
        ),
        "truncated, statement unchanged": (_reframe(header, payload[:-10]), "statement-mismatch"),
        "wrong element width": (
            _reframe({**header, "element_bytes": 512}, payload),
            "invalid-ciphertext",
        ),
        "wrong key width": (_reframe({**header, "width": 8}, payload), "invalid-ciphertext"),
        "other job in header": (_reframe({**header, "job_id": "other"}, payload), "frame-mismatch"),
        "other round in header": (_reframe({**header, "round": 1}, payload), "frame-mismatch"),
    }
    for name, (data, code) in cases.items():
        error = _refused(
            dep, partial(dep.as_participant(2).post_bytes, _uploads(), data), (400, 422), code
        )
        assert error.status == (400 if code == "malformed-frame" else 422), name
    # the endpoint takes binary frames only
    _refused(
        dep,
        lambda: dep.as_participant(2).post_bytes(
            _uploads(), good, headers={"Content-Type": "application/json"}
        ),
        415,
        "unsupported-media-type",
    )


@pytest.mark.parametrize("bad", ["zero", "N", "N^2", "all ones"])
def test_element_outside_the_group_is_422(dep: Deployment, bad: str) -> None:
    """Only the group check fails: header, layout and digest are all consistent."""
    params = dep.job.job_key.params
    n, n2 = int(params.n), int(params.nsquare)
    width = element_bytes(params)
    value = {"zero": 0, "N": n, "N^2": n2, "all ones": (1 << (8 * width)) - 1}[bad]
    assert width == 256 and value.bit_length() <= 8 * width
    parsed = decode_frame(dep.frame(2))
    payload = value.to_bytes(width, "big") + parsed.payload[width:]
    data = _reframe(parsed.header, payload, signer=(dep.clients[2], dep.job, dep.closed))
    error = _refused(
        dep, lambda: dep.as_participant(2).post_bytes(_uploads(), data), 422, "invalid-ciphertext"
    )
    assert "element 0" in error.message


def test_wrong_shape_is_422(dep: Deployment) -> None:
    num = dep.job.packing.num_plaintexts
    width = element_bytes(dep.job.job_key.params)
    short = dep.frame(2, plaintexts=num - 1)  # a real encryption of one plaintext fewer
    assert decode_frame(short).header["num_plaintexts"] == num - 1
    _refused(dep, lambda: dep.as_participant(2).post_bytes(_uploads(), short), 422, "wrong-shape")

    parsed = decode_frame(dep.frame(2))
    header, payload = parsed.header, parsed.payload
    cases = {
        "claims one plaintext more": (
            _reframe({**header, "num_plaintexts": num + 1}, payload),
            "wrong-shape",
        ),
        "one block element missing": (
            _reframe(
                {**header, "num_elements": header["num_elements"] - 1},
                payload[:-width],
                signer=(dep.clients[2], dep.job, dep.closed),
            ),
            "invalid-ciphertext",
        ),
        "one block element extra": (
            _reframe(
                {**header, "num_elements": header["num_elements"] + 1},
                payload + payload[:width],
                signer=(dep.clients[2], dep.job, dep.closed),
            ),
            "invalid-ciphertext",
        ),
    }
    for name, (data, code) in cases.items():
        error = _refused(
            dep, partial(dep.as_participant(2).post_bytes, _uploads(), data), 422, code
        )
        assert error.code == code, name


def test_wrong_job_is_404_and_wrong_round_is_409(dep: Deployment) -> None:
    other_job = encode_frame(
        decode_frame(dep.frame(2)).vector(dep.job.job_key), {"job_id": "nope", "round": 0}
    )
    _refused(
        dep,
        lambda: dep.as_participant(2).post_bytes(_uploads("nope"), other_job),
        404,
        "job-not-found",
    )
    for t in (1, 5):
        later = dep.frame(2, round_number=t)  # self-consistent frame for a round not open
        _refused(
            dep,
            partial(dep.as_participant(2).post_bytes, _uploads(round_number=t), later),
            409,
            "round-not-open",
        )


# ---------------------------------------------------------------------- quorum and release


def test_below_quorum_releases_nothing_then_contributors_only(dep: Deployment) -> None:
    ps_ops, p = dep.ps_ops, dep.clients
    dep.ensure_uploaded(0)
    dep.ensure_uploaded(1)
    assert dep.round_status()["uploads"] == 2

    close = f"/v1/jobs/{JOB_ID}/rounds/{ROUND}/close"
    _refused(dep, lambda: ps_ops.post_json(close, {}), 409, "below-quorum")
    for i in (0, 3):  # an uploader and a non-uploader: nothing to download yet
        _refused(dep, partial(p[i].download_bundle, dep.ps_url, JOB_ID, ROUND), 409, "not-released")

    dep.ensure_uploaded(2)
    status = dep.round_status()
    assert status["uploads"] == 3 and status["status"] == "committed"  # 3 of 4: still open
    closed = ps_ops.post_json(close, {})
    assert closed["status"] == "closed"  # aggregated: the contributors audit it
    for i in (0, 1, 2):
        p[i].audit(dep.job, ROUND)
    released = p[0].wait_for_release(dep.ps_url, JOB_ID, ROUND, timeout=60, poll_seconds=0.2)
    contributors = sorted(p[i].identity.subject_id for i in (0, 1, 2))
    assert released["contributors"] == contributors

    # the non-contributor is refused the model, and cannot open a contributor's bundle
    with pytest.raises(ServiceError) as info:
        p[3].download_bundle(dep.ps_url, JOB_ID, ROUND)
    assert (info.value.status, info.value.code) == (403, "not-a-contributor")
    bundle = p[0].download_bundle(dep.ps_url, JOB_ID, ROUND)
    with pytest.raises(SealError):
        p[3].open_bundle(dep.job, bundle)

    # each contributor decrypts W_1 = W_0 + Σ w_i Δ_i
    expected = dep.w0 + sum(
        dep.job.weights[p[i].identity.subject_id] * dep.accepted[i] for i in (0, 1, 2)
    )
    for i in (0, 1, 2):
        w1 = p[i].download_model(dep.ps_url, JOB_ID, ROUND)
        assert w1.shape == dep.w0.shape
        np.testing.assert_allclose(w1, expected, rtol=0, atol=1e-5)
    assert float(np.max(np.abs(expected - dep.w0))) > 1e-3  # the updates did move the model

    # the round is over: a late upload is refused and changes nothing
    with pytest.raises(ServiceError) as info:
        dep.as_participant(3).post_bytes(_uploads(), dep.frame(3))
    assert (info.value.status, info.value.code) == (409, "round-not-open")
    assert dep.round_status()["contributors"] == contributors
