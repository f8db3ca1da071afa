"""Hostile uploads to a *masked* job, against the real KGC and parameter server processes.

One :class:`~trapdoor.demo.cluster.LocalCluster` (1024-bit demo parameters) runs for the
module, with a masked job of four participants (unequal weights). The test plays them over
real HTTP: it chooses each update ``Δ_i`` and builds each upload with the pure functions of
:mod:`trapdoor.protocol.upload` (fresh seed, ``Enc(s)`` under the job key, ChaCha20 mask,
signed statement, ring frame), so the released model can be checked against
``W_0 + Σ w_i Δ_i``.

Every refusal is checked three ways: the HTTP status, the JSON error code, and the round
at the PS (upload count, contributors and phase unchanged: nothing was stored). The tests
share one job and run in file order; the last one completes the round.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from e2e_support import enrol_clients

from trapdoor.crypto.masking import derive_mask, draw_seed, encrypt_seed, mask_vector, seed_to_int
from trapdoor.crypto.masking import vector_to_bytes as ring_bytes
from trapdoor.crypto.signing import b64encode, generate_signing_key, issue_token
from trapdoor.crypto.wire import FRAME_MAGIC, encode_frame, encode_ring_frame, to_hex
from trapdoor.demo.cluster import LocalCluster
from trapdoor.ml.models import MLP
from trapdoor.participant.client import JobView, ParticipantClient
from trapdoor.protocol.upload import (
    build_masked_upload_statement,
    encode_update,
    mask_context,
    seed_sha256,
    seed_to_obj,
)
from trapdoor.service.http import ServiceClient, ServiceError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

K = 4
QUORUM = 3
NUM_SAMPLES = [100, 200, 300, 400]
JOB_ID = "hostile-masked-1"
ROUND = 0
FRAC_BITS = 20


@dataclass
class Deployment:
    cluster: LocalCluster
    ps_ops: ServiceClient
    clients: list[ParticipantClient]
    job: JobView
    w0: npt.NDArray[np.float64]
    outsider: ParticipantClient  # enrolled at the KGC, not a participant of the job

    @property
    def ps_url(self) -> str:
        return self.cluster.ps_url

    def as_participant(self, i: int) -> ServiceClient:
        return ServiceClient(self.ps_url, partial(self.clients[i].ps_token, self.ps_url))

    def round_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.ps_ops.get_json(f"/v1/jobs/{JOB_ID}/rounds/{ROUND}")
        return status

    def delta(self, i: int) -> npt.NDArray[np.float64]:
        return np.random.default_rng(1000 + i).normal(0.0, 0.05, self.job.masked_layout.length)

    def header_and_payload(
        self, i: int, *, seed_obj: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """Participant ``i``'s honest upload as header fields and ``y`` bytes."""
        client, job = self.clients[i], self.job
        layout = job.masked_layout
        me = client.identity.subject_id
        encoded, _ = encode_update(self.delta(i), layout, job.weights[me])
        seed = draw_seed()
        context = mask_context(job.terms, layout, round_number=ROUND, run=0, signer=me)
        n = int(job.job_key.params.n)
        y = mask_vector(encoded, derive_mask(seed_to_int(seed), n, context, layout.ring))
        if seed_obj is None:
            seed_obj = seed_to_obj(encrypt_seed(job.job_key.component(0), seed, client.rng))
        payload = ring_bytes(y, layout.ring)
        return {"job_id": JOB_ID, "round": ROUND, "seed": seed_obj}, payload

    def frame(self, i: int, **changes: Any) -> bytes:
        header, payload = self.header_and_payload(i)
        return self.reframe(i, {**header, **changes}, payload)

    def reframe(
        self, i: int, header: dict[str, Any], payload: bytes, *, bits: int | None = None
    ) -> bytes:
        """A ring frame signed by participant ``i`` for exactly this payload and seed."""
        layout = self.job.masked_layout
        statement = build_masked_upload_statement(
            self.clients[i].identity.signing_key,
            self.job.terms,
            round_number=ROUND,
            subject_id=self.clients[i].identity.subject_id,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            seed_sha256=seed_sha256(header["seed"]),
        )
        if bits is None:
            return encode_ring_frame(
                payload,
                bits=layout.ring.bits,
                num_elements=layout.length,
                extra_header={**header, "statement": statement},
            )
        head = {
            **header,
            "statement": statement,
            "kind": "ring-vector",
            "bits": bits,
            "num_elements": layout.length,
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        raw = json.dumps(head, sort_keys=True).encode()
        return struct.pack(">4sBI", FRAME_MAGIC, 1, len(raw)) + raw + payload


def _uploads(job_id: str = JOB_ID, round_number: int = ROUND) -> str:
    return f"/v1/jobs/{job_id}/rounds/{round_number}/uploads"


def _refused(
    dep: Deployment, call: Callable[[], Any], status: int, code: str, phase: str = "open"
) -> None:
    """``call`` fails with ``status`` and ``code``, and the round is exactly as before."""
    before = dep.round_status()
    with pytest.raises(ServiceError) as info:
        call()
    assert (info.value.status, info.value.code) == (status, code), info.value
    after = dep.round_status()
    assert (after["uploads"], after["contributors"]) == (before["uploads"], before["contributors"])
    assert after["status"] == before["status"] == phase


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir: Path = tmp_path_factory.mktemp("hostile-masked")
    with LocalCluster(workdir) as cluster:
        cluster.start_kgc(1024, demo=True)
        enrolments = [cluster.enrol(f"participant-{i}", "participant") for i in range(K + 1)]
        cluster.start_param_server()
        clients = enrol_clients(cluster, enrolments)
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
                "encoding": {"frac_bits": FRAC_BITS},
            },
        )
        job = clients[0].fetch_job(cluster.ps_url, JOB_ID)
        assert job.aggregation == "masked"
        for c in clients[1:K]:
            c.fetch_job(cluster.ps_url, JOB_ID)
        try:
            yield Deployment(cluster, ps_ops, clients[:K], job, np.asarray(w0), clients[K])
        finally:
            for c in clients:
                c.close()


