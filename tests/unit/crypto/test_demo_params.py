"""Tests for the shipped demo-only BCP parameters (common/data/demo-params-*.json)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gmpy2
import pytest

from trapdoor.crypto import demo_params
from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.demo_params import (
    DEMO_BITS,
    DEMO_LABEL,
    demo_params_path,
    load_demo_master_key,
)
from trapdoor.crypto.wire import dumps

DATA_DIR = Path(demo_params.__file__).parent / "data"


def is_safe_prime(p: int) -> bool:
    return bool(gmpy2.is_prime(p, 30)) and bool(gmpy2.is_prime((p - 1) // 2, 30))


def demo_file(bits: int) -> Path:
    path = DATA_DIR / f"demo-params-{bits}.json"
    if bits == 3072 and not path.exists():
        pytest.skip("demo-params-3072.json has not been generated yet (slow; maintainers only)")
    return path


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
def test_demo_file_is_labelled_and_well_formed(bits: int) -> None:
    path = demo_file(bits)
    assert demo_params_path(bits) == path
    obj = json.loads(path.read_text())
    assert obj["label"] == DEMO_LABEL
    assert "DEMO ONLY" in obj["label"]
    assert obj["kind"] == "bcp-master-key"
    assert set(obj) == {"kind", "n", "g", "p", "q", "label"}


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
def test_demo_master_key_loads_and_is_sound(bits: int) -> None:
    demo_file(bits)
    master = load_demo_master_key(bits)
    assert isinstance(master, MasterKey)
    params = master.params
    p, q, n, g = int(master.p), int(master.q), int(params.n), int(params.g)
    assert params.bits == n.bit_length() == bits
    assert p * q == n and p != q
    assert p.bit_length() == q.bit_length() == bits // 2
    assert is_safe_prime(p) and is_safe_prime(q)
    # The DESIGN conditions on g: g^(p'q') = 1 + kN with k != 0 and gcd(k, N) = 1, g a square.
    n2 = n * n
    lam = ((p - 1) // 2) * ((q - 1) // 2)
    u = pow(g, lam, n2)
    assert u % n == 1
    k = (u - 1) // n
    assert k != 0 and gmpy2.gcd(k, n) == 1
    assert gmpy2.legendre(g % p, p) == 1 and gmpy2.legendre(g % q, q) == 1
    # And the parameters work.
    pk, sk = params.keygen(random.Random(bits))
    c = pk.encrypt(31337, random.Random(1)) + pk.encrypt(n - 1, random.Random(2))
    assert sk.decrypt(c) == master.decrypt(c) == 31336


def test_default_is_2048_bits() -> None:
    assert load_demo_master_key().params.bits == 2048
    assert DEMO_BITS == (1024, 2048, 3072)


@pytest.mark.parametrize("bits", [512, 4096, 0, 2047])
def test_unknown_sizes_refused(bits: int) -> None:
    with pytest.raises(ValueError):
        load_demo_master_key(bits)


def test_unlabelled_or_wrong_files_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = load_demo_master_key(1024)
    fake = tmp_path / "demo.json"
    monkeypatch.setattr(demo_params, "demo_params_path", lambda bits: fake)
    obj = json.loads(dumps(real))

    fake.write_text(json.dumps(obj))  # no label
    with pytest.raises(ValueError, match="demo-only"):
        load_demo_master_key(1024)

    fake.write_text(json.dumps(dict(obj, label="production")))
    with pytest.raises(ValueError, match="demo-only"):
        load_demo_master_key(1024)

    params_only = {"kind": "bcp-params", "n": obj["n"], "g": obj["g"], "label": DEMO_LABEL}
    fake.write_text(json.dumps(params_only))
    with pytest.raises(ValueError, match="master key"):
        load_demo_master_key(1024)

    fake.write_text(json.dumps(dict(obj, label=DEMO_LABEL)))
    assert load_demo_master_key(1024) == real
