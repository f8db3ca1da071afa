"""The app's background worker and its environment configuration."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import VectorEncryptor
from trapdoor.crypto.signing import generate_signing_key, public_key_hex
from trapdoor.ps.app import config_from_env, create_app
from trapdoor.ps.testing import (
    PS_SUBJECT_ID,
    FakeClock,
    FakeKgc,
    HttpPs,
    TestParticipant,
    job_key_of,
    job_terms_of,
    make_definition,
    play_round,
)


def test_background_worker_releases_a_completed_round(
    params_1024: tuple[PublicParams, MasterKey],
    participants: list[TestParticipant],
    tmp_path: Path,
) -> None:
    ps_key = generate_signing_key()
    kgc = FakeKgc(
        params_1024[1],
        participants={p.subject_id: p.public_key for p in participants},
        signing_keys={p.subject_id: public_key_hex(p.signing_key) for p in participants},
        ps_verify_key=ps_key.public_key(),
    )
    clock = FakeClock()
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/ps.db",
            "ADMIN_TOKEN": "admin",
            "GATEWAY": kgc,
            "SIGNING_KEY": ps_key,
            "SUBJECT_ID": PS_SUBJECT_ID,
            "CLOCK": clock,
            "RNG": random.Random(1),
            "BACKGROUND": True,
            "TICK_SECONDS": 30.0,  # only a wake-up can release within the test
        }
    )
    client = app.test_client()
    try:
        job = client.post(
            "/v1/jobs",
            json=make_definition("bg", participants, np.zeros(50), rounds=1),
            headers={"Authorization": "Bearer admin"},
        ).get_json()
        terms = job_terms_of(job, kgc.info())
        encryptor = VectorEncryptor(job_key_of(job), window=4)
        by_id = {p.subject_id: p for p in participants}

        def auth(subject: str | None) -> dict[str, str]:
            token = "admin" if subject is None else by_id[subject].token(kgc, clock.now)
            return {"Authorization": f"Bearer {token}"}

        port = HttpPs(client, auth)
        rng = random.Random(2)
        # The last audit wakes the worker: nothing else releases within the test.
        play_round(
            port, terms, 0, [(p, p.encrypt(job, np.ones(50), encryptor, rng)) for p in participants]
        )
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            status = client.get("/v1/jobs/bg", headers={"Authorization": "Bearer admin"})
            if status.get_json()["status"] == "finished":
                break
            time.sleep(0.05)
        assert status is not None and status.get_json()["status"] == "finished"
    finally:
        app.extensions["param_server_ticker"].stop()
        app.extensions["param_server"].close()


def test_config_from_env() -> None:
    config = config_from_env(
        {
            "TRAPDOOR_PS_DATABASE_URL": "postgresql+psycopg://ps@db/ps",
            "TRAPDOOR_PS_ADMIN_TOKEN": "t",
            "TRAPDOOR_PS_KGC_URL": "http://kgc",
            "TRAPDOOR_PS_PASSPHRASE": "p",
            "TRAPDOOR_PS_BACKGROUND": "0",
            "TRAPDOOR_PS_MAX_CONTENT_LENGTH": "1024",
        }
    )
    assert config["DATABASE_URL"] == "postgresql+psycopg://ps@db/ps"
    assert config["ADMIN_TOKEN"] == "t" and config["KGC_URL"] == "http://kgc"
    assert config["PASSPHRASE"] == "p"
    assert config["BACKGROUND"] is False and config["MAX_CONTENT_LENGTH"] == 1024
    assert config_from_env({})["BACKGROUND"] is True


def test_an_injected_gateway_still_needs_the_ps_subject_id(
    params_1024: tuple[PublicParams, MasterKey], tmp_path: Path
) -> None:
    """Without its subject id the PS could not check its tokens' audience: refuse to start."""
    with pytest.raises(RuntimeError, match="SUBJECT_ID"):
        create_app(
            {
                "DATABASE_URL": f"sqlite:///{tmp_path}/ps.db",
                "GATEWAY": FakeKgc(params_1024[1]),
                "SIGNING_KEY": generate_signing_key(),
            }
        )
