"""Tests for trapdoor.crypto.blocks: job keys, block layout, vector encryption, decryption."""

from __future__ import annotations

import random
from collections.abc import Iterator

import gmpy2
import pytest
from gmpy2 import mpz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapdoor.crypto.bcp import Ciphertext, InvalidElementError, MasterKey, PublicParams, SecretKey
from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    EncryptionMasks,
    JobKey,
    VectorEncryptor,
    add_plaintexts,
    decrypt_vector,
    element_bytes,
    elements_from_bytes,
    elements_to_bytes,
    generate_job_key,
    trivial_encryption,
)

HYP = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
WIDTH = 3
SEEDS = st.integers(min_value=0, max_value=2**32)
PLAINTEXT_LISTS = st.lists(st.integers(min_value=0, max_value=2**255), min_size=1, max_size=10)
Params = tuple[PublicParams, MasterKey]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keyed(small_params: Params) -> tuple[JobKey, list[SecretKey]]:
    """A job key whose per-component secrets we keep (the KGC would drop them)."""
    params, _ = small_params
    rng = random.Random(33)
    pairs = [params.keygen(rng) for _ in range(WIDTH)]
    return JobKey(params, tuple(pk.h for pk, _ in pairs)), [sk for _, sk in pairs]


@pytest.fixture(scope="module")
def job_key(keyed: tuple[JobKey, list[SecretKey]]) -> JobKey:
    return keyed[0]


@pytest.fixture(scope="module")
def encryptor_1(job_key: JobKey) -> Iterator[VectorEncryptor]:
    with VectorEncryptor(job_key, workers=1) as enc:
        yield enc


@pytest.fixture(scope="module")
def encryptor_2(job_key: JobKey) -> Iterator[VectorEncryptor]:
    with VectorEncryptor(job_key, workers=2) as enc:
        yield enc


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def encryptor(
    request: pytest.FixtureRequest, encryptor_1: VectorEncryptor, encryptor_2: VectorEncryptor
) -> VectorEncryptor:
    return encryptor_1 if request.param == 1 else encryptor_2


