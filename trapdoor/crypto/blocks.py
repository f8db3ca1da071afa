"""Vectors of packed plaintexts encrypted in blocks that share randomness across a job key.

A *job key* is a vector of independent public keys ``h_1 .. h_L`` under one
:class:`~trapdoor.crypto.bcp.PublicParams`. One random ``r`` encrypts up to ``L`` plaintexts:
``A = g^r``, ``B_j = h_j^r (1 + m_j N)``. A block is ``l + 1`` group elements for
``l <= L`` plaintexts, instead of ``2l``, and costs ``l + 1`` exponentiations.
``docs/SECURITY.md`` gives the argument (multi-recipient randomness reuse, Kurosawa 2002;
Bellare–Boldyreva–Kurosawa–Staddon 2007). ``r`` is never reused under the same ``h_j``.

An :class:`EncryptedVector` stores its elements flat, block after block:
``A_0, B_0_1 .. B_0_l0, A_1, B_1_1, ...``. Homomorphic addition is an element-wise product,
so aggregation never needs to know the layout.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

import gmpy2
from gmpy2 import mpz

from trapdoor.crypto.bcp import (
    InvalidElementError,
    MasterKey,
    PublicKey,
    PublicParams,
    RandomSource,
)
from trapdoor.crypto.fixedbase import FixedBaseTable, signed_digits

__all__ = [
    "BlockLayout",
    "EncryptedVector",
    "EncryptionMasks",
    "JobKey",
    "VectorEncryptor",
    "add_plaintexts",
    "decrypt_vector",
    "element_bytes",
    "elements_from_bytes",
    "elements_to_bytes",
    "generate_job_key",
    "trivial_encryption",
]


def element_bytes(params: PublicParams) -> int:
    """Width in bytes of one group element of ``Z*_{N^2}`` on the wire."""
    return (int(params.nsquare.bit_length()) + 7) // 8


def elements_to_bytes(values: Sequence[int], width: int) -> bytes:
    """Fixed-width big-endian concatenation (the bulk wire and storage format)."""
    return b"".join(int(v).to_bytes(width, "big") for v in values)


def elements_from_bytes(data: bytes | memoryview, width: int) -> list[mpz]:
    """Inverse of :func:`elements_to_bytes`; raises ``ValueError`` on a ragged length."""
    if width <= 0 or len(data) % width:
        raise ValueError(
            f"payload of {len(data)} bytes is not a whole number of {width}-byte elements"
        )
    view = memoryview(data)
    return [mpz(int.from_bytes(view[i : i + width], "big")) for i in range(0, len(view), width)]


# ---------------------------------------------------------------------------
# Job keys and layout
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class JobKey:
    """The public job key vector ``h_1 .. h_L`` (independent secrets ``a_j``)."""

    params: PublicParams
    hs: tuple[mpz, ...]

    def __post_init__(self) -> None:
        if not self.hs:
            raise ValueError("a job key needs at least one component")
        checked = tuple(
            self.params.check_public_value(h, what=f"job key component {j}")
            for j, h in enumerate(self.hs)
        )
        if len(set(checked)) != len(checked):
            raise InvalidElementError("job key components must be distinct")
        object.__setattr__(self, "hs", checked)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobKey) and (self.params, self.hs) == (other.params, other.hs)

    def __hash__(self) -> int:
        return hash((self.params, self.hs))

    @property
    def width(self) -> int:
        """``L``: how many plaintexts one block carries."""
        return len(self.hs)

    def component(self, j: int) -> PublicKey:
        """The ``j``-th component as a scalar :class:`PublicKey` (0-based)."""
        return PublicKey(self.params, self.hs[j])


def generate_job_key(params: PublicParams, width: int, rng: RandomSource) -> JobKey:
    """A fresh job key of ``width`` components; the secrets are dropped at once.

    The master key opens anything under it, so the KGC keeps no per-job secret.
    """
    if width < 1:
        raise ValueError("width must be at least 1")
    return JobKey(params, tuple(params.keygen(rng)[0].h for _ in range(width)))


@dataclass(frozen=True)
class BlockLayout:
    """How ``num_plaintexts`` plaintexts split into blocks of at most ``width``."""

    num_plaintexts: int
    width: int

    def __post_init__(self) -> None:
        if self.num_plaintexts < 1 or self.width < 1:
            raise ValueError("a layout needs at least one plaintext and a positive width")

    @property
    def num_blocks(self) -> int:
        return -(-self.num_plaintexts // self.width)

    @property
    def num_elements(self) -> int:
        """Group elements in the whole vector: one ``A`` per block plus one ``B`` per plaintext."""
        return self.num_plaintexts + self.num_blocks

    def block_sizes(self) -> list[int]:
        full, rest = divmod(self.num_plaintexts, self.width)
        return [self.width] * full + ([rest] if rest else [])

    def block_offsets(self) -> Iterator[tuple[int, int]]:
        """``(offset of A, block size)`` for each block in the flat element list."""
        offset = 0
        for size in self.block_sizes():
            yield offset, size
            offset += size + 1


# ---------------------------------------------------------------------------
# Encrypted vectors
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """A packed plaintext vector encrypted block by block under a :class:`JobKey`."""

    job_key: JobKey
    layout: BlockLayout
    elements: tuple[mpz, ...]
    _trusted: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout.width != self.job_key.width:
            raise ValueError("layout width does not match the job key")
        if len(self.elements) != self.layout.num_elements:
            raise ValueError(
                f"expected {self.layout.num_elements} group elements, got {len(self.elements)}"
            )
        if not self._trusted:
            params = self.job_key.params
            object.__setattr__(
                self,
                "elements",
                tuple(
                    params.check_element(x, what=f"element {i}")
                    for i, x in enumerate(self.elements)
                ),
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncryptedVector) and (
            self.job_key,
            self.layout,
            self.elements,
        ) == (other.job_key, other.layout, other.elements)

    def __hash__(self) -> int:
        return hash((self.job_key, self.layout, self.elements))

    def __add__(self, other: EncryptedVector) -> EncryptedVector:
        """Encrypts the slot-wise sum of the two plaintext vectors (mod N)."""
        if not isinstance(other, EncryptedVector):
            return NotImplemented
        if other.job_key != self.job_key or other.layout != self.layout:
            raise ValueError("cannot add vectors under different keys or layouts")
        n2 = self.job_key.params.nsquare
        summed = tuple(x * y % n2 for x, y in zip(self.elements, other.elements, strict=True))
        return EncryptedVector(self.job_key, self.layout, summed, _trusted=True)

    def __mul__(self, k: int) -> EncryptedVector:
        """Encrypts ``k`` times the plaintext vector (mod N)."""
        if isinstance(k, bool) or not isinstance(k, int | type(mpz(0))):
            return NotImplemented
        n2 = self.job_key.params.nsquare
        scaled = tuple(gmpy2.powmod(x, mpz(k), n2) for x in self.elements)
        return EncryptedVector(self.job_key, self.layout, scaled, _trusted=True)

    __rmul__ = __mul__

    def a_components(self) -> list[mpz]:
        """Each block's ``A = g^r``: what randomness proofs and the KGC's chain check use."""
        return [self.elements[offset] for offset, _ in self.layout.block_offsets()]

    @classmethod
    def sum(cls, vectors: Sequence[EncryptedVector]) -> EncryptedVector:
        """Homomorphic sum of one or more vectors (one pass, one reduction per product)."""
        if not vectors:
            raise ValueError("nothing to sum")
        total = vectors[0]
        for v in vectors[1:]:
            total = total + v
        return total

    def to_bytes(self) -> bytes:
        """The fixed-width big-endian payload (:mod:`trapdoor.crypto.wire` frames it)."""
        return elements_to_bytes(self.elements, element_bytes(self.job_key.params))

    @classmethod
    def from_bytes(cls, job_key: JobKey, layout: BlockLayout, data: bytes) -> EncryptedVector:
        """Parse and validate every element (raises ``ValueError`` subclasses)."""
        elements = elements_from_bytes(data, element_bytes(job_key.params))
        return cls(job_key, layout, tuple(elements))


def add_plaintexts(vector: EncryptedVector, plaintexts: Sequence[int]) -> EncryptedVector:
    """``vector`` plus known plaintexts: each ``B_j`` times ``(1 + m_j N)``, ``A`` unchanged.

    This is adding a *trivial* encryption (randomness ``r = 0``) of ``m``: one
    multiplication per element and no exponentiation. The parameter server blinds the
    aggregate with it (``F = Agg * (1 + R N)``). Fresh randomness there would protect
    nothing: the only party that ever opens ``F`` is the KGC, which holds the master key
    and so sees ``W + R`` either way, and the contributors who audit ``F`` receive ``R``.
    Keeping ``A`` also keeps ``F`` checkable against its inputs (docs/SECURITY.md).
    """
    layout = vector.layout
    if len(plaintexts) != layout.num_plaintexts:
        raise ValueError(f"expected {layout.num_plaintexts} plaintexts, got {len(plaintexts)}")
    n = vector.job_key.params.n
    n2 = vector.job_key.params.nsquare
    ms = [mpz(m) for m in plaintexts]
    if any(not 0 <= m < n for m in ms):
        raise ValueError("plaintexts must lie in [0, N)")
    elements = list(vector.elements)
    position = 0
    for offset, size in layout.block_offsets():
        for j in range(1, size + 1):
            elements[offset + j] = elements[offset + j] * (1 + ms[position] * n) % n2
            position += 1
    return EncryptedVector(vector.job_key, layout, tuple(elements), _trusted=True)


def trivial_encryption(job_key: JobKey, plaintexts: Sequence[int]) -> EncryptedVector:
    """The randomness-free encryption ``A = 1``, ``B_j = 1 + m_j N`` of public plaintexts.

    For a value everyone may know (the initial model ``W_0``): it costs one multiplication
    per element instead of an exponentiation, is the same for everyone who computes it (so
    its digest can be signed into the job terms and recomputed by each participant), and
    decrypts like any other ciphertext.
    """
    layout = BlockLayout(len(plaintexts), job_key.width)
    ones = EncryptedVector(job_key, layout, (mpz(1),) * layout.num_elements, _trusted=True)
    return add_plaintexts(ones, plaintexts)


class EncryptionMasks:
    """The offline half of one encryption: ``Enc(0)`` with a fresh ``r`` per block.

    ``g^r`` and ``h_j^r`` are all the exponentiations there are; they do not depend on the
    message, so a participant computes them while it trains (or while it waits for the
    previous release) and encrypting the update is then one multiplication per element:
    ``h_j^r (1 + m N)``. The result has exactly the distribution of a direct encryption.

    Single use, enforced: two messages under the same ``r`` would reveal their difference
    (``B / B' = 1 + (m - m') N``), so :meth:`encrypt` works once and then raises.
    """

    def __init__(self, zero: EncryptedVector, randomness: Sequence[int] = ()) -> None:
        self.job_key = zero.job_key
        self.layout = zero.layout
        self._zero: EncryptedVector | None = zero
        #: The ``r`` of each block (secret; kept in memory only): an upload proves
        #: knowledge of them (:mod:`trapdoor.crypto.pok`).
        self.randomness: tuple[mpz, ...] = tuple(mpz(r) for r in randomness)
        self._lock = threading.Lock()

    @property
    def used(self) -> bool:
        return self._zero is None

    def encrypt(self, plaintexts: Sequence[int]) -> EncryptedVector:
        """``Enc(m)`` for plaintexts in ``[0, N)``; consumes the masks (even on bad input)."""
        with self._lock:
            zero, self._zero = self._zero, None
        if zero is None:
            raise RuntimeError("encryption masks already used: randomness is never reused")
        if len(plaintexts) != zero.layout.num_plaintexts:
            raise ValueError(
                f"masks are for {zero.layout.num_plaintexts} plaintexts, got {len(plaintexts)}"
            )
        return add_plaintexts(zero, plaintexts)


def decrypt_vector(
    master_key: MasterKey, vector: EncryptedVector, *, workers: int = 1
) -> list[int]:
    """Open every plaintext of ``vector`` with the master key; each result in ``[0, N)``.

    One class computation per group element (``r mod N`` is recovered once per block) and
    the ``a_j mod N`` of the job key once per call. The exponentiations run in gmpy2 without
    the GIL, so ``workers`` threads use that many cores.
    """
    params = master_key.params
    if vector.job_key.params != params:
        raise ValueError("vector is under different parameters")
    n = params.n
    secrets_mod_n = [
        master_key.exponent_from_class(c) for c in master_key.classes_of(list(vector.job_key.hs))
    ]
    elements = list(vector.elements)
    classes = _classes_in_threads(master_key, elements, workers)
    plaintexts: list[int] = []
    for offset, size in vector.layout.block_offsets():
        class_a = classes[offset]
        for j in range(size):
            plaintexts.append(int((classes[offset + 1 + j] - secrets_mod_n[j] * class_a) % n))
    return plaintexts


def _classes_in_threads(master_key: MasterKey, elements: list[mpz], workers: int) -> list[mpz]:
    if workers <= 1 or len(elements) < 2 * workers:
        return master_key.classes_of(elements)
    size = -(-len(elements) // workers)
    chunks = [elements[i : i + size] for i in range(0, len(elements), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(master_key.classes_of, chunks))
    return [c for chunk in results for c in chunk]


# ---------------------------------------------------------------------------
# Encryption with fixed-base tables, optionally spread over worker processes
# ---------------------------------------------------------------------------


class _ColumnEncryptor:
    """Owns fixed-base tables for some of the bases (index 0 is ``g``, ``j`` is ``h_j``).

    Column work is independent, so splitting *bases* across processes shares both the
    table-building cost and the table memory, and no table ever crosses a process boundary.
    """

    def __init__(self, n: mpz, bases: dict[int, mpz], window: int) -> None:
        self.n = n
        self.n2 = n * n
        exponent_bits = int((self.n2 // 4).bit_length())
        self.tables = {
            j: FixedBaseTable(b, self.n2, exponent_bits, window) for j, b in bases.items()
        }

    def columns_for(self, block_sizes: Sequence[int]) -> list[tuple[int, int]]:
        """``(block, base index)`` pairs this encryptor computes, in output order."""
        return [
            (b, j) for b, size in enumerate(block_sizes) for j in sorted(self.tables) if j <= size
        ]

    def compute(
        self, rs: Sequence[mpz], block_sizes: Sequence[int], plaintexts: Sequence[mpz]
    ) -> list[mpz]:
        """``g^r_b`` or ``h_j^r_b (1 + m N)`` for each of :meth:`columns_for`, in that order."""
        out: list[mpz] = []
        messages = iter(plaintexts)
        any_table = next(iter(self.tables.values()))
        digits = [signed_digits(r, any_table.window, any_table.count) for r in rs]
        for b, j in self.columns_for(block_sizes):
            mask = self.tables[j].pow_digits(digits[b])
            if j == 0:
                out.append(mask)
            else:
                out.append(mask * (1 + next(messages) * self.n) % self.n2)
        return out


_HEADER = struct.Struct(">II")  # number of blocks, number of plaintexts in this request
_LENGTH = struct.Struct(">Q")


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise EOFError("encryption worker pipe closed")
    (length,) = _LENGTH.unpack(head)
    payload = stream.read(length)
    if len(payload) != length:
        raise EOFError("encryption worker pipe closed mid-message")
    return payload


def worker_main(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Worker loop (``python -m trapdoor.crypto.blocks``): build tables, answer requests until EOF.

    Workers are plain subprocesses speaking length-prefixed binary messages over pipes:
    no pickle, no fork of a threaded server, and no re-import of the caller's script.
    """
    setup = json.loads(_receive(stdin))
    encryptor = _ColumnEncryptor(
        mpz(setup["n"], 16),
        {int(j): mpz(b, 16) for j, b in setup["bases"].items()},
        setup["window"],
    )
    n_bytes = (int(encryptor.n.bit_length()) + 7) // 8
    e_bytes = (int(encryptor.n2.bit_length()) + 7) // 8
    _send(stdout, b"ready")
    while True:
        try:
            request = _receive(stdin)
        except EOFError:
            return
        num_blocks, num_messages = _HEADER.unpack_from(request)
        pos = _HEADER.size
        sizes = list(struct.unpack_from(f">{num_blocks}I", request, pos))
        pos += 4 * num_blocks
        rs = elements_from_bytes(request[pos : pos + num_blocks * e_bytes], e_bytes)
        pos += num_blocks * e_bytes
        body = request[pos : pos + num_messages * n_bytes]
        messages = elements_from_bytes(body, n_bytes) if num_messages else []
        _send(stdout, elements_to_bytes(encryptor.compute(rs, sizes, messages), e_bytes))


