"""A masked job's release through the HTTP KGC gateway, and the PS's bundle checks.

The stub KGC (:mod:`ps_kgc_stub`) answers a JSON release request with the fake KGC's
masked release; the gateway must send the stored JSON body as ``application/json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import jsonify, request
from ps_kgc_stub import FlaskSession, StubKgc
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.signing import generate_signing_key, public_key_hex
from trapdoor.protocol.bundle import MaskedReleaseBinding
from trapdoor.protocol.job import MaskedLayout
from trapdoor.ps.domain import ParameterServer
from trapdoor.ps.identity import enrol
from trapdoor.ps.kgc_gateway import HttpKgcGateway, KgcError, check_masked_release_bundle
from trapdoor.ps.testing import (
    FakeClock,
    FakeKgc,
    TestParticipant,
    job_terms_of,
    make_definition,
    make_world,
    masked_upload_frame,
    open_masked_model,
)
from trapdoor.service.db import make_engine, migrate
from trapdoor.service.http import ServiceClient

KGC_URL = "http://kgc.test"
LENGTH = 30


def test_a_masked_release_goes_to_the_kgc_as_json(
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
    tmp_path: Path,
) -> None:
    fake = FakeKgc(
        params_1024[1],
        rng=random.Random(4),
        participants={p.subject_id: p.public_key for p in participants},
        signing_keys={p.subject_id: public_key_hex(p.signing_key) for p in participants},
        ps_subject_id="ps-1",
    )
    stub = StubKgc(fake, FakeClock(), subject_id="ps-1", code="one-time-code")
    bodies: list[tuple[str, bytes]] = []

    def releases(job_id: str) -> Any:
        bodies.append((request.mimetype, request.get_data()))
        if request.mimetype == "application/json":
            return jsonify(fake.release_masked(request.get_data())), 201
        return jsonify(fake.release(request.get_data())), 201

    stub.app.view_functions["releases"] = releases
    url = f"sqlite:///{tmp_path}/ps.db"
    migrate("param_server", url)
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    identity = enrol(
        sessions,
        KGC_URL,
        subject_id="ps-1",
        code="one-time-code",
        passphrase="passphrase",
        client=ServiceClient(KGC_URL, session=FlaskSession(stub.app)),
    )
    gateway = HttpKgcGateway(
        KGC_URL, "ps-1", identity.signing_key, clock=stub.clock, session=FlaskSession(stub.app)
    )
    ps = ParameterServer(
        sessions, gateway, identity.signing_key, clock=stub.clock, subject_id="ps-1"
    )
    try:
        w0 = np.linspace(-0.5, 0.5, LENGTH)
        members = participants[:3]
        job = ps.create_job(
            make_definition(
                "http-masked",
                members,
                w0,
                rounds=1,
                aggregation="masked",
                encoding={"model_bound": 8.0},
            )
        )
        terms = job_terms_of(job, gateway.info(), param_server="ps-1")
        layout = MaskedLayout.from_json(job["packing"])
        deltas = {p.subject_id: np.full(LENGTH, 0.1 * (i + 1)) for i, p in enumerate(members)}
        rng = random.Random(6)
        for p in members:
            frame = masked_upload_frame(terms, layout, p, 0, deltas[p.subject_id], rng=rng)
            ps.accept_upload("http-masked", 0, p.subject_id, frame)
        assert ps.tick().released == [("http-masked", 0)]
        assert [mimetype for mimetype, _ in bodies] == ["application/json"]
        assert json.loads(bodies[0][1])["aggregation"] == "masked"
        expected = w0 + sum(job["weights"][s] * d for s, d in deltas.items())
        for p in members:
            got = open_masked_model(
                gateway.info().verify_key,
                layout,
                p,
                ps.download("http-masked", 0, p.subject_id),
                lambda s, p=p: ps.upload_frame("http-masked", 0, s, p.subject_id),
                w0,
            )
            assert np.max(np.abs(got - expected)) < 1e-5
    finally:
        ps.close()
        engine.dispose()


def test_the_ps_stores_only_a_bundle_the_kgc_signed_for_the_round(
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
    tmp_path: Path,
) -> None:
    world = make_world(params_1024[1], participants, f"sqlite:///{tmp_path}/ps.db")
    try:
        members = participants[:3]
        w0 = np.zeros(LENGTH)
        job = world.ps.create_job(
            make_definition("m", members, w0, rounds=1, aggregation="masked", encoding={})
        )
        terms = job_terms_of(job, world.kgc.info())
        layout = MaskedLayout.from_json(job["packing"])
        for p in members:
            frame = masked_upload_frame(terms, layout, p, 0, np.full(LENGTH, 0.1))
            world.ps.accept_upload("m", 0, p.subject_id, frame)
        assert world.ps.tick().released == [("m", 0)]
        bundle = world.kgc.jobs["m"].releases[(0, 0)].bundle
        binding = MaskedReleaseBinding.from_fields(bundle)
        info = world.kgc.info()
        assert check_masked_release_bundle(bundle, info, binding=binding) is bundle
        other = generate_signing_key()
        tampered: list[Any] = [
            "not a bundle",
            {**bundle, "round": 1},
            {**bundle, "uploads": {**bundle["uploads"], "p1": "0" * 64}},
            {**bundle, "wrapped_keys": {"p1": bundle["wrapped_keys"]["p1"]}},
            {**bundle, "wrapped_keys_sha256": {**bundle["wrapped_keys_sha256"], "p1": "0" * 64}},
            {**bundle, "sealed_mask": {**bundle["sealed_mask"], "ct": "AAAA"}},
            {k: v for k, v in bundle.items() if k != "sealed_mask"},
            {**bundle, "release_signature": "A" * 86},
        ]
        for candidate in tampered:
            with pytest.raises(KgcError) as err:
                check_masked_release_bundle(candidate, info, binding=binding)
            assert (err.value.status, err.value.code) == (502, "bad-kgc-answer")
        with pytest.raises(KgcError):
            check_masked_release_bundle(
                bundle, type(info)(info.params, other.public_key()), binding=binding
            )
    finally:
        world.close()
