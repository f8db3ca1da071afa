"""One federated round through the real services, timed phase by phase.

Run ``python -m bench.round_bench`` (or ``--quick``). For each configuration (participants
``K``, model size, key bits) it starts a :class:`~trapdoor.demo.cluster.LocalCluster` (the
real KGC and parameter server processes on loopback, SQLite databases), enrols ``K``
participants and creates a one-round job on MNIST (IID partitions, 1 local epoch). The
benchmark itself plays the participants with :class:`~trapdoor.participant.client.ParticipantClient`
in this process, one after the other, and records:

* per participant: local training, encode, encrypt (+ frame), upload (HTTP, PS validation
  and storage; the last upload's request also closes the round and aggregates), download
  of the release bundle, and opening it (unwrap, AES-GCM, subtract ``R``, decode); bytes up
  (the binary frame) and down (the JSON bundle); CPU seconds (this process plus its
  encryption worker processes, from ``/proc``);
* the release latency: from the last upload's response to the PS's ``released_at`` stamp
  (PS: blind with the prepared ``Enc(R)``, sign; KGC: checks, decrypt with the master key,
  seal, sign; PS: verify, store); split by the CPU seconds the PS and KGC processes used
  in that window (``/proc/<pid>/stat``);
* PS and KGC CPU seconds for the whole round, and the PS SQLite database size (with its
  WAL file) before and after the round.

The simulated participants encrypt under the same public job key, so they share one
in-process :class:`~trapdoor.crypto.blocks.VectorEncryptor` (its fixed-base tables are built once
and reported apart, as ``encryptor setup``: a one-time per-job cost for a real
participant). Every participant has its own keys, data, token, upload and download.

Writes ``<out>/round_bench.json`` and ``<out>/round_bench_*.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import secrets
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.crypto_bench import _loadavg, _log, _machine, _proc_cpu_s, _worker_pids
from trapdoor.crypto.signing import b64encode
from trapdoor.demo.cluster import LocalCluster
from trapdoor.ml.models import MLP
from trapdoor.participant.client import ParticipantClient, fetch_kgc_params
from trapdoor.participant.node import dataset_partitions

__all__ = [
    "ENCODINGS",
    "MODELS",
    "encrypt_total",
    "job_definition",
    "linear_fit",
    "main",
    "merge",
    "round_cpu_s",
    "run_round_bench",
]

#: Model sizes by name: MNIST MLPs (784 inputs, 10 classes).
MODELS: dict[str, list[int]] = {
    "10k": [784, 12, 10],  # 9,550 parameters
    "109k": [784, 128, 64, 10],  # 109,386 parameters (the MNIST MLP)
    "50k": [784, 64, 10],  # 50,890 parameters
    "330k": [784, 384, 64, 10],  # 326,474 parameters
    "1M": [784, 1024, 200, 10],  # 1,010,850 parameters
}
#: Seconds between round-status polls after the last upload (the latency itself comes from
#: the PS's ``released_at`` stamp).
POLL_SECONDS = 0.5
#: Rounds of a "steady" job: the last one is measured, with masks prepared in the one before.
STEADY_ROUNDS = 2
PHASES = (
    "train_s",
    "encode_s",
    "encrypt_s",
    "masks_s",
    "masks_wait_s",
    "encrypt_total_s",
    "upload_s",
    "download_s",
    "decrypt_s",
)


def num_params(layers: Sequence[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(layers))


def _db_bytes(workdir: Path, name: str) -> int:
    """Bytes of the SQLite pages in use (committed state, WAL included).

    File sizes would not do: in WAL mode SQLite reuses the WAL and free pages, so a round
    can add data without any file growing.
    """
    with contextlib.closing(sqlite3.connect(workdir / name)) as conn:
        page_size, pages, free = (
            int(conn.execute(f"PRAGMA {pragma}").fetchone()[0])
            for pragma in ("page_size", "page_count", "freelist_count")
        )
    return (pages - free) * page_size


def _cpu(pid: int) -> float:
    return _proc_cpu_s(pid) or 0.0


def _wait_until_idle(pid: int, *, quiet_cpu_s: float = 0.05, period: float = 0.5) -> float:
    """Wait until process ``pid`` uses under ``quiet_cpu_s`` CPU in ``period``; wall seconds.

    After a job is created the PS computes round 0's ``Enc(R)`` in the background. In a
    deployment that overlaps the participants' training on their own machines; here they
    share two cores, so the benchmark lets it finish first and reports it apart.
    """
    t0 = time.perf_counter()
    time.sleep(1.5)  # the PS's background tick (every second) has started its work by now
    last = _cpu(pid)
    while time.perf_counter() - t0 < 600:
        time.sleep(period)
        now = _cpu(pid)
        if now - last < quiet_cpu_s:
            break
        last = now
    return time.perf_counter() - t0


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line ``y = a x + b`` and its R² (1.0: exactly linear)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) < 2:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan")}
    a, b = np.polyfit(x, y, 1)
    resid = y - (a * x + b)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return {"slope": float(a), "intercept": float(b), "r2": r2}


#: The encodings of the benchmark jobs, per aggregation mode (same fixed point).
ENCODINGS: dict[str, dict[str, Any]] = {
    "bcp": {"frac_bits": 20, "slot_bits": 29, "slot_bound": 64.0, "clip_bound": 16.0, "width": 16},
    "masked": {"frac_bits": 20, "clip_bound": 16.0, "model_bound": 32.0},
}


def job_definition(
    job_id: str,
    layers: list[int],
    subjects: list[str],
    sizes: list[int],
    seed: int,
    rounds: int = 1,
    aggregation: str = "bcp",
) -> dict[str, Any]:
    """A benchmark job: an MNIST MLP, 1 local epoch, quorum min(3, K)."""
    model = MLP(layers)
    w0 = model.init_parameters(np.random.default_rng(seed))
    return {
        "job_id": job_id,
        "model": model.spec(),
        "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
        "training": {
            "learning_rate": 0.1,
            "local_epochs": 1,
            "batch_size": 32,
            "mode": "fedavg",
            "seed": seed,
        },
        "participants": [
            {"subject_id": s, "num_samples": n} for s, n in zip(subjects, sizes, strict=True)
        ],
        "quorum": min(3, len(subjects)),
        "rounds": rounds,
        "round_deadline_seconds": 3600,
        "below_quorum_policy": "stay-open",
        "aggregation": aggregation,
        "encoding": dict(ENCODINGS[aggregation]),
    }


def measure_round(
    cluster: LocalCluster,
    k: int,
    model_name: str,
    bits: int,
    *,
    workers: int,
    seed: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """One job with ``k`` participants on an already running cluster; its last round.

    With ``rounds`` > 1 the last round is the steady state of a longer job: each
    participant computed that round's masks right after its previous upload, while it
    waited for the release, as the participant node does.
    """
    layers = MODELS[model_name]
    assert cluster.kgc is not None and cluster.param_server is not None
    kgc_pid, ps_pid = cluster.kgc.popen.pid, cluster.param_server.popen.pid
    params = fetch_kgc_params(cluster.kgc_url)
    t0 = time.perf_counter()
    clients = []
    for i in range(k):
        enrolment = cluster.enrol(f"p{i}-{secrets.token_hex(2)}", "participant")
        clients.append(
            ParticipantClient.enrol(
                cluster.kgc_url,
                enrolment["subject_id"],
                enrolment["code"],
                params,
                workers=workers,
                min_quorum=min(3, k),  # the K=2 scaling runs use quorum 2 on purpose
            )
        )
    enrol_s = time.perf_counter() - t0
    dataset, parts = dataset_partitions("mnist", k, "iid", seed)
    subjects = [c.identity.subject_id for c in clients]
    job_id = f"bench-{model_name}-k{k}-{bits}-{secrets.token_hex(2)}"
    ps_ops = cluster.ps_operator()
    db0 = _db_bytes(cluster.workdir, "ps.db")
    t0 = time.perf_counter()
    ps_ops.post_json(
        "/v1/jobs",
        job_definition(job_id, layers, subjects, [len(p) for p in parts], seed, rounds),
    )
    job_create_s = time.perf_counter() - t0  # the KGC call and the trivial Enc(W_0)
    cpu_ps_prep0 = _cpu(ps_pid)
    ps_prepare_s = _wait_until_idle(ps_pid)  # ~0 since the blind is trivial (issue 11)
    ps_prepare_cpu_s = _cpu(ps_pid) - cpu_ps_prep0
    db_job = _db_bytes(cluster.workdir, "ps.db")

    job = clients[0].fetch_job(cluster.ps_url, job_id)
    t0 = time.perf_counter()
    encryptor = clients[0].encryptor(job)  # one-time per job: fixed-base tables (+ workers)
    setup_s = time.perf_counter() - t0
    wpids = _worker_pids(encryptor)
    for c in clients[1:]:
        c._encryptors[job_id] = encryptor  # same public job key: share the tables (see doc)
    jobs = [c.fetch_job(cluster.ps_url, job_id) for c in clients]

    weights = jobs[0].initial_weights
    first_round: dict[str, Any] | None = None
    db_round_start = db_job
    for t in range(rounds):
        if t > 0:  # let the PS settle after the previous release (it draws R at aggregation)
            _wait_until_idle(ps_pid)
        cpu_ps0, cpu_kgc0 = _cpu(ps_pid), _cpu(kgc_pid)
        per: list[dict[str, Any]] = []
        prepared = []
        for i, (c, jv) in enumerate(zip(clients, jobs, strict=True)):
            part = parts[i]
            c0 = time.process_time() + sum(_cpu(p) for p in wpids)
            ready = c.prepare_update(jv, t, weights, dataset.X_train[part], dataset.y_train[part])
            t0 = time.perf_counter()
            c.commit(jv, ready)
            ready.metrics["timings"]["commit_s"] = time.perf_counter() - t0
            prepared.append(ready)
            per.append({"cpu_up_s": time.process_time() + sum(_cpu(p) for p in wpids) - c0})
        for c, jv, ready, row in zip(clients, jobs, prepared, per, strict=True):
            c0 = time.process_time()
            # every commitment is in: the set closed
            c.upload(jv, ready, c.closed_set(jv, t, ready.run))
            timings = ready.metrics["timings"]
            # What encrypting would cost without the masks computed ahead.
            timings["encrypt_total_s"] = (
                timings["masks_s"] + timings["encrypt_s"] - timings["masks_wait_s"]
            )
            row.update(timings, bytes_up=ready.metrics["bytes_up"])
            row["cpu_up_s"] += time.process_time() - c0
        cpu_ps_up, cpu_kgc_up = _cpu(ps_pid), _cpu(kgc_pid)
        clients[0].wait_for_round(cluster.ps_url, job_id, t, 1800, at_least="closed")
        for c, jv, ready, row in zip(clients, jobs, prepared, per, strict=True):
            c0 = time.process_time()
            c.audit(jv, t, own=ready.vector)  # fetches Enc(W_t) and the other K-1 uploads
            row["audit_s"] = c.last_audit["seconds"]
            row["audit_bytes_down"] = c.last_audit["bytes_down"]
            row["audit_cpu_s"] = time.process_time() - c0
        t_last, t_last_epoch = time.perf_counter(), time.time()  # the last audit is in
        status: dict[str, Any] = {}
        while time.perf_counter() - t_last < 1800:
            status = ps_ops.get_json(f"/v1/jobs/{job_id}/rounds/{t}")
            if status.get("status") in ("released", "failed"):
                break
            time.sleep(POLL_SECONDS)
        if status.get("released_at") is None:
            raise RuntimeError(f"round not released: {status}")
        # The PS stamps released_at when it stores the bundle (same machine, same clock), so
        # the poll can be slow: it neither loads the PS nor rounds the latency up.
        release_s = float(status["released_at"]) - t_last_epoch  # after the last audit
        if status.get("status") != "released":
            raise RuntimeError(f"round not released: {status}")
        cpu_ps_rel, cpu_kgc_rel = _cpu(ps_pid), _cpu(kgc_pid)
        db1 = _db_bytes(cluster.workdir, "ps.db")

        models = []
        for c, row in zip(clients, per, strict=True):
            c0 = time.process_time()
            t0 = time.perf_counter()
            bundle = c.download_bundle(cluster.ps_url, job_id, t)
            row["download_s"] = time.perf_counter() - t0
            row["bytes_down"] = len(json.dumps(bundle))
            t0 = time.perf_counter()
            models.append(c.open_bundle(c.fetch_job(cluster.ps_url, job_id), bundle, t))
            row["decrypt_s"] = time.perf_counter() - t0
            row["cpu_down_s"] = time.process_time() - c0
        if any(not np.array_equal(models[0], m) for m in models[1:]):
            raise AssertionError("participants opened different models")
        if np.array_equal(models[0], weights):
            raise AssertionError("the released model equals the previous one")
        cpu_ps_end, cpu_kgc_end = _cpu(ps_pid), _cpu(kgc_pid)
        weights = models[0]
        if t == 0 and rounds > 1:
            first_round = {
                "mean_s": {p: statistics.fmean(r[p] for r in per) for p in PHASES},
                "max_encode_encrypt_s": max(r["encode_s"] + r["encrypt_s"] for r in per),
                "release_latency_s": release_s,
            }
            db_round_start = db1  # growth is reported for the measured (last) round
    clients[0].forget_job(job_id)

    n = num_params(layers)
    mean = {p: statistics.fmean(r[p] for r in per) for p in PHASES}
    result = {
        "k": k,
        "model": model_name,
        "layers": layers,
        "params": n,
        "bits": bits,
        "rounds": rounds,
        "measured_round": rounds - 1,
        "first_round": first_round,
        "workers": workers,
        "enrol_s": enrol_s,
        "job_create_s": job_create_s,
        "ps_prepare_blind_s": ps_prepare_s,
        "ps_prepare_blind_cpu_s": ps_prepare_cpu_s,
        "encryptor_setup_s": setup_s,
        "per_participant": per,
        "mean_s": mean,
        "max_encode_encrypt_s": max(r["encode_s"] + r["encrypt_s"] for r in per),
        "max_encode_encrypt_total_s": max(r["encode_s"] + r["encrypt_total_s"] for r in per),
        "last_upload_s": per[-1]["upload_s"],
        "median_upload_s": statistics.median(r["upload_s"] for r in per),
        "release_latency_s": release_s,
        # Contributors audit in parallel in a deployment: the slowest one is on the path.
        "audit_s": statistics.fmean(r["audit_s"] for r in per),
        "max_audit_s": max(r["audit_s"] for r in per),
        "audit_cpu_s": statistics.fmean(r["audit_cpu_s"] for r in per),
        "audit_bytes_down": statistics.fmean(r["audit_bytes_down"] for r in per),
        "upload_to_release_s": max(r["audit_s"] for r in per) + release_s,
        "release_ps_cpu_s": cpu_ps_rel - cpu_ps_up,
        "release_kgc_cpu_s": cpu_kgc_rel - cpu_kgc_up,
        "uploads_ps_cpu_s": cpu_ps_up - cpu_ps0,
        "round_ps_cpu_s": cpu_ps_end - cpu_ps0 + ps_prepare_cpu_s,  # Enc(R) is per round
        "round_kgc_cpu_s": cpu_kgc_end - cpu_kgc0,
        "participant_cpu_s": statistics.fmean(r["cpu_up_s"] + r["cpu_down_s"] for r in per),
        "bytes_up": statistics.fmean(r["bytes_up"] for r in per),
        "bytes_down": statistics.fmean(r["bytes_down"] for r in per),
        "bytes_up_per_param": statistics.fmean(r["bytes_up"] for r in per) / n,
        "db_bytes_job": db_job - db0,
        "db_bytes_round": db1 - db_round_start,
        "db_bytes_total": db1,
        "round_wall_s": sum(
            r["train_s"] + r["encode_s"] + r["encrypt_s"] + r["upload_s"] for r in per
        )
        + release_s,
        "loadavg": _loadavg(),
    }
    _log(
        f"  K={k} {model_name} {bits}b: encrypt {mean['encrypt_s']:.2f}s after training "
        f"(masks {mean['masks_s']:.2f}s during it), "
        f"release {release_s:.2f}s (PS {result['release_ps_cpu_s']:.1f} / "
        f"KGC {result['release_kgc_cpu_s']:.1f} CPU s), "
        f"up {result['bytes_up_per_param']:.2f} B/param"
    )
    return result


def _plan(args: argparse.Namespace) -> list[tuple[str, int, str, int]]:
    """(series, K, model, bits) in the order they run; one cluster per key size."""
    b0 = args.main_bits
    plan = [("participants", k, args.main_model, b0) for k in args.main_k]
    plan += [("steady", k, args.main_model, b0) for k in args.steady_k]
    plan += [("scale_k", k, args.scale_model, b0) for k in args.scale_k]
    plan += [("scale_model", args.size_k, m, b0) for m in args.sizes]
    plan += [("key_bits", args.bits_k, args.main_model, b) for b in args.bits]
    return plan


def run_round_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the plan; returns (and writes) the JSON document."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(args)
    path = out / "round_bench.json"
    runs: list[dict[str, Any]] = []
    if args.append and path.exists():  # resume: keep what an earlier run measured
        runs = json.loads(path.read_text())["runs"]
    done: dict[tuple[int, str, int, int], dict[str, Any]] = {
        (r["k"], r["model"], r["bits"], r.get("rounds", 1)): {
            x: v for x, v in r.items() if x != "series"
        }
        for r in runs
    }
    have = {(r["series"], r["k"], r["model"], r["bits"]) for r in runs}
    plan = [p for p in plan if p not in have]
    t_start = time.perf_counter()

    def save() -> dict[str, Any]:
        doc = {
            "benchmark": "round",
            "quick": bool(args.quick),
            "machine": _machine(),
            "seconds": time.perf_counter() - t_start,
            "runs": runs,
            "fits": _fits(runs),
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return doc

    bar = tqdm(total=len(plan), desc="round bench", unit="round", file=sys.stderr)
    for bits in sorted({b for *_, b in plan}):
        todo = [p for p in plan if p[3] == bits]
        with LocalCluster() as cluster:
            cluster.start_kgc(bits, demo=True)
            cluster.start_param_server()
            if args.warmup:  # first-use costs (imports, data load, caches): not measured
                _log(f"warm-up round at {bits} bits (discarded)")
                measure_round(cluster, 2, "10k", bits, workers=args.workers, seed=args.seed)
            for series, k, model, b in todo:
                rounds = STEADY_ROUNDS if series == "steady" else 1
                key = (k, model, b, rounds)
                if key not in done:  # a configuration in two series runs once
                    _log(f"round: {series} K={k} model={model} bits={b} rounds={rounds}")
                    done[key] = measure_round(
                        cluster, k, model, b, workers=args.workers, seed=args.seed, rounds=rounds
                    )
                runs.append({"series": series, **done[key]})
                save()  # after every configuration: a cut-short run keeps what it measured
                bar.update(1)
    bar.close()
    doc = save()
    _plot(doc, out)
    return doc


def merge(paths: Sequence[Path], out: Path, *, reuse_series: bool = True) -> dict[str, Any]:
    """Join the runs of several round_bench.json files (runs made apart) into ``out``.

    With ``reuse_series`` a configuration measured in one series also fills a series the
    default plan would have filled with it (as one run does: a configuration runs once).
    """
    runs: list[dict[str, Any]] = []
    for path in paths:
        runs += json.loads(Path(path).read_text())["runs"]
    if reuse_series:
        have = {(r["series"], r["k"], r["model"], r["bits"]) for r in runs}
        sizes = {(r["k"], r["bits"]) for r in runs if r["series"] == "scale_model"}
        for r in list(runs):
            key = ("scale_model", r["k"], r["model"], r["bits"])
            if r["series"] == "participants" and (r["k"], r["bits"]) in sizes and key not in have:
                runs.append({**r, "series": "scale_model"})
    doc = {
        "benchmark": "round",
        "quick": False,
        "machine": _machine(),
        "merged_from": [str(p) for p in paths],
        "runs": runs,
        "fits": _fits(runs),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "round_bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(doc, out)
    return doc


def round_cpu_s(r: dict[str, Any]) -> float:
    """CPU seconds of the whole round: every participant (incl. training), PS and KGC."""
    return float(r["k"] * r["participant_cpu_s"] + r["round_ps_cpu_s"] + r["round_kgc_cpu_s"])


def _series(runs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["series"] == name]


def encrypt_total(timings: dict[str, Any]) -> float:
    """Whole encryption: masks plus what is left after training (older runs had no masks)."""
    return float(timings.get("encrypt_total_s", timings["encrypt_s"]))


def _fits(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Is the cost linear? Lines through the scaling series, with R²."""
    fits: dict[str, Any] = {}
    for series, x in (("participants", "k"), ("scale_k", "k"), ("scale_model", "params")):
        rs = _series(runs, series)
        xs = [r[x] for r in rs]
        fits[series] = {
            "x": x,
            "round_wall_s": linear_fit(xs, [r["round_wall_s"] for r in rs]),
            "release_latency_s": linear_fit(xs, [r["release_latency_s"] for r in rs]),
            "round_ps_cpu_s": linear_fit(xs, [r["round_ps_cpu_s"] for r in rs]),
            "round_kgc_cpu_s": linear_fit(xs, [r["round_kgc_cpu_s"] for r in rs]),
            "participant_cpu_s": linear_fit(xs, [r["participant_cpu_s"] for r in rs]),
            "round_cpu_s": linear_fit(xs, [round_cpu_s(r) for r in rs]),
            "encrypt_s": linear_fit(xs, [encrypt_total(r["mean_s"]) for r in rs]),
            "db_bytes_round": linear_fit(xs, [r["db_bytes_round"] for r in rs]),
            "bytes_up": linear_fit(xs, [r["bytes_up"] for r in rs]),
        }
    return fits


