"""The HTTP KGC gateway, the PS's enrolment and its CLI, against a stub KGC over HTTP."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from ps_kgc_stub import FlaskSession, StubKgc
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import VectorEncryptor
from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import generate_signing_key, public_key_hex, sign_json
from trapdoor.protocol.bundle import ReleaseBinding
from trapdoor.protocol.job import RequestedTerms, initial_ciphertext_sha256, requested_terms
from trapdoor.ps import cli
from trapdoor.ps.definition import parse_definition
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.identity import enrol, load_identity
from trapdoor.ps.kgc_gateway import (
    HttpKgcGateway,
    KgcError,
    check_job_answer,
    check_release_bundle,
)
from trapdoor.ps.testing import (
    FakeClock,
    FakeKgc,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    open_model,
    play_round,
)
from trapdoor.service.db import make_engine, migrate
from trapdoor.service.http import ServiceClient

KGC_URL = "http://kgc.test"
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def stub(
    params_1024: tuple[PublicParams, MasterKey], participants: list[TestParticipant]
) -> StubKgc:
    fake = FakeKgc(
        params_1024[1],
        rng=random.Random(4),
        participants={p.subject_id: p.public_key for p in participants},
        signing_keys={p.subject_id: public_key_hex(p.signing_key) for p in participants},
        ps_subject_id="ps-1",
    )
    return StubKgc(fake, FakeClock(), subject_id="ps-1", code="one-time-code")


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path}/ps.db"
    migrate("param_server", url)
    engine = make_engine(url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def _client(stub: StubKgc) -> ServiceClient:
    return ServiceClient(KGC_URL, session=FlaskSession(stub.app))


def test_enrol_stores_the_key_sealed(stub: StubKgc, sessions: sessionmaker[Session]) -> None:
    identity = enrol(
        sessions,
        KGC_URL,
        subject_id="ps-1",
        code="one-time-code",
        passphrase=PASSPHRASE,
        clock=stub.clock,
        client=_client(stub),
    )
    assert stub.enrolled_key == public_key_hex(identity.signing_key)
    assert "signing_key" not in repr(identity) and PASSPHRASE not in repr(identity)
    loaded = load_identity(sessions, PASSPHRASE)
    assert loaded is not None and loaded.subject_id == "ps-1"
    assert public_key_hex(loaded.signing_key) == stub.enrolled_key
    with pytest.raises(SealError):
        load_identity(sessions, "wrong passphrase")
    with pytest.raises(KgcError) as err:  # a second completion is refused by the KGC
        enrol(
            sessions,
            KGC_URL,
            subject_id="ps-1",
            code="one-time-code",
            passphrase=PASSPHRASE,
            client=_client(stub),
        )
    assert err.value.status == 409


def test_enrol_refuses_a_certificate_for_another_key(
    stub: StubKgc, sessions: sessionmaker[Session]
) -> None:
    with pytest.raises(KgcError) as err:
        enrol(
            sessions,
            KGC_URL,
            subject_id="ps-1",
            code="wrong",
            passphrase=PASSPHRASE,
            client=_client(stub),
        )
    assert err.value.status == 403
    assert load_identity(sessions, PASSPHRASE) is None


def test_full_round_over_http_with_token_refresh(
    stub: StubKgc, sessions: sessionmaker[Session], participants: list[TestParticipant]
) -> None:
    identity = enrol(
        sessions,
        KGC_URL,
        subject_id="ps-1",
        code="one-time-code",
        passphrase=PASSPHRASE,
        client=_client(stub),
    )
    gateway = HttpKgcGateway(
        KGC_URL, "ps-1", identity.signing_key, clock=stub.clock, session=FlaskSession(stub.app)
    )
    ps = ParameterServer(
        sessions,
        gateway,
        identity.signing_key,
        clock=stub.clock,
        rng=random.Random(1),
        subject_id="ps-1",
    )
    try:
        w0 = np.linspace(-1, 1, 120)
        job = ps.create_job(make_definition("http-job", participants, w0, rounds=1))
        terms = job_terms_of(job, gateway.info(), param_server="ps-1")
        encryptor = VectorEncryptor(job_key_of(job), window=4)
        rng = random.Random(2)
        deltas = {p.subject_id: np.full(120, 0.05 * i) for i, p in enumerate(participants)}
        vectors = [(p, p.encrypt(job, deltas[p.subject_id], encryptor, rng)) for p in participants]
        play_round(ps, terms, 0, vectors)
        stub.revoked_before = stub.clock() + 1  # the cached token is refused: refresh once
        stub.clock.advance(2)
        assert ps.tick().released == [("http-job", 0)]
        assert stub.tokens_issued == 2
        # The PS asked for tokens for the KGC's audience, signed over that audience.
        assert [body["audience"] for body in stub.token_requests] == ["kgc", "kgc"]
        # Its release request carried the closed set, the statements and audits, no receipts.
        header = stub.fake.release_headers[-1]
        assert "receipts" not in header
        assert header["contributors"] == [p.subject_id for p in participants]
        for name, field in (("statements", "statement"), ("audits", "audit")):
            assert [s[field]["subject_id"] for s in header[name]] == header["contributors"]
        expected = w0 + sum(job["weights"][s] * d for s, d in deltas.items())
        for p in participants:
            got = open_model(job, p, ps.download("http-job", 0, p.subject_id))
            assert np.max(np.abs(got - expected)) < 2.0**-18
    finally:
        ps.close()


def _request(
    participants: list[TestParticipant], job_id: str, params: PublicParams
) -> RequestedTerms:
    """The terms a PS would ask the KGC to sign for a small job."""
    n = int(params.n)
    definition = parse_definition(
        make_definition(job_id, participants, np.zeros(20)), n, param_server="ps-1"
    )
    packing = definition.packing(n)
    return requested_terms(
        job_id=job_id,
        definition=definition.normalised,
        packing=packing.to_json(),
        weights=definition.weights,
        width=definition.encoding.width,
        num_plaintexts=packing.num_plaintexts,
        initial_ciphertext_sha256=initial_ciphertext_sha256(
            params, definition.encoding.width, packing, definition.initial_weights
        ),
    )


def test_gateway_checks_what_the_kgc_signs(
    stub: StubKgc, participants: list[TestParticipant]
) -> None:
    key = generate_signing_key()
    stub.enrolled_key = public_key_hex(key)
    stub.fake.ps_verify_key = key.public_key()
    gateway = HttpKgcGateway(KGC_URL, "ps-1", key, clock=stub.clock, session=FlaskSession(stub.app))
    info = gateway.info()

    def check(job_id: str, *, param_server: str = "ps-1") -> Any:
        request = _request(participants, job_id, info.params)
        return check_job_answer(
            gateway.create_job(job_id, request),
            info,
            job_id=job_id,
            requested=request,
            param_server=param_server,
            param_server_key=public_key_hex(key),
        )

    terms, signature = check("good")
    assert terms.param_server == "ps-1" and terms.job_id == "good"
    assert terms.param_server_key == public_key_hex(key)
    assert terms.raw == dict(stub.fake.jobs["good"].terms.raw) and isinstance(signature, str)

    def refused(job_id: str, **kwargs: Any) -> None:
        with pytest.raises(KgcError) as err:
            check(job_id, **kwargs)
        assert (err.value.status, err.value.code) == (502, "bad-kgc-answer"), err.value

    refused("other-ps", param_server="ps-2")  # signed for another server
    stub.sign_jobs_with = generate_signing_key()  # not the KGC's published key
    refused("forged")
    stub.sign_jobs_with = stub.fake.signing_key
    stub.tamper_terms = lambda t: {**t, "quorum": 1}  # re-signed, but not what was asked
    refused("lower-quorum")
    stub.tamper_terms = lambda t: {**t, "weights": {**t["weights"], "p1": 0.5}}
    refused("other-weights")
    stub.tamper_terms = lambda t: {**t, "param_server": "ps-2"}
    refused("renamed")
    other_key = public_key_hex(generate_signing_key())
    stub.tamper_terms = lambda t: {**t, "param_server_key": other_key}  # closed sets by others
    refused("other-key")

    stub.tamper_terms = lambda t: t
    request = _request(participants, "ghosts", info.params)
    ghostly = replace(request, participants=("p1", "ghost"), weights={"p1": 0.5, "ghost": 0.5})
    with pytest.raises(KgcError) as err:
        gateway.create_job("ghosts", ghostly)
    assert (err.value.status, err.value.code) == (422, "unknown-participant")
    assert not err.value.retryable
    with pytest.raises(KgcError) as err:
        gateway.create_job("mislabelled", request)  # terms name job "ghosts"
    assert (err.value.status, err.value.code) == (422, "job-mismatch")

    binding = ReleaseBinding("j", 0, 1, "0" * 64, "1" * 64, "2" * 64)
    bundle: dict[str, Any] = {
        **binding.fields(),
        "num_plaintexts": 1,
        "sealed_model": {},
        "wrapped_keys": {"p1": {}},
    }
    signed = {**bundle, "kgc_signature": sign_json(stub.fake.signing_key, bundle)}
    expected = {"binding": binding, "contributors": ["p1"], "num_plaintexts": 1}
    assert check_release_bundle(signed, info, **expected) == signed
    forged = {**bundle, "kgc_signature": "AAAA"}
    other_attempt = {**bundle, "attempt": 0}  # sealed to another attempt: would not open
    other_attempt["kgc_signature"] = sign_json(stub.fake.signing_key, other_attempt)
    for answer in (forged, other_attempt):
        with pytest.raises(KgcError) as err:
            check_release_bundle(answer, info, **expected)
        assert err.value.code == "bad-kgc-answer"


def test_unreachable_kgc_is_retryable() -> None:
    gateway = HttpKgcGateway("http://127.0.0.1:9", "ps-1", generate_signing_key(), timeout=2)
    with pytest.raises(KgcError) as err:
        gateway.info()
    assert err.value.status == 0 and err.value.retryable


def test_cli_enrols_on_first_start_then_reuses_the_identity(
    stub: StubKgc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    routed = FlaskSession(stub.app)
    monkeypatch.setattr(requests.Session, "request", lambda self, *a, **k: routed.request(*a, **k))

    class NoServer:
        server_port = 4321

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    monkeypatch.setattr("werkzeug.serving.make_server", lambda *args, **kwargs: NoServer())
    db = f"sqlite:///{tmp_path}/sub/ps.db"
    args = ["serve", "--db", db, "--kgc", KGC_URL, "--port", "0"]

    monkeypatch.delenv(cli.PASSPHRASE_ENV, raising=False)
    assert cli.main(args) == 2
    monkeypatch.setenv(cli.PASSPHRASE_ENV, PASSPHRASE)
    assert cli.main(args) == 2  # not enrolled and no enrolment code
    assert cli.main([*args, "--host", "0.0.0.0"]) == 2  # loopback only
    assert cli.main([*args, "--enrol-subject", "ps-1", "--enrol-code", "one-time-code"]) == 0
    out = capsys.readouterr().out
    assert "enrolled with the KGC as ps-1" in out
    assert "parameter server listening on http://127.0.0.1:4321" in out
    assert cli.main(args) == 0  # second start: the sealed identity is reused
    assert "listening" in capsys.readouterr().out
    monkeypatch.setenv(cli.PASSPHRASE_ENV, "wrong")
    assert cli.main(args) == 2
