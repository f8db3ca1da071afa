"""Accuracy benchmark: encrypted Trapdoor FL vs plaintext FedAvg, round by round.

Run ``python -m bench.accuracy_bench`` (or ``--quick``). For every configuration in
dataset x partition scheme x participants x model x aggregation -- by default
{digits, mnist} x {iid, dirichlet (alpha 0.5)} x {5, 10 participants} x {mlp} x
{masked}; ``--models`` takes any of the demo's models (mlp, cnn, rnn, torch-mlp,
torch-cnn) and ``--aggregations`` either mode (masked, bcp) -- it runs the real demo
(:func:`trapdoor.demo.job.run_demo`: KGC, parameter server and one node process per
participant on loopback, ``--no-skip``) and the plaintext FedAvg reference the demo runs
on the same model, data, partitions, seed and schedule, and records the test accuracy of
both after every round. Writes ``<out>/accuracy_bench.json`` (one entry per
configuration, naming its model and aggregation) and ``<out>/accuracy_bench.png`` (one
panel per configuration). ``--quick`` is digits, IID, K=5, 2 rounds, 1024 bits, with
the models and aggregations given (default mlp, masked).

Key size does not enter the accuracy (the plaintexts are exact integers whatever ``N``
is, and in the masked mode the key only seals the mask seeds), so MNIST runs at 1024 bits
by default to fit the time budget; the JSON says which.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.crypto_bench import _log, _machine
from trapdoor.demo.job import AGGREGATIONS, MODELS, parse_demo_options, run_demo

__all__ = ["TARGET_PP", "main", "run_accuracy"]

TARGET_PP = 0.1  # encrypted accuracy within 0.1 percentage points of plaintext, every round


def _configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for dataset, scheme, k, model, aggregation in itertools.product(
        args.datasets, args.schemes, args.participants, args.models, args.aggregations
    ):
        rounds = args.digits_rounds if dataset == "digits" else args.mnist_rounds
        bits = args.digits_bits if dataset == "digits" else args.mnist_bits
        out.append(
            {
                "dataset": dataset,
                "scheme": scheme,
                "participants": k,
                "model": model,
                "aggregation": aggregation,
                "rounds": rounds,
                "bits": bits,
            }
        )
    return out


def _run_one(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    demo_args = parse_demo_options(
        [
            "--dataset",
            cfg["dataset"],
            "--partition-scheme",
            cfg["scheme"],
            "--participants",
            str(cfg["participants"]),
            "--model",
            cfg["model"],
            "--aggregation",
            cfg["aggregation"],
            "--rounds",
            str(cfg["rounds"]),
            "--bits",
            str(cfg["bits"]),
            "--seed",
            str(seed),
            "--no-skip",
            "--quiet",
        ]
    )
    with contextlib.redirect_stdout(sys.stderr):  # the demo's own table goes to the log
        summary = run_demo(demo_args)
    rounds = summary["rounds"]
    max_pp = 100.0 * max(r["abs_diff"] for r in rounds)
    return {
        **cfg,
        "seed": seed,
        "model": summary.get("model_name", cfg["model"]),
        "aggregation": summary.get("aggregation", cfg["aggregation"]),
        "num_parameters": summary.get("num_parameters"),
        "learning_rate": summary.get("learning_rate"),
        "initial_accuracy": summary["initial_accuracy"],
        "encrypted": [r["encrypted_accuracy"] for r in rounds],
        "plaintext": [r["plaintext_accuracy"] for r in rounds],
        "max_abs_diff_pp": max_pp,
        "pass": round(max_pp, 9) <= TARGET_PP,  # 1 of 1,000 test images is 0.1 pp exactly
        "job_seconds": summary["job_seconds"],
        "total_seconds": summary["total_seconds"],
        "transfer": summary["transfer"],
    }


def _label(r: dict[str, Any]) -> str:
    """A configuration's name in the plot, e.g. ``digits iid K=5 mlp/masked``."""
    return f"{r['dataset']} {r['scheme']} K={r['participants']} {r['model']}/{r['aggregation']}"


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results, strict=False):
        xs = list(range(1, len(r["encrypted"]) + 1))
        ax.plot(xs, r["plaintext"], "o-", label="plaintext FedAvg")
        ax.plot(xs, r["encrypted"], "x--", label="encrypted")
        ax.set_title(_label(r), fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xticks(xs)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Run every configuration; returns the JSON document it also writes."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    configs = _configs(args)
    doc: dict[str, Any] = {"results": results}
    for cfg in tqdm(configs, desc="accuracy configs", unit="job", file=sys.stderr):
        _log(f"accuracy: {cfg}")
        results.append(_run_one(cfg, args.seed))
        _log(f"  max |enc - plain| = {results[-1]['max_abs_diff_pp']:.4f} pp")
        doc = {  # written after every configuration: a cut-short run keeps what it did
            "benchmark": "accuracy",
            "target_pp": TARGET_PP,
            "quick": bool(args.quick),
            "machine": _machine(),
            "seconds": time.perf_counter() - t0,
            "planned": len(configs),
            "results": results,
        }
        (out / "accuracy_bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(results, out / "accuracy_bench.png")
    return doc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.accuracy_bench", description=__doc__)
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist"])
    p.add_argument("--schemes", nargs="+", default=["iid", "dirichlet"])
    p.add_argument("--participants", nargs="+", type=int, default=[5, 10])
    p.add_argument("--models", nargs="+", choices=MODELS, default=["mlp"], help="default: mlp")
    p.add_argument(
        "--aggregations",
        nargs="+",
        choices=AGGREGATIONS,
        default=["masked"],
        help="default: masked",
    )
    p.add_argument("--digits-rounds", type=int, default=5)
    p.add_argument("--mnist-rounds", type=int, default=3)
    p.add_argument("--digits-bits", type=int, default=2048)
    p.add_argument("--mnist-bits", type=int, default=1024)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--quick",
        action="store_true",
        help="digits, IID, K=5, 2 rounds, 1024 bits (models and aggregations as given)",
    )
    p.add_argument("--out", default="bench/results")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.datasets, args.schemes, args.participants = ["digits"], ["iid"], [5]
        args.digits_rounds, args.digits_bits = 2, 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    doc = run_accuracy(parse_args(argv))
    for r in doc["results"]:
        print(
            f"{r['dataset']:6} {r['scheme']:9} K={r['participants']:<3} "
            f"model={r['model']:9} agg={r['aggregation']:6} "
            f"rounds={r['rounds']} bits={r['bits']} "
            f"enc={[f'{a:.4f}' for a in r['encrypted']]} "
            f"plain={[f'{a:.4f}' for a in r['plaintext']]} "
            f"max diff {r['max_abs_diff_pp']:.4f} pp {'PASS' if r['pass'] else 'MISS'}"
        )
    return 0 if all(r["pass"] for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
