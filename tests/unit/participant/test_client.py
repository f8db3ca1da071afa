"""The participant client library without HTTP: identity at rest, tokens, the upload path."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from common.bcp import MasterKey, PublicParams
from common.blocks import BlockLayout, decrypt_vector, generate_job_key
from common.encoding import PackingLayout, decode_vector
from common.sealing import SealError
from common.signing import b64encode, public_key_from_hex, verify_json
from common.wire import decode_frame, to_obj
from participant.client import Identity, JobView, ParticipantClient, decode_weights
from participant.models import MLP
from participant.training import TrainingConfig, local_fit, participant_rng


def _identity(params: PublicParams, rng: random.Random, subject: str = "alice") -> Identity:
    return Identity.generate(subject, params, rng)


def test_identity_sealing_round_trip(
    params_1024: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    identity = _identity(params_1024[0], rng)
    identity.certificate = {"subject_id": "alice", "role": "participant"}
    identity.kgc_url = "http://kgc"
    sealed = identity.to_sealed("correct horse")
    assert "alice" not in str(sealed)  # nothing readable at rest
    opened = Identity.from_sealed(sealed, "correct horse")
    assert opened.subject_id == "alice"
    assert opened.secret_key == identity.secret_key
    assert opened.signing_key_hex == identity.signing_key_hex
    assert opened.certificate == identity.certificate
    assert opened.kgc_url == "http://kgc"
    with pytest.raises(SealError):
        Identity.from_sealed(sealed, "wrong")
    assert "a=" not in repr(opened)


def test_token_is_signed_challenge_and_cached(
    params_1024: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    identity = _identity(params_1024[0], rng)
    now = [1_700_000_000.0]
    client = ParticipantClient(identity, "http://kgc", rng=rng, clock=lambda: now[0])
    sent: list[dict[str, Any]] = []

    def post_json(path: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        assert path == "/v1/tokens"
        sent.append(body)
        return {"token": f"tok{len(sent)}", "expires_at": now[0] + 300}

    client._kgc.post_json = post_json  # type: ignore[method-assign]
    assert client.token() == "tok1"
    assert client.token() == "tok1"  # cached
    body = sent[0]
    challenge = {
        "purpose": "token",
        "subject_id": "alice",
        "timestamp": body["timestamp"],
        "nonce": body["nonce"],
    }
    verify_json(public_key_from_hex(identity.signing_key_hex), challenge, body["signature"])
    now[0] += 290  # within the renewal margin
    assert client.token() == "tok2"
    assert sent[1]["nonce"] != sent[0]["nonce"]


def _job_view(params: PublicParams, rng: random.Random, subjects: list[str]) -> dict[str, Any]:
    model = MLP([8, 5, 3])
    w0 = model.init_parameters(np.random.default_rng(1))
    job_key = generate_job_key(params, 4, rng)
    packing = PackingLayout(modulus=params.n, length=model.num_parameters)
    counts = [30, 50, 20]
    return {
        "job_id": "unit-1",
        "definition": {
            "job_id": "unit-1",
            "model": model.spec(),
            "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
            "training": {"learning_rate": 0.5, "local_epochs": 2, "batch_size": 8, "seed": 7},
            "participants": [
                {"subject_id": s, "num_samples": n} for s, n in zip(subjects, counts, strict=True)
            ],
            "quorum": 2,
            "rounds": 3,
            "encoding": {"clip_bound": 16.0},
        },
        "job_key": to_obj(job_key),
        "packing": packing.to_json(),
        "weights": {s: n / sum(counts) for s, n in zip(subjects, counts, strict=True)},
        "current_round": 0,
        "rounds_total": 3,
        "status": "running",
    }


def test_upload_frame_decodes_to_weighted_update(
    params_1024: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, master = params_1024
    subjects = ["p0", "bob", "p2"]
    raw = _job_view(params, rng, subjects)
    job = JobView.parse("http://ps", raw)
    identity = _identity(params, rng, "bob")
    client = ParticipantClient(identity, "http://kgc", rng=rng)
    uploads: list[tuple[str, bytes]] = []

    class FakePs:
        def post_bytes(self, path: str, data: bytes) -> dict[str, Any]:
            uploads.append((path, data))
            return {"receipt": {"subject_id": "bob"}, "signature": "sig"}

    client._ps = lambda _url: FakePs()  # type: ignore[assignment,method-assign,return-value]
    data_rng = np.random.default_rng(3)
    X = data_rng.random((40, 8))
    y = data_rng.integers(0, 3, 40)
    w0 = decode_weights(raw["definition"]["initial_weights"])

    receipt, metrics = client.train_and_upload(job, 1, w0, X, y)

    assert receipt["receipt"]["subject_id"] == "bob"
    path, frame = uploads[0]
    assert path == "/v1/jobs/unit-1/rounds/1/uploads"
    parsed = decode_frame(frame)
    assert parsed.header["job_id"] == "unit-1" and parsed.header["round"] == 1
    decoded = decode_vector(decrypt_vector(master, parsed.vector(job.job_key)), job.packing)
    config = TrainingConfig(learning_rate=0.5, local_epochs=2, batch_size=8)
    expected = local_fit(job.model, w0, X, y, config, participant_rng(7, 1, 1)).update
    w_i = raw["weights"]["bob"]
    assert np.max(np.abs(decoded - w_i * expected)) <= 2.0**-18
    assert metrics["bytes_up"] == len(frame)
    assert metrics["clip"]["clipped"] == 0
    timings = metrics["timings"]
    assert {"train_s", "encode_s", "masks_s", "encrypt_s", "upload_s"} <= set(timings)
    assert timings["masks_wait_s"] <= timings["encrypt_s"]
    client.close()


def test_masks_for_the_next_round_are_prepared_and_never_reused(
    params_1024: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    """After an upload the next round's masks are computed in the background, once."""
    params, master = params_1024
    raw = _job_view(params, rng, ["p0", "bob", "p2"])
    job = JobView.parse("http://ps", raw)
    assert job.rounds_total > 2
    client = ParticipantClient(_identity(params, rng, "bob"), "http://kgc", rng=rng)
    frames: list[bytes] = []

    class FakePs:
        def post_bytes(self, path: str, data: bytes) -> dict[str, Any]:
            frames.append(data)
            return {"receipt": {"subject_id": "bob"}, "signature": "sig"}

    client._ps = lambda _url: FakePs()  # type: ignore[assignment,method-assign,return-value]
    X, y = np.ones((6, 8)), np.array([0, 1, 2, 0, 1, 2])
    w0 = decode_weights(raw["definition"]["initial_weights"])
    client.train_and_upload(job, 0, w0, X, y)
    pending = client._masks[job.job_id]
    masks, _ = pending.result()
    assert not masks.used and masks._zero is not None
    prepared_a = [masks._zero.elements[i] for i in range(len(masks._zero.elements))]
    client.train_and_upload(job, 1, w0, X, y)
    assert masks.used  # round 1 used exactly the masks prepared after round 0
    a_offsets = [offset for offset, _ in job_layout(job).block_offsets()]
    first, second = (decode_frame(f).vector(job.job_key) for f in frames)
    assert all(first.elements[i] != second.elements[i] for i in a_offsets)  # fresh g^r
    assert [second.elements[i] for i in a_offsets] == [prepared_a[i] for i in a_offsets]
    assert len(decrypt_vector(master, second)) == job.packing.num_plaintexts
    client.train_and_upload(job, job.rounds_total - 1, w0, X, y)
    assert job.job_id not in client._masks  # no round after the last one
    client.close()
    assert client._mask_thread is None and not client._encryptors


def job_layout(job: JobView) -> BlockLayout:
    return BlockLayout(job.packing.num_plaintexts, job.job_key.width)


def test_not_a_participant_is_refused(
    params_1024: tuple[PublicParams, MasterKey], rng: random.Random
) -> None:
    params, _ = params_1024
    job = JobView.parse("http://ps", _job_view(params, rng, ["a", "b", "c"]))
    client = ParticipantClient(_identity(params, rng, "mallory"), "http://kgc", rng=rng)
    with pytest.raises(RuntimeError, match="not a participant"):
        client.train_and_upload(job, 0, job.initial_weights, np.zeros((2, 8)), np.zeros(2, int))
