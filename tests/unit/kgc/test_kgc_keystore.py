"""The KGC's sealed keys: init once, open with the passphrase, demo parameters only on request."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.signing import public_key_hex
from trapdoor.crypto.wire import to_hex
from trapdoor.kgc.keystore import (
    AlreadyInitialisedError,
    DemoParamsRefusedError,
    KeystoreError,
    NotInitialisedError,
    WrongPassphraseError,
    init_kgc,
    is_demo_params,
    load_kgc,
    passphrase_from_env,
)
from trapdoor.kgc.models import SealedSecret
from trapdoor.service.db import make_engine

LOW_COST = 2**10  # scrypt N for tests only


def _sealed_rows(url: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {r.name: r.sealed for r in session.scalars(select(SealedSecret))}
    finally:
        engine.dispose()


def test_fresh_keys_are_sealed_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/kgc.db"
    ticks: list[int] = []
    keys = init_kgc(url, "pass phrase", bits=64, progress=ticks.append, cost=LOW_COST)
    assert keys.demo is False and keys.master_key.params.bits == 64
    assert "pass" not in repr(keys) and "KgcKeys(bits=64" in repr(keys)
    rows = _sealed_rows(url)
    assert set(rows) == {"master_key", "signing_key"}
    for secret in (to_hex(keys.master_key.p), to_hex(keys.master_key.q)):
        assert all(secret not in text for text in rows.values())
    opened = load_kgc(url, "pass phrase")
    assert opened.master_key == keys.master_key
    assert public_key_hex(opened.signing_key) == public_key_hex(keys.signing_key)

    with pytest.raises(WrongPassphraseError):
        load_kgc(url, "wrong")
    with pytest.raises(AlreadyInitialisedError):
        init_kgc(url, "pass phrase", bits=64, cost=LOW_COST)
    assert load_kgc(url, "pass phrase").master_key == keys.master_key  # untouched


def test_demo_parameters_only_on_request(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kgc.db"
    keys = init_kgc(url, "pw", bits=1024, demo=True, cost=LOW_COST)
    assert keys.demo and keys.master_key == load_demo_master_key(1024)
    assert is_demo_params(keys.master_key.params)
    with pytest.raises(DemoParamsRefusedError, match="demo"):
        load_kgc(url, "pw")
    assert load_kgc(url, "pw", demo=True).demo is True


def test_load_refuses_an_uninitialised_database(tmp_path: Path) -> None:
    with pytest.raises(NotInitialisedError):
        load_kgc(f"sqlite:///{tmp_path}/empty.db", "pw")
    with pytest.raises(KeystoreError):
        init_kgc(f"sqlite:///{tmp_path}/x.db", "", cost=LOW_COST)


def test_passphrase_from_env(tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text("from file\n")
    assert passphrase_from_env({"TRAPDOOR_KGC_PASSPHRASE": "direct"}) == "direct"
    assert passphrase_from_env({"TRAPDOOR_KGC_PASSPHRASE_FILE": str(secret_file)}) == "from file"
    bad = [
        {},
        {"TRAPDOOR_KGC_PASSPHRASE": ""},
        {"TRAPDOOR_KGC_PASSPHRASE": "a", "TRAPDOOR_KGC_PASSPHRASE_FILE": str(secret_file)},
        {"TRAPDOOR_KGC_PASSPHRASE_FILE": str(tmp_path / "missing")},
    ]
    for environ in bad:
        with pytest.raises(KeystoreError) as info:
            passphrase_from_env(environ)
        assert "from file" not in str(info.value)