def plaintexts(n: int, length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    edge = [0, n - 1, 1, n // 2]
    return [edge[i] if i < len(edge) and seed % 2 == 0 else rng.randrange(n) for i in range(length)]


def a_elements(vector: EncryptedVector) -> list[int]:
    return [int(vector.elements[offset]) for offset, _ in vector.layout.block_offsets()]


# --------------------------------------------------------------------------- layout


def test_block_layout() -> None:
    ragged = BlockLayout(7, 3)
    assert (ragged.num_blocks, ragged.num_elements) == (3, 10)
    assert ragged.block_sizes() == [3, 3, 1]
    assert list(ragged.block_offsets()) == [(0, 3), (4, 3), (8, 1)]
    full = BlockLayout(6, 3)
    assert (full.num_blocks, full.num_elements) == (2, 8)
    assert full.block_sizes() == [3, 3]
    assert list(full.block_offsets()) == [(0, 3), (4, 3)]
    single = BlockLayout(1, 5)
    assert (single.num_blocks, single.num_elements, single.block_sizes()) == (1, 2, [1])
    for bad in ((0, 3), (3, 0), (-1, 2)):
        with pytest.raises(ValueError):
            BlockLayout(*bad)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "length", [1, 2, WIDTH, WIDTH + 1, 2 * WIDTH, 2 * WIDTH + 1, 5 * WIDTH - 1]
)
def test_round_trip(
    small_params: Params, encryptor: VectorEncryptor, job_key: JobKey, length: int
) -> None:
    params, master = small_params
    ms = plaintexts(int(params.n), length, seed=length * 2)
    vector = encryptor.encrypt(ms, random.Random(length))
    assert vector.job_key == job_key
    assert vector.layout == BlockLayout(length, WIDTH)
    assert len(vector.elements) == length + -(-length // WIDTH)
    assert decrypt_vector(master, vector) == ms
    assert decrypt_vector(master, vector, workers=2) == ms


@pytest.mark.parametrize("length", [1, WIDTH, 2 * WIDTH + 2])
def test_workers_give_identical_vectors(
    small_params: Params, encryptor_1: VectorEncryptor, encryptor_2: VectorEncryptor, length: int
) -> None:
    """Same randomness, same result: the workers put every column in its place."""
    params, _ = small_params
    ms = plaintexts(int(params.n), length, seed=5)
    assert encryptor_1.encrypt(ms, random.Random(9)) == encryptor_2.encrypt(ms, random.Random(9))


def test_more_workers_than_bases(small_params: Params) -> None:
    params, master = small_params
    job_key = generate_job_key(params, 1, random.Random(4))
    ms = [3, 1, 4, 1, 5]
    with VectorEncryptor(job_key, workers=4) as many, VectorEncryptor(job_key) as one:
        vector = many.encrypt(ms, random.Random(1))
        assert vector == one.encrypt(ms, random.Random(1))
    assert decrypt_vector(master, vector) == ms


def test_round_trip_1024(params_1024: Params) -> None:
    params, master = params_1024
    rng = random.Random(1024)
    job_key = generate_job_key(params, 2, rng)
    ms = [0, int(params.n) - 1, rng.randrange(int(params.n))]
    with VectorEncryptor(job_key, window=5) as enc:
        vector = enc.encrypt(ms, rng)
    assert decrypt_vector(master, vector) == ms


# --------------------------------------------------------------------------- homomorphism


@pytest.mark.parametrize("length", [WIDTH * 2, WIDTH * 2 + 1])
def test_homomorphic_sum(small_params: Params, encryptor: VectorEncryptor, length: int) -> None:
    params, master = small_params
    n = int(params.n)
    rng = random.Random(length)
    vectors_ms = [[rng.randrange(n) for _ in range(length)] for _ in range(4)]
    vectors = [encryptor.encrypt(ms, rng) for ms in vectors_ms]
    expected = [sum(column) % n for column in zip(*vectors_ms, strict=True)]
    pairwise = vectors[0] + vectors[1] + vectors[2] + vectors[3]
    assert decrypt_vector(master, pairwise) == expected
    assert EncryptedVector.sum(vectors) == pairwise
    assert EncryptedVector.sum(vectors[:1]) == vectors[0]
    with pytest.raises(ValueError):
        EncryptedVector.sum([])


@HYP
@given(seed=SEEDS, length=st.integers(min_value=1, max_value=8))
def test_trivial_encryption_and_added_plaintexts_decrypt(
    small_params: Params, encryptor_1: VectorEncryptor, seed: int, length: int
) -> None:
    """``A = 1, B = 1 + mN`` opens to ``m``; adding known ``r`` keeps ``A`` and adds ``r``."""
    params, master = small_params
    n = int(params.n)
    rng = random.Random(seed)
    ms = [rng.randrange(n) for _ in range(length)]
    rs = [rng.randrange(n) for _ in range(length)]
    trivial = trivial_encryption(encryptor_1.job_key, ms)
    assert a_elements(trivial) == [1] * trivial.layout.num_blocks
    assert decrypt_vector(master, trivial) == ms
    fresh = encryptor_1.encrypt(ms, rng)
    shifted = add_plaintexts(fresh, rs)
    assert a_elements(shifted) == a_elements(fresh)
    assert decrypt_vector(master, shifted) == [(m + r) % n for m, r in zip(ms, rs, strict=True)]
    with pytest.raises(ValueError):
        add_plaintexts(fresh, rs[:-1] if length > 1 else [*rs, 0])
    with pytest.raises(ValueError):
        add_plaintexts(fresh, [n] * length)


@pytest.mark.parametrize("k", [0, 1, 2, 7, -1, -3, 2**300 + 1, -(2**200)])
def test_scalar_multiplication(small_params: Params, encryptor_1: VectorEncryptor, k: int) -> None:
    params, master = small_params
    n = int(params.n)
    ms = plaintexts(n, WIDTH + 2, seed=k % 97)
    vector = encryptor_1.encrypt(ms, random.Random(3))
    expected = [k * m % n for m in ms]
    assert decrypt_vector(master, vector * k) == expected
    assert decrypt_vector(master, k * vector) == expected
    assert decrypt_vector(master, vector * gmpy2.mpz(k)) == expected


def test_weighted_sum(small_params: Params, encryptor_1: VectorEncryptor) -> None:
    params, master = small_params
    n = int(params.n)
    x = encryptor_1.encrypt([10, 20, 30, 40], random.Random(1))
    y = encryptor_1.encrypt([1, 2, 3, n - 1], random.Random(2))
    assert decrypt_vector(master, x * 3 + y * -5) == [25, 50, 75, (120 + 5) % n]


def test_bad_operands(small_params: Params, encryptor_1: VectorEncryptor) -> None:
    _params, _ = small_params
    v = encryptor_1.encrypt([1, 2], random.Random(0))
    for bad in (True, 1.5, "2", None):
        with pytest.raises(TypeError):
            v * bad  # type: ignore[operator]
    with pytest.raises(TypeError):
        v + 1  # type: ignore[operator]


def test_adding_different_layouts_or_keys_raises(
    small_params: Params, encryptor_1: VectorEncryptor, job_key: JobKey
) -> None:
    params, _ = small_params
    rng = random.Random(8)
    a = encryptor_1.encrypt([1, 2, 3, 4], rng)
    b = encryptor_1.encrypt([1, 2, 3, 4, 5], rng)
    with pytest.raises(ValueError):
        a + b
    other_key = generate_job_key(params, WIDTH, rng)
    with VectorEncryptor(other_key) as other:
        c = other.encrypt([1, 2, 3, 4], rng)
    assert c.layout == a.layout
    with pytest.raises(ValueError):
        a + c
    narrow_key = JobKey(params, job_key.hs[:2])
    with VectorEncryptor(narrow_key) as narrow:
        d = narrow.encrypt([1, 2, 3, 4], rng)
    with pytest.raises(ValueError):
        a + d


# --------------------------------------------------------------------------- randomness and blocks


def test_fresh_randomness_per_block(small_params: Params, encryptor: VectorEncryptor) -> None:
    _params, master = small_params
    ms = [7] * (4 * WIDTH + 1)  # same plaintexts everywhere: only r can tell blocks apart
    first = encryptor.encrypt(ms, random.Random(1))
    second = encryptor.encrypt(ms, random.Random(2))
    a1, a2 = a_elements(first), a_elements(second)
    assert len(a1) == 5
    assert len(set(a1)) == len(a1)
    assert len(set(a2)) == len(a2)
    assert not set(a1) & set(a2)
    assert not set(first.elements) & set(second.elements)
    # r mod N, recovered through the master key, differs per block too.
    rs = [master.exponent_from_class(master.class_of(a)) for a in a1 + a2]
    assert len(set(rs)) == len(rs)


def test_each_component_decrypts_with_its_own_secret_key(
    small_params: Params, encryptor: VectorEncryptor, keyed: tuple[JobKey, list[SecretKey]]
) -> None:
    params, _ = small_params
    job_key, secret_keys = keyed
    ms = plaintexts(int(params.n), 2 * WIDTH + 1, seed=4)
    vector = encryptor.encrypt(ms, random.Random(6))
    plaintext_index = 0
    for offset, size in vector.layout.block_offsets():
        a = vector.elements[offset]
        for j in range(size):
            b = vector.elements[offset + 1 + j]
            scalar = Ciphertext(job_key.component(j), a, b)
            assert secret_keys[j].decrypt(scalar) == ms[plaintext_index]
            for other in range(WIDTH):
                if other != j:  # the same (A, B_j) named as under another component
                    with pytest.raises(InvalidElementError):
                        secret_keys[other].decrypt(Ciphertext(job_key.component(other), a, b))
            plaintext_index += 1
    assert plaintext_index == len(ms)


# --------------------------------------------------------------------------- validation


def test_encrypted_vector_rejects_bad_elements(
    small_params: Params, encryptor_1: VectorEncryptor, job_key: JobKey
) -> None:
    params, master = small_params
    v = encryptor_1.encrypt([1, 2, 3, 4], random.Random(0))
    assert EncryptedVector(job_key, v.layout, v.elements) == v
    for i in (0, 1, len(v.elements) - 1):
        for bad in (0, params.nsquare, params.nsquare + 3, params.n, master.p, 5 * master.q, -1):
            elements = list(v.elements)
            elements[i] = bad
            with pytest.raises(InvalidElementError):
                EncryptedVector(job_key, v.layout, tuple(elements))
        elements = list(v.elements)
        elements[i] = 2.0
        with pytest.raises(InvalidElementError):
            EncryptedVector(job_key, v.layout, tuple(elements))


def test_encrypted_vector_rejects_wrong_counts_and_width(
    encryptor_1: VectorEncryptor, job_key: JobKey
) -> None:
    v = encryptor_1.encrypt([1, 2, 3, 4], random.Random(0))
    for elements in (v.elements[:-1], (*v.elements, v.elements[0]), (), v.elements[:1]):
        with pytest.raises(ValueError):
            EncryptedVector(job_key, v.layout, elements)
    with pytest.raises(ValueError):
        EncryptedVector(job_key, BlockLayout(4, WIDTH + 1), v.elements[:-1])


def test_bytes_round_trip(
    small_params: Params, encryptor_1: VectorEncryptor, job_key: JobKey
) -> None:
    params, master = small_params
    width = element_bytes(params)
    assert width == (int(params.nsquare).bit_length() + 7) // 8
    ms = [5, 6, 7, 8, 9]
    v = encryptor_1.encrypt(ms, random.Random(0))
    data = v.to_bytes()
    assert isinstance(data, bytes) and len(data) == v.layout.num_elements * width
    assert [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)] == [
        int(x) for x in v.elements
    ]
    back = EncryptedVector.from_bytes(job_key, v.layout, data)
    assert back == v
    assert decrypt_vector(master, back) == ms
    with pytest.raises(ValueError):
        EncryptedVector.from_bytes(job_key, v.layout, data[:-1])
    with pytest.raises(ValueError):
        EncryptedVector.from_bytes(job_key, v.layout, data[:-width])
    zeroed = bytes(width) + data[width:]
    with pytest.raises(InvalidElementError):
        EncryptedVector.from_bytes(job_key, v.layout, zeroed)
    too_big = b"\xff" * width + data[width:]
    with pytest.raises(InvalidElementError):
        EncryptedVector.from_bytes(job_key, v.layout, too_big)


def test_elements_bytes_helpers() -> None:
    values = [0, 1, 255, 256, 2**63]
    data = elements_to_bytes(values, 9)
    assert data[:9] == bytes(9) and data[9:18] == bytes(8) + b"\x01"
    assert elements_from_bytes(data, 9) == values
    assert elements_from_bytes(memoryview(data), 9) == values
    assert elements_from_bytes(b"", 4) == []
    for bad_width in (0, -1, 4):
        with pytest.raises(ValueError):
            elements_from_bytes(data, bad_width)


def test_job_key_validation(small_params: Params, job_key: JobKey) -> None:
    params, master = small_params
    hs = job_key.hs
    assert job_key.width == WIDTH
    assert [job_key.component(j).h for j in range(WIDTH)] == list(hs)
    assert JobKey(params, tuple(int(h) for h in hs)) == job_key
    for bad in (
        (hs[0], hs[1], hs[0]),  # duplicate
        (hs[0], hs[0]),
        (hs[0], 1),  # 1 has no secret
        (1,),
        (0, hs[0]),
        (hs[0], params.n),
        (master.p,),
        (params.nsquare,),
        (),
    ):
        with pytest.raises(ValueError):
            JobKey(params, bad)


def test_generate_job_key(small_params: Params) -> None:
    params, master = small_params
    job_key = generate_job_key(params, 4, random.Random(2))
    assert job_key.width == 4 and len(set(job_key.hs)) == 4
    assert generate_job_key(params, 4, random.Random(2)) == job_key
    with VectorEncryptor(job_key) as enc:
        vector = enc.encrypt([9, 8, 7, 6, 5], random.Random(0))
    assert decrypt_vector(master, vector) == [9, 8, 7, 6, 5]
    for bad in (0, -1):
        with pytest.raises(ValueError):
            generate_job_key(params, bad, random.Random(0))


def test_encrypt_rejects_bad_plaintexts(small_params: Params, encryptor_1: VectorEncryptor) -> None:
    params, _ = small_params
    for bad in ([], [int(params.n)], [1, -1], [1, 2, 3, int(params.nsquare)]):
        with pytest.raises(ValueError):
            encryptor_1.encrypt(bad, random.Random(0))


def test_decrypt_vector_rejects_other_params(
    params_1024: Params, encryptor_1: VectorEncryptor
) -> None:
    _, other_master = params_1024
    v = encryptor_1.encrypt([1], random.Random(0))
    with pytest.raises(ValueError):
        decrypt_vector(other_master, v)


def test_encryptor_workers_lifecycle(job_key: JobKey) -> None:
    with pytest.raises(ValueError):
        VectorEncryptor(job_key, workers=0)
    enc = VectorEncryptor(job_key, workers=2)
    procs = [proc for proc, _ in enc._workers]
    assert len(procs) == 2 and all(proc.poll() is None for proc in procs)
    enc.close()
    assert all(proc.returncode == 0 for proc in procs)
    enc.close()  # idempotent


# --------------------------------------------------------------------------- precomputed masks


@HYP
@given(seed=SEEDS, ms=PLAINTEXT_LISTS)
def test_round_trip_property_direct_and_with_masks(
    small_params: Params, encryptor: VectorEncryptor, seed: int, ms: list[int]
) -> None:
    """Both decrypt to ``ms``; with the same r the two-phase ciphertext is the direct one."""
    params, master = small_params
    ms = [m % params.n for m in ms]
    masks = encryptor.precompute(len(ms), random.Random(seed))
    assert not masks.used
    vector = masks.encrypt(ms)
    assert masks.used
    assert vector == encryptor.encrypt(ms, random.Random(seed))
    assert decrypt_vector(master, vector) == ms


def test_masks_are_single_use(small_params: Params, encryptor_1: VectorEncryptor) -> None:
    _, master = small_params
    masks = encryptor_1.precompute(WIDTH + 1, random.Random(5))
    first = masks.encrypt([1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="already used"):
        masks.encrypt([1, 2, 3, 4])
    assert decrypt_vector(master, first) == [1, 2, 3, 4]


@pytest.mark.parametrize("bad", [[1, 2], [1, 2, 3, 4, 5], [0, 0, 0, -1], "n"])
def test_masks_reject_bad_plaintexts_and_are_spent(
    small_params: Params, encryptor_1: VectorEncryptor, bad: list[int] | str
) -> None:
    """Bad input is refused, and the masks are spent anyway (no retry with the same r)."""
    params, _ = small_params
    values = [0, 0, 0, int(params.n)] if isinstance(bad, str) else bad
    masks = encryptor_1.precompute(WIDTH + 1, random.Random(6))
    with pytest.raises(ValueError):
        masks.encrypt(values)
    assert masks.used
    with pytest.raises(RuntimeError):
        masks.encrypt([0, 0, 0, 0])


def test_masks_of_zero_are_an_encryption_of_zero(
    small_params: Params, job_key: JobKey, encryptor_2: VectorEncryptor
) -> None:
    _, master = small_params
    masks = encryptor_2.precompute(2 * WIDTH, random.Random(8))
    assert isinstance(masks, EncryptionMasks) and masks.job_key == job_key
    assert decrypt_vector(master, masks.encrypt([0] * (2 * WIDTH))) == [0] * (2 * WIDTH)


def test_one_encryptor_shared_by_threads(
    small_params: Params, encryptor_2: VectorEncryptor
) -> None:
    """Concurrent requests are serialised on the worker pipes, never interleaved."""
    from concurrent.futures import ThreadPoolExecutor

    _, master = small_params
    messages = [[i, i + 1, i + 2, i + 3, i + 4] for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        vectors = list(pool.map(lambda m: encryptor_2.encrypt(m, random.Random(m[0])), messages))
    assert [decrypt_vector(master, v) for v in vectors] == messages


# --------------------------------------------------------------------------- trivial encryption


def component_plaintexts(
    vector: EncryptedVector, job_key: JobKey, secret_keys: list[SecretKey]
) -> list[int]:
    """Open every ``(A, B_j)`` with the component's own secret key (not the master key)."""
    out: list[int] = []
    for offset, size in vector.layout.block_offsets():
        for j in range(size):
            pair = Ciphertext(
                job_key.component(j), vector.elements[offset], vector.elements[offset + 1 + j]
            )
            out.append(secret_keys[j].decrypt(pair))
    return out


@pytest.mark.parametrize("length", [1, WIDTH, WIDTH + 1, 3 * WIDTH - 1])
def test_trivial_encryption_is_a_known_answer(
    small_params: Params, keyed: tuple[JobKey, list[SecretKey]], length: int
) -> None:
    """``A = 1`` and ``B_j = 1 + m_j N``: no randomness, the same bytes for everyone."""
    params, master = small_params
    job_key, secret_keys = keyed
    n = int(params.n)
    ms = plaintexts(n, length, seed=length * 2)
    vector = trivial_encryption(job_key, ms)
    assert vector.layout == BlockLayout(length, WIDTH)
    assert a_elements(vector) == [1] * vector.layout.num_blocks
    position = 0
    for offset, size in vector.layout.block_offsets():
        for j in range(size):
            b = vector.elements[offset + 1 + j]
            assert b == 1 + ms[position] * n
            assert master.decrypt(Ciphertext(job_key.component(j), mpz(1), b)) == ms[position]
            position += 1
    assert decrypt_vector(master, vector) == ms
    assert component_plaintexts(vector, job_key, secret_keys) == ms
    assert trivial_encryption(job_key, ms) == vector
    parsed = EncryptedVector.from_bytes(job_key, vector.layout, vector.to_bytes())
    assert parsed == vector  # A = 1 is a valid element on the wire


def test_trivial_encryption_does_not_depend_on_the_key_components(
    small_params: Params, job_key: JobKey
) -> None:
    params, _ = small_params
    other = generate_job_key(params, WIDTH, random.Random(77))
    ms = [5, 0, int(params.n) - 1, 42]
    assert trivial_encryption(other, ms).to_bytes() == trivial_encryption(job_key, ms).to_bytes()


@pytest.mark.parametrize("bad", [[], [-1], "n"])
def test_trivial_encryption_rejects_bad_plaintexts(
    small_params: Params, job_key: JobKey, bad: list[int] | str
) -> None:
    params, _ = small_params
    values = [0, int(params.n)] if isinstance(bad, str) else bad
    with pytest.raises(ValueError):
        trivial_encryption(job_key, values)


@HYP
@given(seed=SEEDS, ms=PLAINTEXT_LISTS, data=st.data())
def test_adding_plaintexts_adds_and_keeps_a(
    small_params: Params,
    encryptor_1: VectorEncryptor,
    keyed: tuple[JobKey, list[SecretKey]],
    seed: int,
    ms: list[int],
    data: st.DataObject,
) -> None:
    """``add_plaintexts(Enc(m), r)`` decrypts to ``m + r mod N`` with the same ``A``s."""
    params, master = small_params
    job_key, secret_keys = keyed
    n = int(params.n)
    ms = [m % n for m in ms]
    rs = data.draw(st.lists(st.integers(0, n - 1), min_size=len(ms), max_size=len(ms)))
    vector = encryptor_1.encrypt(ms, random.Random(seed))
    added = add_plaintexts(vector, rs)
    expected = [(m + r) % n for m, r in zip(ms, rs, strict=True)]
    assert a_elements(added) == a_elements(vector)
    assert added.layout == vector.layout and added.job_key == job_key
    assert decrypt_vector(master, added) == expected
    assert component_plaintexts(added, job_key, secret_keys) == expected
    # adding a trivial encryption is exactly add_plaintexts, and adding zero changes nothing
    assert vector + trivial_encryption(job_key, rs) == added
    assert add_plaintexts(vector, [0] * len(ms)) == vector
    assert add_plaintexts(trivial_encryption(job_key, ms), rs) == trivial_encryption(
        job_key, expected
    )


def test_add_plaintexts_keeps_the_input_unchanged(
    small_params: Params, encryptor_1: VectorEncryptor
) -> None:
    _, master = small_params
    vector = encryptor_1.encrypt([1, 2, 3, 4], random.Random(3))
    before = vector.to_bytes()
    added = add_plaintexts(vector, [10, 20, 30, 40])
    assert vector.to_bytes() == before
    assert decrypt_vector(master, added) == [11, 22, 33, 44]
    assert decrypt_vector(master, vector) == [1, 2, 3, 4]


@pytest.mark.parametrize("bad", [[1, 2], [1, 2, 3, 4, 5], [], [0, 0, 0, -1], "n"])
def test_add_plaintexts_rejects_bad_plaintexts(
    small_params: Params, encryptor_1: VectorEncryptor, bad: list[int] | str
) -> None:
    params, _ = small_params
    values = [0, 0, 0, int(params.n)] if isinstance(bad, str) else bad
    vector = encryptor_1.encrypt([1, 2, 3, 4], random.Random(4))
    with pytest.raises(ValueError):
        add_plaintexts(vector, values)