def _plot(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    main = _series(runs, "participants")
    if main:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [str(r["k"]) for r in main]
        parts = [
            ("train", lambda r: r["mean_s"]["train_s"]),
            ("encode", lambda r: r["mean_s"]["encode_s"]),
            ("encrypt after training", lambda r: r["mean_s"]["encrypt_s"]),
            ("upload", lambda r: r["mean_s"]["upload_s"]),
            ("release (PS+KGC)", lambda r: r["release_latency_s"]),
            ("download", lambda r: r["mean_s"]["download_s"]),
            ("decrypt", lambda r: r["mean_s"]["decrypt_s"]),
        ]
        bottom = np.zeros(len(main))
        for name, fn in parts:
            vals = np.array([fn(r) for r in main])
            ax.bar(labels, vals, bottom=bottom, label=name)
            bottom += vals
        ax.set_xlabel("participants K (109,386-parameter MLP, 2048-bit N)")
        ax.set_ylabel("seconds (per participant; release once per round)")
        ax.set_title("one round: time per phase")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "round_bench_phases.png", dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, series, x, xlabel in (
        (axes[0], "scale_k", "k", "participants K"),
        (axes[1], "scale_model", "params", "model parameters"),
    ):
        rs = _series(runs, series)
        if not rs:
            ax.axis("off")
            continue
        xs = [r[x] for r in rs]
        ax.plot(xs, [r["round_wall_s"] for r in rs], "o-", label="round, participants sequential")
        ax.plot(xs, [r["release_latency_s"] for r in rs], "s-", label="release latency")
        ax.plot(
            xs,
            [encrypt_total(r["mean_s"]) for r in rs],
            "^-",
            label="encrypt (whole), one participant",
        )
        ax.plot(xs, [round_cpu_s(r) for r in rs], "d-", label="CPU s, all parties (steadier)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (wall) / CPU seconds")
        ax.set_title(
            f"scaling ({rs[0]['model'] if series == 'scale_k' else 'K=' + str(rs[0]['k'])})"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "round_bench_scaling.png", dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.round_bench", description=__doc__)
    p.add_argument("--main-k", nargs="*", type=int, default=[2, 5, 10, 20])
    p.add_argument("--main-model", default="109k", choices=sorted(MODELS))
    p.add_argument("--main-bits", type=int, default=2048)
    p.add_argument(
        "--steady-k",
        nargs="*",
        type=int,
        default=[10],
        help="K of two-round jobs measured in their second round (masks computed ahead)",
    )
    p.add_argument("--scale-k", nargs="*", type=int, default=[2, 10, 50, 100])
    p.add_argument("--scale-model", default="10k", choices=sorted(MODELS))
    p.add_argument(
        "--sizes", nargs="*", default=["10k", "109k", "330k", "1M"], choices=sorted(MODELS)
    )
    p.add_argument("--size-k", type=int, default=2)
    p.add_argument("--bits", nargs="*", type=int, default=[2048, 3072])
    p.add_argument("--bits-k", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="participant encryption processes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--merge", nargs="+", help="only join these round_bench.json files into <out>")
    p.add_argument(
        "--append", action="store_true", help="keep the runs in <out>/round_bench.json, skip them"
    )
    p.add_argument("--quick", action="store_true", help="1024 bits, small K, 10k model only")
    p.add_argument("--out", default="bench/results")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.main_k, args.scale_k, args.sizes, args.bits = [2, 3], [2, 4], ["10k"], [1024]
        args.steady_k = [2]
        args.scale_model = args.main_model = "10k"
        args.main_bits = 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        doc = merge([Path(p) for p in args.merge], Path(args.out))
    else:
        doc = run_round_bench(args)
    for r in doc["runs"]:
        m = r["mean_s"]
        print(
            f"{r['series']:12} K={r['k']:<3} {r['params']:>9,} params {r['bits']}b  "
            f"train {m['train_s']:.2f} encode {m['encode_s']:.3f} encrypt {m['encrypt_s']:.2f} "
            f"upload {m['upload_s']:.2f} release {r['release_latency_s']:.2f} "
            f"download {m['download_s']:.2f} decrypt {m['decrypt_s']:.2f} s; "
            f"up {r['bytes_up']:,.0f} B ({r['bytes_up_per_param']:.2f} B/param)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