class VectorEncryptor:
    """Encrypts packed plaintext vectors under one job key, fast.

    Build it once per job and keep it across rounds: the fixed-base tables (about
    ``19 MiB`` per base at 2048 bits and window 7) are its whole point. With
    ``workers > 1`` the bases are split over that many worker processes, which build
    their tables in parallel; call :meth:`close` (or use ``with``) to stop them.
    Safe to share between threads: requests to the workers are serialised.
    """

    def __init__(self, job_key: JobKey, *, workers: int = 1, window: int = 7) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.job_key = job_key
        params = job_key.params
        all_bases = {0: params.g, **{j + 1: h for j, h in enumerate(job_key.hs)}}
        self._n_bytes = (int(params.n.bit_length()) + 7) // 8
        self._e_bytes = element_bytes(params)
        self._local: _ColumnEncryptor | None = None
        self._workers: list[tuple[subprocess.Popen[bytes], list[int]]] = []
        self._lock = threading.Lock()  # one request at a time on the worker pipes
        if workers == 1:
            self._local = _ColumnEncryptor(params.n, all_bases, window)
            return
        groups = [sorted(all_bases)[i::workers] for i in range(workers)]
        for group in filter(None, groups):
            proc = subprocess.Popen(
                [sys.executable, "-m", "trapdoor.crypto.blocks"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._workers.append((proc, group))
            setup = {
                "n": format(params.n, "x"),
                "window": window,
                "bases": {str(j): format(all_bases[j], "x") for j in group},
            }
            _send(proc.stdin, json.dumps(setup).encode())  # type: ignore[arg-type]
        for proc, _ in self._workers:
            if _receive(proc.stdout) != b"ready":  # type: ignore[arg-type]
                self.close()
                raise RuntimeError("encryption worker failed to start")

    def __enter__(self) -> VectorEncryptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        for proc, _ in self._workers:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._workers = []

    def precompute(self, num_plaintexts: int, rng: RandomSource) -> EncryptionMasks:
        """Masks for one later encryption of ``num_plaintexts`` values (the slow part)."""
        zero, randomness = self.encrypt_with_randomness([0] * num_plaintexts, rng)
        return EncryptionMasks(zero, randomness)

    def encrypt(self, plaintexts: Sequence[int], rng: RandomSource) -> EncryptedVector:
        """Encrypt plaintexts in ``[0, N)`` with one fresh ``r`` per block."""
        return self.encrypt_with_randomness(plaintexts, rng)[0]

    def encrypt_with_randomness(
        self, plaintexts: Sequence[int], rng: RandomSource
    ) -> tuple[EncryptedVector, list[mpz]]:
        """:meth:`encrypt`, also returning each block's ``r`` (for :mod:`trapdoor.crypto.pok`)."""
        params = self.job_key.params
        if not plaintexts:
            raise ValueError("nothing to encrypt")
        layout = BlockLayout(len(plaintexts), self.job_key.width)
        n = params.n
        ms = [mpz(m) for m in plaintexts]
        if any(not 0 <= m < n for m in ms):
            raise ValueError("plaintexts must lie in [0, N)")
        sizes = layout.block_sizes()
        rs = [params.random_exponent(rng) for _ in sizes]
        # messages[b][j-1] is plaintext j of block b
        starts = [sum(sizes[:b]) for b in range(len(sizes))]
        elements: list[mpz | None] = [None] * layout.num_elements
        a_offsets = [offset for offset, _ in layout.block_offsets()]

        def place(columns: list[tuple[int, int]], values: list[mpz]) -> None:
            for (b, j), value in zip(columns, values, strict=True):
                elements[a_offsets[b] + j] = value

        def messages_for(columns: list[tuple[int, int]]) -> list[mpz]:
            return [ms[starts[b] + j - 1] for b, j in columns if j > 0]

        with self._lock:
            self._compute_into(place, messages_for, rs, sizes)
        if any(e is None for e in elements):
            raise RuntimeError("encryption left a gap in the vector")
        return EncryptedVector(self.job_key, layout, tuple(elements), _trusted=True), rs

    def _compute_into(
        self,
        place: Callable[[list[tuple[int, int]], list[mpz]], None],
        messages_for: Callable[[list[tuple[int, int]]], list[mpz]],
        rs: list[mpz],
        sizes: list[int],
    ) -> None:
        """Run the exponentiations, here or on the workers, and place the results."""
        if self._local is not None:
            columns = self._local.columns_for(sizes)
            place(columns, self._local.compute(rs, sizes, messages_for(columns)))
        else:
            pending = []
            for proc, group in self._workers:
                columns = [(b, j) for b, size in enumerate(sizes) for j in group if j <= size]
                msgs = messages_for(columns)
                _send(
                    proc.stdin,  # type: ignore[arg-type]
                    _HEADER.pack(len(sizes), len(msgs))
                    + struct.pack(f">{len(sizes)}I", *sizes)
                    + elements_to_bytes(rs, self._e_bytes)
                    + elements_to_bytes(msgs, self._n_bytes),
                )
                pending.append((proc, columns))
            for proc, columns in pending:
                place(columns, elements_from_bytes(_receive(proc.stdout), self._e_bytes))  # type: ignore[arg-type]


if __name__ == "__main__":
    worker_main(sys.stdin.buffer, sys.stdout.buffer)
