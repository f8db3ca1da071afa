"""The two aggregation modes side by side: one round through the real services (issue 12).

Run ``python -m bench.aggregation_bench`` (or ``--quick``). In one run, on one machine, it
starts a :class:`~trapdoor.demo.cluster.LocalCluster` (real KGC and PS processes on
loopback, SQLite) and measures a round of a masked job and of a bcp job on the same model
(default: the 109,386-parameter MNIST MLP), key size (2048 bits) and ``K`` (10), then the
masked mode alone at larger ``K`` (default 100). Participants are played in this process,
one after the other, with :class:`~trapdoor.participant.client.ParticipantClient`; each job has two
rounds and the second is measured (the steady state: a participant's seed or vector
encryption masks are computed while it trains, as the node does).

Per mode it records, per participant: local training; what is left after training
(masked: clip, encode, seed, ChaCha20 mask, ``Enc(s)`` from the precomputed masks,
statement signature and frame, ``after_training_s``; bcp: encode and the precomputed
encryption, plus its commitment and audit); the upload request; the download and opening
of the release (masked: the signed bundle and the K listed uploads, digest checks,
``next_model``); bytes up and down. And per round: the PS's CPU seconds for the upload
phase divided by ``K`` (HTTP, token, checks, storage; and at the last upload, closing
``Z``; /proc counts in 10 ms ticks, so small K reads coarse), the PS's aggregation of one
upload alone (:func:`trapdoor.ps.masked.add_uploads` on the round's frames, in this
process, median of 5), the
release latency (last upload, or last audit for bcp, to the PS's ``released_at`` stamp)
and the KGC's CPU seconds in that window. ``critical_path_s`` is a deployment's round
time with participants in parallel: the slowest participant's training, after-training
work and upload, the release, and the slowest download and opening.

Also in the same run, when ``flwr`` is installed: Flower's own SecAgg+ and plain FedAvg on
the same model size and ``K`` (:mod:`bench.flower_bench`). Writes
``<out>/aggregation_bench.json``, ``.txt`` and ``.png``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.crypto_bench import _loadavg, _log, _machine, grouped_bars, write_outputs
from bench.round_bench import (
    MODELS,
    _cpu,
    _db_bytes,
    _wait_until_idle,
    job_definition,
    measure_round,
    num_params,
)
from trapdoor.crypto.masking import vector_to_bytes
from trapdoor.demo.cluster import LocalCluster
from trapdoor.participant.client import ParticipantClient, fetch_kgc_params
from trapdoor.participant.node import dataset_partitions
from trapdoor.protocol.job import initial_state
from trapdoor.ps.masked import add_uploads

__all__ = ["main", "measure_masked_round", "run_aggregation_bench"]

#: The issue's targets for the masked mode (K = 10 unless said otherwise).
TARGETS = {
    "bytes_up_per_param": 4.5,
    "after_training_s": 0.020,
    "ps_per_upload_s": 0.002,
    "release_latency_s_k10": 0.5,
    "release_latency_s_k100": 3.0,
}


def _enrol(cluster: LocalCluster, k: int) -> list[ParticipantClient]:
    params = fetch_kgc_params(cluster.kgc_url)
    clients = []
    for i in range(k):
        enrolment = cluster.enrol(f"m{i}-{secrets.token_hex(2)}", "participant")
        clients.append(
            ParticipantClient.enrol(
                cluster.kgc_url,
                enrolment["subject_id"],
                enrolment["code"],
                params,
                min_quorum=min(3, k),
            )
        )
    return clients


def _median_s(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _released(cluster: LocalCluster, job_id: str, t: int) -> dict[str, Any]:
    ops = cluster.ps_operator()
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        status: dict[str, Any] = ops.get_json(f"/v1/jobs/{job_id}/rounds/{t}")
        if status.get("status") == "released":
            return status
        if status.get("status") == "failed":
            raise RuntimeError(f"round {t} failed: {status}")
        time.sleep(0.2)
    raise RuntimeError(f"round {t} not released in time")


def measure_masked_round(
    cluster: LocalCluster, k: int, model_name: str, *, seed: int, rounds: int = 2
) -> dict[str, Any]:
    """A ``rounds``-round masked job with ``k`` participants; its last round measured."""
    assert cluster.kgc is not None and cluster.param_server is not None
    kgc_pid, ps_pid = cluster.kgc.popen.pid, cluster.param_server.popen.pid
    layers = MODELS[model_name]
    clients = _enrol(cluster, k)
    dataset, parts = dataset_partitions("mnist", k, "iid", seed)
    job_id = f"masked-{model_name}-k{k}-{secrets.token_hex(2)}"
    subjects = [c.identity.subject_id for c in clients]
    definition = job_definition(
        job_id, layers, subjects, [len(p) for p in parts], seed, rounds, "masked"
    )
    cluster.ps_operator().post_json("/v1/jobs", definition)
    _wait_until_idle(ps_pid)
    jobs = [c.fetch_job(cluster.ps_url, job_id) for c in clients]
    weights = jobs[0].initial_weights
    per: list[dict[str, Any]] = []
    release_s = ps_upload_cpu_s = kgc_release_cpu_s = 0.0
    db_round = 0
    for t in range(rounds):
        per = []
        db0 = _db_bytes(cluster.workdir, "ps.db")
        prepared = []
        for i, (c, job) in enumerate(zip(clients, jobs, strict=True)):
            X, y = dataset.X_train[parts[i]], dataset.y_train[parts[i]]
            ready = c.prepare_masked_update(job, t, weights, X, y)
            prepared.append(ready)
            per.append(dict(ready.metrics["timings"]))
        cpu_ps0 = _cpu(ps_pid)
        for c, job, ready, row in zip(clients, jobs, prepared, per, strict=True):
            c.upload_masked(job, ready)
            row["upload_s"] = ready.metrics["timings"]["upload_s"]
            row["bytes_up"] = ready.metrics["bytes_up"]
        t_last = time.time()
        ps_upload_cpu_s = _cpu(ps_pid) - cpu_ps0
        cpu_kgc0 = _cpu(kgc_pid)
        status = _released(cluster, job_id, t)
        release_s = float(status["released_at"]) - t_last
        kgc_release_cpu_s = _cpu(kgc_pid) - cpu_kgc0
        models = []
        for c, row in zip(clients, per, strict=True):
            t0 = time.perf_counter()
            models.append(c.download_model(cluster.ps_url, job_id, t, weights))
            row["download_open_s"] = time.perf_counter() - t0
            row["bytes_down"] = c.last_download_bytes
        if any(not np.array_equal(models[0], m) for m in models[1:]):
            raise AssertionError("participants opened different models")
        weights = models[0]
        db_round = _db_bytes(cluster.workdir, "ps.db") - db0
    layout = jobs[0].masked_layout
    frames = [p.frame for p in prepared]
    base = vector_to_bytes(initial_state(layout, jobs[0].initial_weights), layout.ring)
    add_s = _median_s(lambda: add_uploads(layout, base, frames), 5) / k
    for c in clients:
        c.close()
    n = num_params(layers)
    mean = {key: statistics.fmean(r[key] for r in per) for key in per[0]}
    critical = (
        max(r["train_s"] for r in per)
        + max(r["after_training_s"] for r in per)
        + max(r["upload_s"] for r in per)
        + release_s
        + max(r["download_open_s"] for r in per)
    )
    result = {
        "mode": "masked",
        "k": k,
        "model": model_name,
        "params": n,
        "rounds": rounds,
        "mean_s": mean,
        "max_after_training_s": max(r["after_training_s"] for r in per),
        "ps_per_upload_s": ps_upload_cpu_s / k,
        "ps_add_per_upload_s": add_s,
        "release_latency_s": release_s,
        "release_kgc_cpu_s": kgc_release_cpu_s,
        "bytes_up": mean["bytes_up"],
        "bytes_up_per_param": mean["bytes_up"] / n,
        "bytes_down": mean["bytes_down"],
        "db_bytes_round": db_round,
        "critical_path_s": critical,
        "protocol_path_s": critical - max(r["train_s"] for r in per),
        "loadavg": _loadavg(),
    }
    _log(
        f"  masked K={k}: after training {1000 * mean['after_training_s']:.1f} ms, "
        f"PS {1000 * result['ps_per_upload_s']:.2f} ms/upload request "
        f"({1000 * add_s:.3f} ms adding it), release {release_s:.3f} s, "
        f"{result['bytes_up_per_param']:.2f} B/param up, round {critical:.2f} s"
    )
    return result


def _bcp_summary(r: dict[str, Any]) -> dict[str, Any]:
    """The same fields for a bcp round from :func:`bench.round_bench.measure_round`."""
    per = r["per_participant"]
    after = [p["encode_s"] + p["encrypt_s"] for p in per]
    critical = (
        max(p["train_s"] for p in per)
        + max(after)
        + max(p["upload_s"] + p.get("commit_s", 0.0) for p in per)
        + r["max_audit_s"]
        + r["release_latency_s"]
        + max(p["download_s"] + p["decrypt_s"] for p in per)
    )
    return {
        "mode": "bcp",
        "k": r["k"],
        "model": r["model"],
        "params": r["params"],
        "rounds": r["rounds"],
        "mean_s": {
            "train_s": r["mean_s"]["train_s"],
            "after_training_s": statistics.fmean(after),
            "upload_s": r["mean_s"]["upload_s"],
            "audit_s": r["audit_s"],
            "download_open_s": r["mean_s"]["download_s"] + r["mean_s"]["decrypt_s"],
        },
        "max_after_training_s": max(after),
        "ps_per_upload_s": r["uploads_ps_cpu_s"] / r["k"],
        "release_latency_s": r["release_latency_s"],
        "release_kgc_cpu_s": r["release_kgc_cpu_s"],
        "bytes_up": r["bytes_up"],
        "bytes_up_per_param": r["bytes_up_per_param"],
        "bytes_down": r["bytes_down"] + r["audit_bytes_down"],
        "db_bytes_round": r["db_bytes_round"],
        "critical_path_s": critical,
        "protocol_path_s": critical - max(p["train_s"] for p in per),
        "loadavg": r["loadavg"],
    }


def _flower(args: argparse.Namespace) -> dict[str, Any] | None:
    """Flower SecAgg+ and plain FedAvg, same size and K, when flwr is installed."""
    try:
        from bench import flower_bench
    except ImportError:
        return None
    try:
        result: dict[str, Any] = flower_bench.run_benchmark(ks=[args.k], rounds=5)
    except ImportError as exc:
        _log(f"Flower not measured: {exc}")
        return None
    return result


def run_aggregation_bench(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with LocalCluster() as cluster:
        cluster.start_kgc(args.bits, demo=True)
        cluster.start_param_server()
        if args.warmup:
            _log("warm-up (discarded)")
            measure_masked_round(cluster, 3, "10k", seed=args.seed, rounds=1)
        _log(f"masked, K={args.k}")
        runs.append(measure_masked_round(cluster, args.k, args.model, seed=args.seed))
        if not args.no_bcp:
            _log(f"bcp, K={args.k}")
            bcp = measure_round(
                cluster, args.k, args.model, args.bits, workers=2, seed=args.seed, rounds=2
            )
            runs.append(_bcp_summary(bcp))
        for k in args.large_k:
            _log(f"masked, K={k}")
            runs.append(measure_masked_round(cluster, k, args.model, seed=args.seed))
    flower = None if args.no_flower else _flower(args)
    doc = {
        "benchmark": "aggregation",
        "machine": _machine(),
        "bits": args.bits,
        "seconds": time.perf_counter() - t_start,
        "targets": TARGETS,
        "runs": runs,
        "flower": flower,
    }
    table = _table(doc)
    write_outputs(out, "aggregation_bench", doc, table, _plot)
    print(table)
    return doc


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _table(doc: dict[str, Any]) -> str:
    rows = [
        ("participant after training", lambda r: _ms(r["mean_s"]["after_training_s"])),
        ("upload request", lambda r: _ms(r["mean_s"]["upload_s"])),
        ("PS CPU per upload request", lambda r: _ms(r["ps_per_upload_s"])),
        (
            "PS aggregation per upload",
            lambda r: _ms(r["ps_add_per_upload_s"]) if "ps_add_per_upload_s" in r else "-",
        ),
        ("audit (bcp only)", lambda r: _ms(r["mean_s"].get("audit_s", 0.0))),
        ("release latency", lambda r: _ms(r["release_latency_s"])),
        ("KGC CPU in the release", lambda r: _ms(r["release_kgc_cpu_s"])),
        ("download + open", lambda r: _ms(r["mean_s"]["download_open_s"])),
        ("bytes up per parameter", lambda r: f"{r['bytes_up_per_param']:.2f}"),
        ("bytes down per participant", lambda r: f"{r['bytes_down']:,.0f}"),
        ("PS database growth per round", lambda r: f"{r['db_bytes_round']:,}"),
        ("round, participants in parallel", lambda r: _ms(r["critical_path_s"])),
        ("  of which the protocol (no training)", lambda r: _ms(r["protocol_path_s"])),
    ]
    runs = doc["runs"]
    heads = [f"{r['mode']} K={r['k']}" for r in runs]
    width = max(len(name) for name, _ in rows) + 2
    lines = [
        f"One round through the services ({runs[0]['params']:,} parameters, "
        f"{doc['bits']}-bit N, {doc['machine']['cpus']} CPUs), second round of a job",
        "".ljust(width) + "".join(h.rjust(16) for h in heads),
    ]
    for name, fn in rows:
        lines.append(name.ljust(width) + "".join(fn(r).rjust(16) for r in runs))
    flower = doc.get("flower")
    if flower:
        lines += ["", *_flower_lines(flower)]
    masked = {r["k"]: r for r in runs if r["mode"] == "masked"}
    lines += ["", "targets (masked mode):"]
    k10 = masked.get(10) or next(iter(masked.values()))
    checks = [
        ("bytes up <= 4.5 per parameter", k10["bytes_up_per_param"] <= 4.5),
        ("after training <= 20 ms", k10["mean_s"]["after_training_s"] <= 0.020),
        ("PS aggregation of one upload <= 2 ms", k10["ps_add_per_upload_s"] <= 0.002),
        ("release <= 0.5 s at K = 10", k10["release_latency_s"] <= 0.5),
    ]
    if 100 in masked:
        checks.append(("release <= 3 s at K = 100", masked[100]["release_latency_s"] <= 3.0))
    lines += [f"  {'met   ' if ok else 'MISSED'} {what}" for what, ok in checks]
    return "\n".join(lines)


def _flower_lines(flower: dict[str, Any]) -> list[str]:
    """Flower's figures from the same run (bench.flower_bench: trivial training, clients
    in turn, in-process message passing with Flower's own serialization)."""
    results = flower["results"]
    rows = [
        ("round trips per round", lambda r: str(r["round_trips"])),
        ("client protocol work", lambda r: _ms(r["client_mean"]["mod_wall_s"])),
        ("client (de)serialization", lambda r: _ms(r["client_mean"]["serde_wall_s"])),
        ("server aggregation", lambda r: _ms(r["server"]["aggregation_wall_s"])),
        ("round, clients in parallel (estimate)", lambda r: _ms(r["parallel_estimate_s"])),
        (
            "bytes up per parameter",
            lambda r: f"{r['bytes_per_client']['up'] / flower['model']['params']:.2f}",
        ),
    ]
    width = max(len(name) for name, _ in rows) + 2
    heads = [f"{r['mode']} K={r['k']}" for r in results]
    lines = [
        f"Flower {flower['flwr']} in the same run ({flower['model']['params']:,} parameters; "
        f"SecAgg+ with num_shares {flower['secaggplus']['num_shares']}, threshold "
        f"{flower['secaggplus']['reconstruction_threshold']})",
        "".ljust(width) + "".join(h.rjust(18) for h in heads),
    ]
    for name, fn in rows:
        lines.append(name.ljust(width) + "".join(fn(r).rjust(18) for r in results))
    return lines


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    phases = [
        ("after training", lambda r: r["mean_s"]["after_training_s"]),
        ("upload", lambda r: r["mean_s"]["upload_s"]),
        ("audit", lambda r: r["mean_s"].get("audit_s", 0.0)),
        ("release", lambda r: r["release_latency_s"]),
        ("download + open", lambda r: r["mean_s"]["download_open_s"]),
    ]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:gray"]
    fig, ax = plt.subplots(figsize=(8, 4))
    series = [
        (f"{r['mode']} K={r['k']}", [fn(r) for _, fn in phases], colors[i % len(colors)])
        for i, r in enumerate(runs)
    ]
    xs = grouped_bars(ax, len(phases), series, lambda v: _ms(v))
    ax.set_xticks(xs, [name for name, _ in phases])
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    ax.set_title(f"one round per phase, {runs[0]['params']:,} parameters, {doc['bits']}-bit N")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.aggregation_bench", description=__doc__)
    p.add_argument("--k", type=int, default=10, help="participants of the side-by-side round")
    p.add_argument("--large-k", nargs="*", type=int, default=[100], help="masked only")
    p.add_argument("--model", default="109k", choices=sorted(MODELS))
    p.add_argument("--bits", type=int, default=2048)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-bcp", action="store_true")
    p.add_argument("--no-flower", action="store_true")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--quick", action="store_true", help="1024 bits, K = 3, 10k model, no K=100")
    p.add_argument("--out", default="bench/results/aggregation")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.bits, args.k, args.model, args.large_k = 1024, 3, "10k", []
    run_aggregation_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
