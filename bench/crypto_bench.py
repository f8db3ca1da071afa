"""Crypto benchmark: packed BCP vectors with shared randomness vs per-scalar python-paillier.

Run ``python -m bench.crypto_bench`` (about five minutes on two slow cores) or
``python -m bench.crypto_bench --quick`` (a smoke test, well under a minute).

One run measures, for one float vector (default 109,386 values: the 784-128-64-10 MNIST
MLP) under the shipped demo parameters:

* encode + pack (fixed point, 29-bit slots);
* job-key encryptor setup (fixed-base tables, worker processes), reported apart from the
  encryption of the whole vector (twice: first run and steady state), with ``--workers``
  worker processes and with one;
* homomorphic addition of one upload into an aggregate;
* master-key decryption of the whole vector and decode, checked against the input
  (the run fails loudly if any value is off by more than 2^-20);
* bytes per value on the wire (a full :func:`trapdoor.crypto.wire.encode_frame` frame);
* peak memory (``ru_maxrss`` of this process and of its worker processes);
* a python-paillier baseline (one scalar per ciphertext), measured on a sample and
  extrapolated to the whole vector;
* micro-benchmarks of the primitive operations, to explain where the time goes.

It prints a table with each target beside the measured value (PASS/MISS), and writes
``<out>/crypto_bench.json`` and ``<out>/crypto_bench.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from trapdoor.crypto.bcp import MasterKey
from trapdoor.crypto.blocks import (
    BlockLayout,
    EncryptedVector,
    JobKey,
    VectorEncryptor,
    decrypt_vector,
    element_bytes,
    generate_job_key,
)
from trapdoor.crypto.demo_params import demo_params_path, load_demo_master_key
from trapdoor.crypto.fixedbase import FixedBaseTable, signed_digits
from trapdoor.crypto.wire import encode_frame

__all__ = ["main"]

MNIST_MLP_VALUES = 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10  # 109,386
FRAC_BITS = 20
TOLERANCE = 2.0**-FRAC_BITS
DATA_SEED = 20240601
DATA_SCALE = 0.05
CLIP_BOUND = 1.0  # 20 standard deviations: nothing is clipped, and the report says so
MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0  # CPU time of this process (all its threads; not its children)


class _timed:  # noqa: N801 - used as a context manager, reads like a statement
    def __init__(self) -> None:
        self.t = Timing()

    def __enter__(self) -> Timing:
        self._w = time.perf_counter()
        self._c = time.process_time()
        return self.t

    def __exit__(self, *exc: object) -> None:
        self.t.wall = time.perf_counter() - self._w
        self.t.cpu = time.process_time() - self._c


def _per_op(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median and best wall seconds of ``fn`` over ``reps`` calls.

    On a shared machine the median says what to expect and the best what the operation
    costs when it has a core to itself.
    """
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), min(samples)


def _maxrss_mib(who: int) -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / MIB


