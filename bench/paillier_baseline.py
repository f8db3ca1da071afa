"""Per-scalar Paillier baseline in the style of Phong et al. (IEEE TIFS 2018).

The baseline system: python-paillier (``phe``), one key pair shared by all participants,
one ciphertext per model parameter (fixed point, 20 fractional bits), the server adds the
participants' ciphertexts, every participant downloads the encrypted sum and decrypts it
with the shared secret key. Running it whole on the 109,386-parameter MLP would take hours
(about 25 minutes of encryption per participant per round here), so this module measures
encrypt / add / decrypt on ``--sample`` scalars (:func:`bench.crypto_bench._measure_phe`,
which also checks that the sample decrypts and adds correctly) and **extrapolates**
linearly: every parameter costs the same, independently of the others.

Per round with ``K`` participants and ``n`` parameters the baseline costs

* participant: ``n`` encryptions (upload) and ``n`` decryptions (download);
* server: ``(K - 1) n`` ciphertext additions;
* bytes: ``n`` ciphertexts of ``2 |N|`` bits up and the same down, per participant (raw
  integers: phe's own JSON serialisation would be larger, so this favours phe).

Network time is left out for phe (it would only add to its side), and local training is
left out on both sides (it is the same model and data).

``compare(baseline, round_doc)`` sets the baseline beside the measured rounds of
:mod:`bench.round_bench` from the same run and gives the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.crypto_bench import (
    DATA_SEED,
    MNIST_MLP_VALUES,
    _draw_vector,
    _loadavg,
    _machine,
    _measure_phe,
)

__all__ = ["compare", "main", "run_baseline"]

TIME_TARGET = 100.0  # >= 100x less time per round
BYTES_TARGET = 50.0  # >= 50x fewer bytes per round


def _phe_cpu(bits: int, sample: int, x: Any) -> dict[str, float]:
    """CPU seconds per scalar (``time.process_time``: phe is single-threaded, so this is
    its work, with little of the waiting a loaded machine adds to wall time)."""
    import time

    from phe import paillier

    public, private = paillier.generate_paillier_keypair(n_length=bits)
    ints = [int(v) for v in (x[:sample] * 2**20).round().astype("int64")]
    c0 = time.process_time()
    cts = [public.encrypt(v) for v in ints]
    c1 = time.process_time()
    sums = [a + b for a, b in zip(cts, cts[1:] + cts[:1], strict=True)]
    c2 = time.process_time()
    opened = [private.decrypt(c) for c in cts]
    c3 = time.process_time()
    if opened != ints or len(sums) != sample:
        raise AssertionError("python-paillier baseline decrypted wrong values")
    return {"encrypt": (c1 - c0) / sample, "add": (c2 - c1) / sample, "decrypt": (c3 - c2) / sample}


def phe_round(per_scalar: dict[str, float], ct_bytes: int, n: int, k: int) -> dict[str, float]:
    """Extrapolated cost of one baseline round with ``k`` participants, ``n`` parameters."""
    enc, add, dec = per_scalar["encrypt"] * n, per_scalar["add"] * n, per_scalar["decrypt"] * n
    agg = (k - 1) * add
    return {
        "k": k,
        "params": n,
        "participant_encrypt_s": enc,
        "server_aggregate_s": agg,
        "participant_decrypt_s": dec,
        # participants in parallel: encrypt, server sums, decrypt (network left out)
        "round_critical_path_s": enc + agg + dec,
        "round_cpu_s": k * (enc + dec) + agg,
        "bytes_up_per_participant": n * ct_bytes,
        "bytes_down_per_participant": n * ct_bytes,
        "bytes_per_round": 2 * k * n * ct_bytes,
    }


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Measure phe on a sample and extrapolate to ``args.params`` and each ``K``."""
    x = _draw_vector(args.params, DATA_SEED)
    measured = _measure_phe(args.bits, args.sample, x)
    measured["per_scalar_cpu_s"] = _phe_cpu(args.bits, args.sample, x)
    rounds = [
        phe_round(measured["per_scalar_s"], measured["ciphertext_bytes"], args.params, k)
        for k in args.k
    ]
    doc = {
        "benchmark": "paillier_baseline",
        "machine": _machine(),
        "bits": args.bits,
        "sample": args.sample,
        "params": args.params,
        "measured": measured,
        "loadavg": _loadavg(),
        "rounds": rounds,
        "note": f"measured on {args.sample} scalars and extrapolated linearly to "
        f"{args.params:,} parameters per participant and to K participants",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paillier_baseline.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def compare(baseline: dict[str, Any], round_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours (measured rounds of the main series) beside phe (extrapolated), with ratios.

    Time is compared two ways, training left out on both sides: the critical path of a
    round with participants working in parallel (ours: slowest encode+encrypt, mean upload,
    release latency, mean download+open; phe: encrypt, server sum, decrypt) and the CPU
    seconds all parties spend on the round. Our encryption counts whole, masks included,
    although a participant computes them while it trains: with training left out there is
    nothing for them to hide behind (and phe could precompute its ``r^N`` the same way).
    """
    per = baseline["measured"]["per_scalar_s"]
    ct = int(baseline["measured"]["ciphertext_bytes"])
    rows = []
    for r in round_doc["runs"]:
        if r["series"] != "participants" or r["bits"] != baseline["bits"]:
            continue
        k, n = r["k"], r["params"]
        phe = phe_round(per, ct, n, k)
        phe_cpu = phe_round(baseline["measured"].get("per_scalar_cpu_s", per), ct, n, k)
        m = r["mean_s"]
        ours_path = (
            r.get("max_encode_encrypt_total_s", r["max_encode_encrypt_s"])
            + m["upload_s"]
            + r["release_latency_s"]
            + m["download_s"]
            + m["decrypt_s"]
        )
        ours_cpu = (
            k * (r["participant_cpu_s"] - m["train_s"]) + r["round_ps_cpu_s"] + r["round_kgc_cpu_s"]
        )
        ours_bytes = k * (r["bytes_up"] + r["bytes_down"])
        rows.append(
            {
                "k": k,
                "params": n,
                "ours_critical_path_s": ours_path,
                "phe_critical_path_s": phe["round_critical_path_s"],
                "time_ratio": phe["round_critical_path_s"] / ours_path,
                "ours_cpu_s": ours_cpu,
                "phe_cpu_s": phe_cpu["round_cpu_s"],
                "cpu_ratio": phe_cpu["round_cpu_s"] / ours_cpu,
                "ours_bytes": ours_bytes,
                "phe_bytes": phe["bytes_per_round"],
                "bytes_ratio": phe["bytes_per_round"] / ours_bytes,
                "time_pass": phe["round_critical_path_s"] / ours_path >= TIME_TARGET,
                "bytes_pass": phe["bytes_per_round"] / ours_bytes >= BYTES_TARGET,
            }
        )
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.paillier_baseline", description=__doc__)
    p.add_argument("--bits", type=int, default=2048)
    p.add_argument("--sample", type=int, default=200)
    p.add_argument("--params", type=int, default=MNIST_MLP_VALUES)
    p.add_argument("--k", nargs="+", type=int, default=[2, 5, 10, 20])
    p.add_argument("--quick", action="store_true", help="20 samples, 1024 bits")
    p.add_argument("--out", default="bench/results")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:  # same key size as the quick round bench, so the two compare
        args.sample, args.bits = 20, 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run_baseline(args)
    for r in doc["rounds"]:
        print(
            f"K={r['k']:<3} encrypt {r['participant_encrypt_s']:,.0f} s, sum "
            f"{r['server_aggregate_s']:,.1f} s, decrypt {r['participant_decrypt_s']:,.0f} s, "
            f"bytes/round {r['bytes_per_round']:,}"
        )
    round_json = Path(args.out) / "round_bench.json"
    if round_json.exists():
        for c in compare(doc, json.loads(round_json.read_text())):
            print(
                f"K={c['k']:<3} time x{c['time_ratio']:.0f}, cpu x{c['cpu_ratio']:.0f}, "
                f"bytes x{c['bytes_ratio']:.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