def test_malformed_frames_are_400(dep: Deployment) -> None:
    ps = dep.as_participant(0)
    good = dep.frame(0)
    cases = {
        "not a frame": b"hello, parameter server",
        "truncated": good[: len(good) // 2],
        "payload digest": good[:-1] + bytes([good[-1] ^ 1]),
    }
    for data in cases.values():
        _refused(dep, lambda d=data: ps.post_bytes(_uploads(), d), 400, "malformed-frame")
    header, _ = dep.header_and_payload(0)
    bcp_frame = encode_frame(_any_vector(dep), header)
    _refused(dep, lambda: ps.post_bytes(_uploads(), bcp_frame), 400, "malformed-frame")


def _any_vector(dep: Deployment) -> Any:
    """A well-formed bcp vector under the masked job's key (a frame of the other mode)."""
    return dep.clients[0].encryptor(dep.job).encrypt_with_randomness([1], dep.clients[0].rng)[0]


def test_wrong_shape_round_or_seed_is_422(dep: Deployment) -> None:
    ps = dep.as_participant(1)
    header, payload = dep.header_and_payload(1)
    n2 = int(dep.job.job_key.params.nsquare)
    n = int(dep.job.job_key.params.n)
    bits = dep.job.masked_layout.ring.bits
    cases = [
        (dep.reframe(1, header, payload[:-4], bits=bits), "wrong-shape"),  # one short
        (dep.reframe(1, header, payload + payload[:4], bits=bits), "wrong-shape"),
        (dep.reframe(1, header, payload, bits=64), "wrong-shape"),
        (dep.reframe(1, {**header, "round": 7}, payload), "frame-mismatch"),
        (dep.reframe(1, {**header, "seed": {"A": "0", "B": "1"}}, payload), "bad-seed"),
        (dep.reframe(1, {**header, "seed": {"A": to_hex(n2), "B": "1"}}, payload), "bad-seed"),
        (dep.reframe(1, {**header, "seed": {"A": to_hex(n), "B": "1"}}, payload), "bad-seed"),
        (dep.reframe(1, {**header, "seed": {"A": "0x1", "B": "1"}}, payload), "bad-seed"),
    ]
    for data, code in cases:
        _refused(dep, lambda d=data: ps.post_bytes(_uploads(), d), 422, code)


def test_statements_that_do_not_match_are_refused(dep: Deployment) -> None:
    ps = dep.as_participant(2)
    header, payload = dep.header_and_payload(2)
    other = dep.reframe(3, header, payload)  # participant 3's statement, sent by 2
    _refused(dep, lambda: ps.post_bytes(_uploads(), other), 403, "statement-mismatch")
    signed = json.loads(other[9 : 9 + struct.unpack(">I", other[5:9])[0]])
    forged = dict(signed)
    forged["statement"] = {
        **signed["statement"],
        "statement": {
            **signed["statement"]["statement"],
            "subject_id": dep.clients[2].identity.subject_id,
        },
    }
    raw = json.dumps(forged, sort_keys=True).encode()
    forged_frame = struct.pack(">4sBI", FRAME_MAGIC, 1, len(raw)) + raw + payload
    _refused(dep, lambda: ps.post_bytes(_uploads(), forged_frame), 403, "bad-statement-signature")
    honest = dep.reframe(2, header, payload)
    signed_head = json.loads(honest[9 : 9 + struct.unpack(">I", honest[5:9])[0]])
    other_payload = bytes([payload[0] ^ 1]) + payload[1:]  # the statement names the original
    head = {**signed_head, "sha256": hashlib.sha256(other_payload).hexdigest()}
    raw = json.dumps(head, sort_keys=True).encode()
    swapped = struct.pack(">4sBI", FRAME_MAGIC, 1, len(raw)) + raw + other_payload
    _refused(dep, lambda: ps.post_bytes(_uploads(), swapped), 422, "statement-mismatch")


def test_tokens_outsiders_and_wrong_jobs_are_refused(dep: Deployment) -> None:
    frame = dep.frame(0)
    forged = issue_token(
        generate_signing_key(),
        subject=dep.clients[0].identity.subject_id,
        role="participant",
        now=dep.clients[0].clock(),
        ttl_seconds=300,
        token_id="m1",
        audience=dep.clients[0].ps_subject(dep.ps_url),
    )
    with_forged = ServiceClient(dep.ps_url, forged)
    _refused(dep, lambda: with_forged.post_bytes(_uploads(), frame), 401, "invalid-token")
    anonymous = dep.as_participant(0)
    _refused(dep, lambda: anonymous.post_bytes(_uploads(), frame, auth=False), 401, "unauthorized")
    outsider = ServiceClient(dep.ps_url, partial(dep.outsider.ps_token, dep.ps_url))
    _refused(dep, lambda: outsider.post_bytes(_uploads(), frame), 403, "not-a-participant")
    ps = dep.as_participant(0)
    _refused(dep, lambda: ps.post_bytes(_uploads("no-such-job"), frame), 404, "job-not-found")
    _refused(dep, lambda: ps.post_bytes(_uploads(round_number=1), frame), 409, "round-not-open")
    huge = b"TDFL" + bytes(2 * dep.job.masked_layout.payload_bytes + 2**17)
    _refused(dep, lambda: ps.post_bytes(_uploads(), huge), 413, "too-large")


def test_replays_are_409_then_the_round_releases_to_contributors_only(dep: Deployment) -> None:
    uploaded = [0, 1, 2]
    frames = {i: dep.frame(i) for i in uploaded}
    for i in uploaded:
        dep.as_participant(i).post_bytes(_uploads(), frames[i])
    ps = dep.as_participant(0)
    _refused(dep, lambda: ps.post_bytes(_uploads(), frames[0]), 409, "duplicate-upload")
    header, payload = dep.header_and_payload(3)
    first_seed = json.loads(frames[1][9 : 9 + struct.unpack(">I", frames[1][5:9])[0]])["seed"]
    copied_seed = dep.reframe(3, {**header, "seed": first_seed}, payload)
    three = dep.as_participant(3)
    _refused(dep, lambda: three.post_bytes(_uploads(), copied_seed), 409, "replayed-payload")
    dep.ps_ops.post_json(f"/v1/jobs/{JOB_ID}/rounds/{ROUND}/close", {})
    dep.clients[0].wait_for_release(dep.ps_url, JOB_ID, ROUND, timeout=120)
    models = [dep.clients[i].download_model(dep.ps_url, JOB_ID, ROUND, dep.w0) for i in uploaded]
    for m in models[1:]:
        np.testing.assert_array_equal(m, models[0])
    weights = dep.job.weights
    expected = dep.w0 + sum(
        weights[dep.clients[i].identity.subject_id] * dep.delta(i) for i in uploaded
    )
    np.testing.assert_allclose(models[0], expected, rtol=0, atol=(K + 1) * 2.0**-FRAC_BITS)
    with pytest.raises(ServiceError) as refused:
        dep.clients[3].download_bundle(dep.ps_url, JOB_ID, ROUND)
    assert refused.value.status == 403