def _proc_hwm_mib(pid: int) -> float | None:
    """Peak resident set (VmHWM) of a live process, from /proc (Linux only)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _exponentiations_per_worker(width: int, workers: int, block_sizes: Sequence[int]) -> list[int]:
    """Exponentiations each worker does for one vector.

    Mirrors how :class:`VectorEncryptor` deals the bases (0 = ``g``, ``j`` = ``h_j``)
    round-robin to its worker processes; a worker computes base ``j`` of a block only if
    the block has a ``j``-th plaintext.
    """
    groups = [list(range(width + 1))[i::workers] for i in range(workers)]
    return [sum(1 for size in block_sizes for j in group if j <= size) for group in groups if group]


def _worker_pids(encryptor: VectorEncryptor) -> list[int]:
    # Read-only peek at the worker processes, to measure their memory before they exit.
    return [proc.pid for proc, _ in getattr(encryptor, "_workers", [])]


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "gmpy2": gmpy2.version(),
        "gmp": gmpy2.mp_version(),
        "numpy": np.__version__,
    }


def write_outputs(
    out: Path,
    name: str,
    doc: dict[str, Any],
    table: str,
    plot: Callable[[dict[str, Any], Path], None],
) -> tuple[Path, Path, Path]:
    """``<out>/<name>.json``, ``.txt`` (the printed table) and ``.png``: what every
    benchmark leaves behind; the three paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / f"{name}.json", out / f"{name}.txt", out / f"{name}.png")
    paths[0].write_text(json.dumps(doc, indent=1, default=float) + "\n")
    paths[1].write_text(table + "\n")
    plot(doc, paths[2])
    return paths


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How a run was started (``python -m <module> ARGS``), for its JSON."""
    return " ".join([f"python -m {module}", *(argv if argv is not None else sys.argv[1:])])


def publish(
    out: Path,
    name: str,
    doc: dict[str, Any],
    table: str,
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """Print ``table``, write the three files (:func:`write_outputs`) and say where."""
    print(table)
    json_path, txt_path, png_path = write_outputs(out, name, doc, table, plot)
    print(f"wrote {json_path}, {txt_path} and {png_path} ({doc['total_s']:.0f} s)")


def grouped_bars(
    ax: Any,
    groups: int,
    series: Sequence[tuple[str, Sequence[float], str]],
    label: Callable[[float], str],
) -> npt.NDArray[np.int64]:
    """Each ``(name, values, color)`` series as bars side by side in ``groups`` groups,
    every bar labelled with ``label(value)`` (a NaN value draws no bar and no label).
    Returns the group positions, for the tick labels."""
    xs = np.arange(groups)
    width = 0.8 / len(series)
    for i, (name, values, color) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        bars = ax.bar(xs + offset, values, width, label=name, color=color)
        for bar, v in zip(bars, values, strict=True):
            if not math.isnan(v):
                centre = bar.get_x() + bar.get_width() / 2
                ax.annotate(label(v), (centre, v), ha="center", va="bottom", fontsize=7)
    return xs


def _fmt_s(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:,.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.01:
        return f"{seconds:.3f} s"
    if seconds >= 1e-4:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


# ---------------------------------------------------------------------------
# Our scheme
# ---------------------------------------------------------------------------


def _draw_vector(values: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, DATA_SCALE, size=values)


def _check_first_block(
    master_key: MasterKey,
    vector: EncryptedVector,
    expected: np.ndarray,
    packing: Any,
    tolerance: float,
    what: str,
) -> float:
    """Decrypt only the first block of ``vector`` and compare it with ``expected``.

    Packing is sequential, so the first block's plaintexts hold the first
    ``block size * slots`` values. Cheap (one block), used for vectors we do not time.
    """
    from trapdoor.crypto.encoding import PackingLayout, decode_vector

    size = vector.layout.block_sizes()[0]
    sub = EncryptedVector(
        vector.job_key,
        BlockLayout(size, vector.layout.width),
        vector.elements[: size + 1],
        _trusted=True,
    )
    length = min(len(expected), size * packing.slots_per_plaintext)
    sub_packing = PackingLayout(
        modulus=packing.modulus,
        length=length,
        frac_bits=packing.frac_bits,
        slot_bits=packing.slot_bits,
        slot_bound=packing.slot_bound,
        max_terms=packing.max_terms,
    )
    decoded = decode_vector(decrypt_vector(master_key, sub), sub_packing)
    err = float(np.max(np.abs(decoded - expected[:length])))
    if not err <= tolerance:
        raise AssertionError(f"{what}: first block decodes with error {err:.3e} > {tolerance:.3e}")
    return err


def _encrypt_phase(
    job_key: JobKey,
    plaintexts: Sequence[int],
    second: Sequence[int],
    workers: int,
    window: int,
) -> tuple[dict[str, Any], EncryptedVector, EncryptedVector]:
    rng = secrets.SystemRandom()
    _log(f"encryptor setup with {workers} worker(s), window {window} ...")
    with _timed() as setup:
        encryptor = VectorEncryptor(job_key, workers=workers, window=window)
    try:
        _log(f"  setup {setup.wall:.2f} s; encrypting the whole vector ...")
        pids = _worker_pids(encryptor)

        def worker_cpu() -> list[float | None]:
            return [_proc_cpu_s(pid) for pid in pids]

        cpu0 = worker_cpu()
        with _timed() as first:
            v1 = encryptor.encrypt(plaintexts, rng)
        cpu1 = worker_cpu()
        _log(f"  first encryption {first.wall:.2f} s; second (steady state) ...")
        with _timed() as steady:
            v2 = encryptor.encrypt(second, rng)
        cpu2 = worker_cpu()
        _log(f"  second encryption {steady.wall:.2f} s")
        child_hwm = [_proc_hwm_mib(pid) for pid in pids]
        self_peak = _maxrss_mib(resource.RUSAGE_SELF)
    finally:
        encryptor.close()
    known = [m for m in child_hwm if m is not None]
    if len(known) != len(pids):  # no /proc: the largest finished child, times the count
        known = [_maxrss_mib(resource.RUSAGE_CHILDREN)] * len(pids)

    def cpu_delta(before: list[float | None], after: list[float | None]) -> list[float] | None:
        if not pids:  # one worker: the tables live in this process
            return None
        if any(v is None for v in [*before, *after]):
            return None
        return [b - a for a, b in zip(before, after, strict=True)]  # type: ignore[operator]

    result = {
        "workers": workers,
        "exponentiations": v1.layout.num_elements,
        "exponentiations_per_worker": _exponentiations_per_worker(
            job_key.width, workers, v1.layout.block_sizes()
        ),
        "worker_cpu_first_s": cpu_delta(cpu0, cpu1),
        "worker_cpu_steady_s": cpu_delta(cpu1, cpu2),
        "encrypt_cpu_steady_self_s": steady.cpu,
        "setup_s": setup.wall,
        "encrypt_first_s": first.wall,
        "encrypt_steady_s": steady.wall,
        "encrypt_s": max(first.wall, steady.wall),
        "encrypt_cpu_self_s": first.cpu,
        "self_peak_mib": self_peak,
        "children_peak_mib": known,
        # Upper bound: each process's own peak, added up.
        "participant_peak_mib": self_peak + sum(known),
    }
    return result, v1, v2


def _measure_ours(
    master_key: MasterKey, args: argparse.Namespace, x: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    from trapdoor.crypto.encoding import PackingLayout, decode_vector, encode_vector

    params = master_key.params
    n = params.n
    out: dict[str, Any] = {}

    with _timed() as t_layout:
        packing = PackingLayout(modulus=n, length=len(x), frac_bits=FRAC_BITS)
    with _timed() as t_encode:
        plaintexts, clip = encode_vector(x, packing, clip_bound=CLIP_BOUND)
    plaintexts_y, _ = encode_vector(y, packing, clip_bound=CLIP_BOUND)
    if clip.clipped:
        raise AssertionError(f"benchmark data was clipped: {clip}")
    blocks = BlockLayout(packing.num_plaintexts, args.width)
    out["packing"] = {
        "frac_bits": packing.frac_bits,
        "slot_bits": packing.slot_bits,
        "slots_per_plaintext": packing.slots_per_plaintext,
        "num_plaintexts": packing.num_plaintexts,
        "num_blocks": blocks.num_blocks,
        "num_elements": blocks.num_elements,
        "element_bytes": element_bytes(params),
        "clipped": clip.clipped,
        "max_abs": clip.max_abs,
    }
    out["encode_s"] = t_layout.wall + t_encode.wall
    _log(
        f"encode + pack {out['encode_s']:.3f} s: {packing.num_plaintexts} plaintexts of "
        f"{packing.slots_per_plaintext} slots, {blocks.num_blocks} blocks, "
        f"{blocks.num_elements} group elements"
    )

    with _timed() as t_key:
        job_key = generate_job_key(params, args.width, random.Random(DATA_SEED))
    out["job_key_gen_s"] = t_key.wall  # a KGC cost, shown for completeness

    # --- encryption with --workers, then with one worker --------------------------
    enc_multi, v1, v2 = _encrypt_phase(job_key, plaintexts, plaintexts_y, args.workers, args.window)
    out["encrypt"] = [enc_multi]
    if args.workers != 1:
        enc_one, w1, _ = _encrypt_phase(job_key, plaintexts, plaintexts_y, 1, args.window)
        out["encrypt"].append(enc_one)
        _check_first_block(master_key, w1, x, packing, TOLERANCE, "1-worker encryption")
        del w1

    # --- homomorphic addition --------------------------------------------------
    reps = 3 if args.quick else 7
    samples = []
    aggregate = v1
    for _ in range(reps):
        t0 = time.perf_counter()
        aggregate = v1 + v2
        samples.append(time.perf_counter() - t0)
    out["add_s"] = statistics.median(samples)
    out["add_samples_s"] = samples
    out["add_check_max_err"] = _check_first_block(
        master_key, aggregate, x + y, packing, 2 * TOLERANCE, "homomorphic sum"
    )
    _log(f"homomorphic addition {out['add_s'] * 1e3:.1f} ms (median of {reps})")

    # --- bytes on the wire -----------------------------------------------------
    frame = encode_frame(v1, {"job": "bench", "round": 0})
    out["frame_bytes"] = len(frame)
    out["payload_bytes"] = len(v1.to_bytes())
    out["bytes_per_value"] = len(frame) / len(x)
    del frame

    # --- master-key decryption --------------------------------------------------
    out["decrypt"] = []
    thread_counts = [args.workers] + ([1] if args.workers != 1 else [])
    decrypted: list[int] | None = None
    for threads in thread_counts:
        _log(f"master-key decryption with {threads} thread(s) ...")
        with _timed() as t_dec:
            pts = decrypt_vector(master_key, v1, workers=threads)
        _log(f"  {t_dec.wall:.2f} s")
        out["decrypt"].append({"threads": threads, "decrypt_s": t_dec.wall, "cpu_s": t_dec.cpu})
        if decrypted is None:
            decrypted = pts
        elif pts != decrypted:
            raise AssertionError("decryption with different thread counts disagrees")
    assert decrypted is not None
    with _timed() as t_decode:
        decoded = decode_vector(decrypted, packing)
    err = float(np.max(np.abs(decoded - x)))
    if not err <= TOLERANCE:
        raise AssertionError(f"decoded vector differs from the input by {err:.3e} > 2^-{FRAC_BITS}")
    out["decode_s"] = t_decode.wall
    out["max_abs_error"] = err
    _log(f"decode {t_decode.wall:.3f} s, max |error| {err:.3e} <= 2^-{FRAC_BITS}: OK")
    return out


# ---------------------------------------------------------------------------
# python-paillier baseline
# ---------------------------------------------------------------------------


def _measure_phe(bits: int, sample: int, x: np.ndarray) -> dict[str, Any]:
    from phe import paillier

    _log(f"python-paillier: {bits}-bit key, {sample} scalars ...")
    with _timed() as t_key:
        public, private = paillier.generate_paillier_keypair(n_length=bits)
    ints = [int(v) for v in np.rint(np.ldexp(x[:sample], FRAC_BITS)).astype(np.int64)]
    with _timed() as t_enc:
        cts = [public.encrypt(v) for v in ints]
    with _timed() as t_add:
        sums = [a + b for a, b in zip(cts, cts[1:] + cts[:1], strict=True)]
    with _timed() as t_dec:
        opened = [private.decrypt(c) for c in cts]
    if opened != ints:
        raise AssertionError("python-paillier baseline decrypted wrong values")
    if private.decrypt(sums[0]) != ints[0] + ints[1 % sample]:
        raise AssertionError("python-paillier baseline added wrong values")
    ct_bytes = (int(public.nsquare).bit_length() + 7) // 8
    values = len(x)
    per = {
        "encrypt": t_enc.wall / sample,
        "add": t_add.wall / sample,
        "decrypt": t_dec.wall / sample,
    }
    _log("  per scalar: " + ", ".join(f"{k} {_fmt_ms(v)}" for k, v in per.items()))
    return {
        "key_bits": bits,
        "samples": sample,
        "keygen_s": t_key.wall,
        "per_scalar_s": per,
        "extrapolated_s": {k: v * values for k, v in per.items()},
        "ciphertext_bytes": ct_bytes,
        "bytes_per_value": float(ct_bytes),
        "note": f"extrapolated from {sample} samples (one scalar per ciphertext, one core)",
    }


# ---------------------------------------------------------------------------
# Micro-benchmarks: where the time goes
# ---------------------------------------------------------------------------


def _measure_micro(master_key: MasterKey, window: int, quick: bool) -> dict[str, Any]:
    _log("micro-benchmarks of the primitives ...")
    params = master_key.params
    n, n2, g = params.n, params.nsquare, params.g
    rng = random.Random(7)
    reps = 5 if quick else 25
    exps = [params.random_exponent(rng) for _ in range(reps)]
    elems = [gmpy2.powmod(g, e, n2) * (1 + mpz(i + 1) * n) % n2 for i, e in enumerate(exps)]
    exponent_bits = int((n2 // 4).bit_length())

    it = iter(range(10**9))

    def cycle(seq: Sequence[Any]) -> Callable[[], Any]:
        return lambda: seq[next(it) % len(seq)]

    pick_e, pick_x = cycle(exps), cycle(elems)
    a, b = elems[0], elems[1]
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], object], count: int) -> None:
        out[f"{key}_s"], out[f"{key}_best_s"] = _per_op(fn, count)

    mul_reps = 2000 if not quick else 500
    t0 = time.perf_counter()
    for _ in range(mul_reps):
        a * b % n2
    out["mulmod_n2_s"] = (time.perf_counter() - t0) / mul_reps
    put("powmod_full", lambda: gmpy2.powmod(g, pick_e(), n2), max(3, reps // 3))
    with _timed() as t_table:
        table = FixedBaseTable(g, n2, exponent_bits, window)
    out["fixedbase_table_build_s"] = t_table.wall
    out["fixedbase_table_mib"] = table.approx_bytes / MIB
    out["fixedbase_windows"] = table.count
    put("fixedbase_pow", lambda: table.pow(pick_e()), reps)
    put("signed_digits", lambda: signed_digits(pick_e(), window, table.count), reps)
    # Multiplications per fixed-base exponentiation, counted on the benchmark exponents.
    nonzero = [sum(1 for d in signed_digits(e, window, table.count) if d) for e in exps]
    out["fixedbase_mults_per_pow"] = statistics.mean(nonzero) + 1  # + the final combine

    crt = master_key._crt
    put("class_crt", lambda: master_key.class_of(pick_x()), reps)
    put("class_half_powmod", lambda: gmpy2.powmod(pick_x() % crt.p2, crt.p - 1, crt.p2), reps)
    # What decrypt_vector does: classes of a list (powmod_base_list), per element.
    batch = elems * max(1, 100 // len(elems))
    batch_reps = 2 if quick else 5
    put("class_batch_list", lambda: master_key.classes_of(batch), batch_reps)
    out["class_batch_per_element_s"] = out.pop("class_batch_list_s") / len(batch)
    out["class_batch_per_element_best_s"] = out.pop("class_batch_list_best_s") / len(batch)
    put("lambda_powmod_n2", lambda: gmpy2.powmod(pick_x(), master_key.lam, n2), max(3, reps // 3))
    put(
        "element_to_bytes",
        lambda: int(pick_x()).to_bytes((n2.bit_length() + 7) // 8, "big"),
        reps,
    )
    _log(
        f"  fixed-base pow {_fmt_ms(out['fixedbase_pow_s'])} "
        f"(signed digits {_fmt_ms(out['signed_digits_s'])}), plain powmod "
        f"{_fmt_ms(out['powmod_full_s'])}, class (CRT) {_fmt_ms(out['class_crt_s'])}, "
        f"mulmod N^2 {out['mulmod_n2_s'] * 1e6:.1f} us"
    )
    return out


# ---------------------------------------------------------------------------
# Targets, table, chart
# ---------------------------------------------------------------------------


def _targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    ours, phe = run["ours"], run["phe"]
    multi = ours["encrypt"][0]
    speedup = phe["extrapolated_s"]["encrypt"] / multi["encrypt_s"]
    decrypt_multi = ours["decrypt"][0]
    memory = max(e["participant_peak_mib"] for e in ours["encrypt"])
    w = multi["workers"]
    return [
        {
            "name": f"encryption of the whole vector, {w} workers",
            "measured": multi["encrypt_s"],
            "shown": _fmt_s(multi["encrypt_s"]),
            "target": "<= 5 s",
            "pass": multi["encrypt_s"] <= 5.0,
        },
        {
            "name": "speed-up vs per-scalar python-paillier",
            "measured": speedup,
            "shown": f"{speedup:,.0f}x",
            "target": ">= 250x",
            "pass": speedup >= 250,
        },
        {
            "name": "homomorphic addition of one upload",
            "measured": ours["add_s"],
            "shown": _fmt_s(ours["add_s"]),
            "target": "<= 0.05 s",
            "pass": ours["add_s"] <= 0.05,
        },
        {
            "name": f"master-key decryption, whole vector, {decrypt_multi['threads']} threads",
            "measured": decrypt_multi["decrypt_s"],
            "shown": _fmt_s(decrypt_multi["decrypt_s"]),
            "target": "<= 3 s",
            "pass": decrypt_multi["decrypt_s"] <= 3.0,
        },
        {
            "name": "bytes per value on the wire",
            "measured": ours["bytes_per_value"],
            "shown": f"{ours['bytes_per_value']:.2f} B",
            "target": "<= 8 B",
            "pass": ours["bytes_per_value"] <= 8.0,
        },
        {
            "name": "participant peak memory",
            "measured": memory,
            "shown": f"{memory:,.0f} MiB",
            "target": "<= 1 GiB",
            "pass": memory <= 1024.0,
        },
    ]


def _table(run: dict[str, Any]) -> str:
    ours, phe, micro = run["ours"], run["phe"], run["micro"]
    pk = ours["packing"]
    values = run["values"]
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, shown: str, target: str = "", result: str = "") -> None:
        rows.append((name, shown, target, result))

    targets = {t["name"]: t for t in run["targets"]}

    def target_row(name: str) -> None:
        t = targets[name]
        row(name, t["shown"], t["target"], "PASS" if t["pass"] else "MISS")

    multi = ours["encrypt"][0]
    row("encode + pack", _fmt_s(ours["encode_s"]))
    for enc in ours["encrypt"]:
        w = enc["workers"]
        label = f"{w} workers" if w > 1 else "1 worker"
        what = "tables + worker processes" if w > 1 else "tables, in process"
        row(f"encryptor setup, {label} ({what})", _fmt_s(enc["setup_s"]))
        row(
            f"encrypt whole vector, {label}: 1st / 2nd run",
            f"{_fmt_s(enc['encrypt_first_s'])} / {_fmt_s(enc['encrypt_steady_s'])}",
        )
        busiest = max(enc["exponentiations_per_worker"])
        if enc["worker_cpu_first_s"] is not None:
            cpus = [
                " + ".join(f"{c:.2f}" for c in enc[key])
                for key in ("worker_cpu_first_s", "worker_cpu_steady_s")
            ]
            row("  CPU s used by each worker: 1st / 2nd run", f"{cpus[0]} / {cpus[1]}")
        else:
            row(
                "  CPU s used (this process): 1st / 2nd run",
                f"{enc['encrypt_cpu_self_s']:.2f} / {enc['encrypt_cpu_steady_self_s']:.2f}",
            )
        row(
            f"  exponentiations per worker ({enc['exponentiations']:,} in all)",
            " / ".join(f"{c:,}" for c in enc["exponentiations_per_worker"]),
        )
        row(
            f"  model: busiest worker {busiest:,} x fixed-base exp. (best)",
            _fmt_s(busiest * micro["fixedbase_pow_best_s"]),
        )
        if enc is multi:
            target_row(f"encryption of the whole vector, {w} workers")
    target_row("homomorphic addition of one upload")
    elements = pk["num_elements"]
    for dec in ours["decrypt"]:
        t = dec["threads"]
        if dec is ours["decrypt"][0]:
            target_row(f"master-key decryption, whole vector, {t} threads")
        else:
            row(f"master-key decryption, whole vector, {t} thread", _fmt_s(dec["decrypt_s"]))
        row(
            "  CPU s used / cores busy on average",
            f"{dec['cpu_s']:.2f} / {dec['cpu_s'] / dec['decrypt_s']:.2f}",
        )
        row(
            f"  model: {elements:,} elements x class (batch, best) / {t}",
            _fmt_s(elements * micro["class_batch_per_element_best_s"] / t),
        )
    row(
        f"decode (max |error| {ours['max_abs_error']:.2e} <= 2^-{FRAC_BITS}: OK)",
        _fmt_s(ours["decode_s"]),
    )
    target_row("bytes per value on the wire")
    for enc in ours["encrypt"]:
        kids = enc["children_peak_mib"]
        detail = (
            f"self {enc['self_peak_mib']:,.0f} + workers " + " + ".join(f"{k:,.0f}" for k in kids)
            if kids
            else "self only"
        )
        row(
            f"  peak RSS, {enc['workers']} worker{'s' if enc['workers'] > 1 else ''}: {detail}",
            f"{enc['participant_peak_mib']:,.0f} MiB",
        )
    target_row("participant peak memory")
    sep = ("", "", "", "")
    rows.append(sep)
    per = phe["per_scalar_s"]
    ext = phe["extrapolated_s"]
    row(
        f"python-paillier {phe['key_bits']}-bit, one scalar per ciphertext, "
        f"extrapolated from {phe['samples']} samples",
        "",
    )
    row(
        "  phe encrypt: per scalar / whole vector",
        f"{_fmt_ms(per['encrypt'])} / {_fmt_s(ext['encrypt'])}",
    )
    row(
        "  phe add one upload: per scalar / whole vector",
        f"{_fmt_ms(per['add'])} / {_fmt_s(ext['add'])}",
    )
    row(
        "  phe decrypt: per scalar / whole vector",
        f"{_fmt_ms(per['decrypt'])} / {_fmt_s(ext['decrypt'])}",
    )
    row("  phe bytes per value", f"{phe['bytes_per_value']:.0f} B")
    target_row("speed-up vs per-scalar python-paillier")
    for enc in ours["encrypt"][1:]:
        row(
            f"  speed-up, {enc['workers']} worker vs phe (one core each)",
            f"{ext['encrypt'] / enc['encrypt_s']:,.0f}x",
        )
    add_speedup = ext["add"] / ours["add_s"]
    decrypt_speedup = ext["decrypt"] / ours["decrypt"][0]["decrypt_s"]
    row("  add / decrypt speed-up vs phe", f"{add_speedup:,.0f}x / {decrypt_speedup:,.0f}x")
    row(
        "  bytes per value: phe / ours",
        f"{phe['bytes_per_value'] / ours['bytes_per_value']:.0f}x smaller",
    )
    rows.append(sep)
    row("where the time goes, per operation: median (best)", "")

    def both(key: str) -> str:
        return f"{_fmt_ms(micro[key + '_s'])} ({_fmt_ms(micro[key + '_best_s'])})"

    row(
        f"  fixed-base exp. mod N^2, window {run['window']} "
        f"({micro['fixedbase_mults_per_pow']:.0f} mulmods)",
        both("fixedbase_pow"),
    )
    row("    of which signed-digit recoding (Python)", both("signed_digits"))
    row("  plain powmod mod N^2, same exponent size", both("powmod_full"))
    row("  one mulmod N^2", f"{micro['mulmod_n2_s'] * 1e6:.1f} us")
    row(
        f"  fixed-base table build, one base ({micro['fixedbase_table_mib']:.0f} MiB)",
        _fmt_s(micro["fixedbase_table_build_s"]),
    )
    row("  class of one element (CRT: 2 powmods mod p^2, q^2)", both("class_crt"))
    row("    one half (x^(p-1) mod p^2)", both("class_half_powmod"))
    row("    in a batch (powmod_base_list), per element", both("class_batch_per_element"))
    row("  x^lambda mod N^2 without CRT (for comparison)", both("lambda_powmod_n2"))

    header = ("measure", "measured", "target", "result")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(4)]
    lines = [
        f"Trapdoor FL crypto benchmark: BCP {run['bits']}-bit N, {values:,} values, "
        f"job key width {run['width']}, fixed-base window {run['window']}",
        f"machine: {run['machine']['cpus']} CPUs, {run['machine']['platform']}, Python "
        f"{run['machine']['python']}, gmpy2 {run['machine']['gmpy2']}; load average "
        f"{run['load_start']} at start, {run['load_end']} at end",
        f"packing: {pk['slots_per_plaintext']} slots x {pk['slot_bits']} bits per plaintext, "
        f"{pk['num_plaintexts']:,} plaintexts, {pk['num_blocks']} blocks, "
        f"{pk['num_elements']:,} group elements of {pk['element_bytes']} B",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    passed = sum(t["pass"] for t in run["targets"])
    lines.append("")
    lines.append(f"targets met: {passed} of {len(run['targets'])}")
    if run["quick"]:
        lines.append(
            "(--quick smoke test: the targets are for the default 2048-bit, 109,386-value run)"
        )
    return "\n".join(lines)


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(7.5 * len(runs), 5), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        ours, phe = run["ours"], run["phe"]
        groups = ["encrypt", "add one upload", "decrypt"]
        series: list[tuple[str, list[float], str]] = []
        multi = ours["encrypt"][0]
        series.append(
            (
                f"BCP packed, {multi['workers']} workers/threads",
                [multi["encrypt_s"], ours["add_s"], ours["decrypt"][0]["decrypt_s"]],
                "tab:blue",
            )
        )
        if len(ours["encrypt"]) > 1:
            series.append(
                (
                    "BCP packed, 1 worker/thread",
                    [
                        ours["encrypt"][1]["encrypt_s"],
                        math.nan,
                        ours["decrypt"][-1]["decrypt_s"],
                    ],
                    "tab:cyan",
                )
            )
        ext = phe["extrapolated_s"]
        series.append(
            (
                f"python-paillier, one scalar per ciphertext (extrapolated from {phe['samples']})",
                [ext["encrypt"], ext["add"], ext["decrypt"]],
                "tab:red",
            )
        )
        # addition has no worker count: its NaN leaves one bar of the group empty
        xs = grouped_bars(ax, len(groups), series, _fmt_s)
        ax.set_yscale("log")
        top = max(v for _, vals, _ in series for v in vals if not math.isnan(v))
        ax.set_ylim(top=top * 30)  # room for the legend above the tallest bar
        ax.set_xticks(xs, groups)
        ax.set_ylabel("seconds for the whole vector (log scale)")
        ax.set_title(f"{run['values']:,} values, {run['bits']}-bit keys")
        ax.legend(fontsize=8, loc="upper center")
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _run_size(bits: int, args: argparse.Namespace) -> dict[str, Any]:
    master_key = load_demo_master_key(bits)
    _log(f"=== {bits}-bit demo parameters, {args.values:,} values ===")
    x = _draw_vector(args.values, DATA_SEED)
    y = _draw_vector(args.values, DATA_SEED + 1)
    load_start = _loadavg()
    t0 = time.perf_counter()
    ours = _measure_ours(master_key, args, x, y)
    phe = _measure_phe(bits, args.paillier_sample, x)
    micro = _measure_micro(master_key, args.window, args.quick)
    run: dict[str, Any] = {
        "bits": bits,
        "values": args.values,
        "workers": args.workers,
        "width": args.width,
        "window": args.window,
        "quick": args.quick,
        "data": {
            "distribution": "normal",
            "scale": DATA_SCALE,
            "seed": DATA_SEED,
            "clip_bound": CLIP_BOUND,
        },
        "machine": _machine(),
        "load_start": None if load_start is None else round(load_start, 2),
        "load_end": None if (le := _loadavg()) is None else round(le, 2),
        "total_s": time.perf_counter() - t0,
        "ours": ours,
        "phe": phe,
        "micro": micro,
        "peak_rss_mib": {
            "self": _maxrss_mib(resource.RUSAGE_SELF),
            "largest_child": _maxrss_mib(resource.RUSAGE_CHILDREN),
        },
    }
    run["targets"] = _targets(run)
    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.crypto_bench",
        description="Packed BCP encryption with shared randomness vs per-scalar python-paillier.",
    )
    p.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=None,
        help="demo parameter size(s): 1024, 2048, 3072 (default 2048; 1024 with --quick)",
    )
    p.add_argument(
        "--values",
        type=int,
        default=None,
        help=f"vector length (default {MNIST_MLP_VALUES:,}, the MNIST MLP; 10,000 with --quick)",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="encryption processes / decryption threads"
    )
    p.add_argument("--width", type=int, default=16, help="job key width L (plaintexts per block)")
    p.add_argument("--window", type=int, default=7, help="fixed-base table window")
    p.add_argument(
        "--paillier-sample",
        type=int,
        default=None,
        help="python-paillier scalars to measure (default 200; 20 with --quick)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1024-bit parameters, 10,000 values, small phe sample",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.bits is None:
        args.bits = [1024] if args.quick else [2048]
    if args.values is None:
        args.values = 10_000 if args.quick else MNIST_MLP_VALUES
    if args.paillier_sample is None:
        args.paillier_sample = 20 if args.quick else 200
    if args.values < 1 or args.paillier_sample < 1 or args.workers < 1 or args.width < 1:
        print(
            "--values, --paillier-sample, --workers and --width must be positive", file=sys.stderr
        )
        return 2
    args.paillier_sample = min(args.paillier_sample, args.values)

    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for bits in args.bits:
        path = demo_params_path(bits)
        if not path.is_file():
            reason = f"no demo parameter file {path}"
            print(f"skipped {bits} bits: {reason}", file=sys.stderr)
            skipped.append({"bits": bits, "reason": reason})
            continue
        runs.append(_run_size(bits, args))

    for run in runs:
        print(_table(run))
        print()
    for s in skipped:
        print(f"skipped {s['bits']} bits: {s['reason']}")
    if not runs:
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "crypto_bench.json"
    png_path = args.out / "crypto_bench.png"
    doc = {
        "command": command_line("bench.crypto_bench", argv),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": runs,
        "skipped": skipped,
        "peak_rss_mib": {
            "self": _maxrss_mib(resource.RUSAGE_SELF),
            "largest_child": _maxrss_mib(resource.RUSAGE_CHILDREN),
        },
    }
    json_path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    _plot(runs, png_path)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
