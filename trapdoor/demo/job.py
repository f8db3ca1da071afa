"""``trapdoor demo``: a whole encrypted federated job on this machine, checked against plaintext.

It starts real processes on loopback (the KGC, the parameter server, one participant node
per data owner), enrols them over HTTP with the operators' tokens, creates a job, lets the
nodes train it, and then re-runs the same job in the clear
(:func:`trapdoor.ml.training.run_plaintext_fedavg`, same seed, partitions and schedule).
The encrypted model must match plaintext FedAvg to fixed-point rounding.

``--skip-round K`` makes one participant skip round ``K``. It is then not a contributor,
so the demo checks that the PS refuses it the model (403) and that a contributor's bundle
does not open with its key (:class:`~trapdoor.crypto.sealing.SealError`). Having no ``W_{K+1}``, it
cannot train any later round either: the plaintext reference leaves it out from ``K`` on.

``--model`` picks the architecture (:func:`build_model`): the MLP, the numpy CNN, a GRU
reading each image row by row (sequential MNIST), or the PyTorch MLP/CNN. The nodes rebuild
it from the job definition's model spec, so every kind runs through the same services.
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import b64encode
from trapdoor.demo.cluster import ClusterError, LocalCluster
from trapdoor.ml.extras import needs_extra
from trapdoor.ml.models import MLP, Model
from trapdoor.ml.training import TrainingConfig, evaluate, run_plaintext_fedavg
from trapdoor.participant.client import ParticipantClient
from trapdoor.participant.node import dataset_partitions, load_identity
from trapdoor.protocol.bundle import MaskedReleaseBinding, open_mask_sum
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.service.cli import exit_status
from trapdoor.service.db import make_engine
from trapdoor.service.http import ServiceClient, ServiceError

__all__ = [
    "DEMO_ENCODING",
    "MODELS",
    "DemoError",
    "DemoOptions",
    "build_model",
    "demo",
    "main",
    "parse_demo_options",
    "run_demo",
]

DEFAULT_PLOT = "trapdoor-demo-accuracy.png"
LAYERS = {"digits": [64, 32, 10], "mnist": [784, 128, 64, 10]}
SIDES = {"digits": 8, "mnist": 28}  # images are SIDE x SIDE, one grey channel
MODELS = ("mlp", "cnn", "rnn", "torch-mlp", "torch-cnn")
# learning rates that learn within a few rounds (2 local epochs, batch 32); the GRU,
# with its gradient clipped to [-1, 1], wants a larger step than the MLP
LEARNING_RATES = {"mlp": 0.1, "cnn": 0.3, "rnn": 0.5, "torch-mlp": 0.3, "torch-cnn": 0.3}


class DemoError(ClusterError):
    """The demo could not run to the end (a service failed to start or a round failed)."""


#: The demo jobs' encoding. 22 fractional bits with a slot range of +-16 (guard bit kept)
#: round each update 4x finer than 20 bits with +-64: the trained models stay closer to
#: float FedAvg (docs/MODEL_ZOO.md), and no weight here comes near 16.
DEMO_ENCODING: dict[str, float | int] = {
    "frac_bits": 22,
    "slot_bits": 29,
    "slot_bound": 16.0,
    "clip_bound": 8.0,
    "width": 16,
}
#: The same precision for the masked mode: 22 fractional bits, updates clipped to ±8 and
#: models within ±16, which fits a 32-bit ring (4 bytes per parameter).
DEMO_MASKED_ENCODING: dict[str, float | int] = {
    "frac_bits": 22,
    "clip_bound": 8.0,
    "model_bound": 16.0,
}
AGGREGATIONS = ("masked", "bcp")


def build_model(kind: str, dataset: str) -> Model:
    """The demo's ``kind`` of model for ``dataset`` (``digits``: 8x8 images, ``mnist``: 28x28).

    ``rnn`` is a GRU that reads an image one pixel row per time step.
    """
    side = SIDES[dataset]
    if kind == "mlp":
        return MLP(LAYERS[dataset])
    if kind == "cnn":
        from trapdoor.ml.cnn import CNN

        return CNN(input_shape=(1, side, side), conv_channels=8)
    if kind == "rnn":
        from trapdoor.ml.rnn import GRU

        return GRU(input_shape=(side, side), hidden=32, clip_value=1.0)
    if kind in ("torch-mlp", "torch-cnn"):
        from trapdoor.ml.torch_adapter import TorchModel  # optional extra

        if kind == "torch-mlp":
            return TorchModel("torch-mlp", layer_sizes=LAYERS[dataset])
        return TorchModel("torch-cnn", side=side, channels=8)
    raise DemoError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run does: the options of ``trapdoor demo`` (its ``--help`` says each)."""

    participants: int = 5
    rounds: int = 5
    dataset: str = "digits"
    model: str = "mlp"
    aggregation: str = "masked"
    seed: int = 7
    partition_scheme: str = "iid"
    json_path: str | None = None
    #: The command line defaults to :data:`DEFAULT_PLOT`; library callers opt in.
    plot: str | None = None
    bits: int = 2048
    workdir: str | None = None
    skip_round: int | None = None
    no_skip: bool = False
    quorum: int | None = None
    local_epochs: int = 2
    learning_rate: float | None = None
    timeout: float = 1800.0
    quiet: bool = False
    #: Keep the cluster's databases and logs after the run (library callers only).
    keep_workdir: bool = False


def parse_demo_options(argv: Sequence[str]) -> DemoOptions:
    """The options ``trapdoor demo ARGV`` would run with, without running it (benchmarks and
    tests describe their runs this way). A bad option raises :class:`click.UsageError`."""
    return DemoOptions(**demo.make_context("trapdoor demo", list(argv)).params)


def _expected_contributors(
    k: int, rounds: int, skipper: int | None, skip: int | None
) -> list[list[int]]:
    """Who contributes in each round: a skipper is out from its skipped round on."""
    return [
        [i for i in range(k) if skipper is None or skip is None or i != skipper or t < skip]
        for t in range(rounds)
    ]


def _phase_totals(node_jobs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    bytes_up = bytes_down = 0
    for job in node_jobs:
        for r in job["rounds"]:
            bytes_up += int(r.get("bytes_up", 0))
            bytes_down += int(r.get("bytes_down", 0))
            for phase, seconds in (r.get("timings") or {}).items():
                timings[phase] = timings.get(phase, 0.0) + float(seconds)
    return {"bytes_up": bytes_up, "bytes_down": bytes_down, "seconds_by_phase": timings}


def _write_plot(path: str, encrypted: list[float], plaintext: list[float], title: str) -> None:
    with needs_extra("demo", "the demo's accuracy plot"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(1, len(encrypted) + 1))
    ax.plot(xs, plaintext, "o-", label="plaintext FedAvg")
    ax.plot(xs, encrypted, "x--", label="encrypted (Trapdoor FL)")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(args: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``--json``)."""
    k, rounds = args.participants, args.rounds
    if k < 1 or rounds < 1:
        raise DemoError("need at least one participant and one round")
    model_name, aggregation = args.model, args.aggregation
    model = build_model(model_name, args.dataset)
    learning_rate = args.learning_rate
    if learning_rate is None:
        learning_rate = LEARNING_RATES[model_name]
    quorum = args.quorum or min(DEFAULT_MIN_QUORUM, k)
    skip = args.skip_round
    if skip is None and not args.no_skip and k > quorum:
        skip = rounds - 1  # show the access control: a non-contributor is refused the model
    if args.no_skip:
        skip = None
    skipper = k - 1 if skip is not None else None
    if skip is not None and not 0 <= skip < rounds:
        raise DemoError("--skip-round must be a round of the job")
    expected = _expected_contributors(k, rounds, skipper, skip)
    if any(len(c) < quorum for c in expected):
        raise DemoError(f"quorum {quorum} cannot be met once a participant skips: add one")
    # Nodes refuse jobs below their minimum quorum (3 by default): a smaller demo lowers it.
    min_quorum = quorum if quorum < DEFAULT_MIN_QUORUM else None
    cluster = LocalCluster(args.workdir, keep_workdir=args.keep_workdir)
    t_start = time.perf_counter()
    try:
        subjects = cluster.start_all(
            k,
            bits=args.bits,
            dataset=args.dataset,
            partition_seed=args.seed,
            partition_scheme=args.partition_scheme,
            min_quorum=min_quorum,
        )
        node_ops = [cluster.node_operator(i) for i in range(k)]

        # -- the job
        dataset, parts = dataset_partitions(args.dataset, k, args.partition_scheme, args.seed)
        w0 = model.init_parameters(np.random.default_rng(args.seed))
        config = TrainingConfig(
            learning_rate=learning_rate, local_epochs=args.local_epochs, batch_size=32
        )
        job_id = f"{args.dataset}-demo-{secrets.token_hex(3)}"
        definition = {
            "job_id": job_id,
            "model": model.spec(),
            "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
            "training": {
                "learning_rate": config.learning_rate,
                "local_epochs": config.local_epochs,
                "batch_size": config.batch_size,
                "mode": config.mode,
                "seed": args.seed,
            },
            "participants": [
                {"subject_id": s, "num_samples": len(p)}
                for s, p in zip(subjects, parts, strict=True)
            ],
            "quorum": quorum,
            "rounds": rounds,
            "round_deadline_seconds": 3600,
            "below_quorum_policy": "stay-open",
            "aggregation": aggregation,
            "encoding": dict(DEMO_MASKED_ENCODING if aggregation == "masked" else DEMO_ENCODING),
        }
        ps_ops = cluster.ps_operator()
        t_job = time.perf_counter()
        ps_ops.post_json("/v1/jobs", definition)
        for i, ops in enumerate(node_ops):
            body: dict[str, Any] = {
                "ps_url": cluster.ps_url,
                "job_id": job_id,
                "ps_subject_id": cluster.param_server_subject,  # pinned by the operator
            }
            if i == skipper:
                body["skip_rounds"] = [skip]
            ops.post_json("/v1/jobs", body)

        # -- wait for every round; close early the rounds a skipper leaves short
        round_info = _follow_rounds(
            ps_ops, job_id, expected, args.timeout, participants=k, quiet=args.quiet
        )
        node_jobs = _wait_nodes(node_ops, job_id, expected, args.timeout)
        job_seconds = time.perf_counter() - t_job

        # -- encrypted accuracy: every contributor of round t holds the same W_{t+1}
        encrypted: list[float] = []
        spread = 0.0
        for t in range(rounds):
            accs = [node_jobs[i]["rounds"][t]["test_accuracy"] for i in expected[t]]
            spread = max(spread, max(accs) - min(accs))
            encrypted.append(float(accs[0]))

        # -- the non-contributor is refused, and cannot open a contributor's bundle
        refused: bool | None = None
        if skipper is not None and skip is not None:
            refused = _check_refusal(
                cluster.node_dbs,
                cluster.node_passphrase,
                cluster.kgc_url,
                cluster.ps_url,
                job_id,
                skip,
                skipper,
                expected[skip][0],
                min_quorum=min(quorum, DEFAULT_MIN_QUORUM),
            )

        # -- plaintext reference on the same data, seed and schedule
        history = run_plaintext_fedavg(
            model, dataset, parts, config, rounds, args.seed, participants_per_round=expected
        )
        plaintext = [float(h["test_accuracy"]) for h in history]
        w0_acc = evaluate(model, w0, dataset.X_test, dataset.y_test)["accuracy"]
    finally:
        cluster.stop()

    contributors = [len(r["contributors"]) for r in round_info]
    diffs = [abs(e - p) for e, p in zip(encrypted, plaintext, strict=True)]
    summary: dict[str, Any] = {
        "job_id": job_id,
        "dataset": args.dataset,
        "model_name": model_name,
        "aggregation": aggregation,
        "model": model.spec(),
        "num_parameters": model.num_parameters,
        "learning_rate": learning_rate,
        "partition_scheme": args.partition_scheme,
        "bits": args.bits,
        "participants": k,
        "quorum": quorum,
        "initial_accuracy": w0_acc,
        "rounds": [
            {
                "round": t,
                "encrypted_accuracy": encrypted[t],
                "plaintext_accuracy": plaintext[t],
                "abs_diff": diffs[t],
                "contributors": contributors[t],
            }
            for t in range(rounds)
        ],
        "contributors_per_round": contributors,
        "expected_contributors_per_round": [len(c) for c in expected],
        "non_contributor_refused": refused,
        "max_abs_accuracy_diff": max(diffs),
        "contributor_accuracy_spread": spread,
        "transfer": _phase_totals(node_jobs),
        "job_seconds": job_seconds,
        "total_seconds": time.perf_counter() - t_start,
    }
    _report(summary)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        _write_plot(
            args.plot, encrypted, plaintext, f"{args.dataset}, {model_name}: {k} participants"
        )
        print(f"accuracy plot written to {args.plot}")
    return summary


def _follow_rounds(
    ps_ops: ServiceClient,
    job_id: str,
    expected: list[list[int]],
    timeout: float,
    *,
    participants: int,
    quiet: bool,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    deadline = time.monotonic() + timeout
    k = participants
    done: list[dict[str, Any]] = []
    with tqdm(total=len(expected), desc="rounds", unit="round", disable=quiet) as bar:
        for t, who in enumerate(expected):
            while True:
                status = ps_ops.get_json(f"/v1/jobs/{job_id}/rounds/{t}")
                state = status.get("status")
                if state == "released":
                    done.append(status)
                    bar.update(1)
                    break
                if state == "failed":
                    raise DemoError(f"round {t} failed at the PS")
                # bcp rounds count commitments in their open phase, masked ones uploads
                arrived = max(int(status.get("commitments", 0)), int(status.get("uploads", 0)))
                if state == "open" and len(who) < k and arrived >= len(who):
                    try:  # everyone still able to train has committed: no need to wait
                        ps_ops.post_json(f"/v1/jobs/{job_id}/rounds/{t}/close", {})
                    except ServiceError as exc:
                        if exc.status != 409:
                            raise
                if time.monotonic() > deadline:
                    raise DemoError(f"round {t} not released in {timeout:.0f} s: {status}")
                time.sleep(0.3)
    return done


def _wait_nodes(
    node_ops: list[ServiceClient], job_id: str, expected: list[list[int]], timeout: float
) -> list[dict[str, Any]]:
    """Each node's job view, once it has evaluated every model it is entitled to."""
    deadline = time.monotonic() + timeout
    views = []
    for i, ops in enumerate(node_ops):
        while True:
            view = ops.get_json(f"/v1/jobs/{job_id}")
            if view["status"] == "failed":
                raise DemoError(f"node {i} failed: {view.get('error')}")
            if view["status"] in ("finished", "excluded"):
                owed = [t for t, who in enumerate(expected) if i in who]
                have = {r["round"] for r in view["rounds"] if r.get("test_accuracy") is not None}
                if set(owed) <= have:
                    views.append(view)
                    break
                raise DemoError(f"node {i} ended without the models of rounds {owed}")
            if time.monotonic() > deadline:
                raise DemoError(f"node {i} did not finish: {view['status']}")
            time.sleep(0.3)
    return views


def _check_refusal(
    node_dbs: list[str],
    passphrase: str,
    kgc_url: str,
    ps_url: str,
    job_id: str,
    round_number: int,
    skipper: int,
    contributor: int,
    *,
    min_quorum: int = DEFAULT_MIN_QUORUM,
) -> bool:
    """403 for the skipper at the model endpoint, and SealError on a contributor's bundle."""

    def client_of(i: int) -> ParticipantClient:
        engine = make_engine(node_dbs[i])
        try:
            identity = load_identity(sessionmaker(engine), passphrase)
        finally:
            engine.dispose()
        if identity is None:
            raise DemoError(f"node {i} holds no identity")
        return ParticipantClient(identity, kgc_url, min_quorum=min_quorum)

    outsider, insider = client_of(skipper), client_of(contributor)
    try:
        outsider.download_bundle(ps_url, job_id, round_number)
        got_403 = False
    except ServiceError as exc:
        got_403 = exc.status == 403
    bundle = insider.download_bundle(ps_url, job_id, round_number)
    job = outsider.fetch_job(ps_url, job_id)

    def open_as(client: ParticipantClient) -> None:
        if job.aggregation == "masked":
            binding = MaskedReleaseBinding.from_fields(bundle)
            open_mask_sum(
                client.identity.secret_key,
                binding,
                bundle["sealed_mask"],
                bundle["wrapped_key"],
                job.masked_layout,
            )
        else:
            client.open_bundle(job, bundle)

    try:
        open_as(outsider)
        sealed = False
    except SealError:
        sealed = True
    open_as(insider)  # the rightful owner does open it
    return got_403 and sealed


def _report(summary: dict[str, Any]) -> None:
    print()
    print(
        f"job {summary['job_id']}: {summary['participants']} participants, "
        f"{summary['bits']}-bit N, quorum {summary['quorum']}"
    )
    print(
        f"model {summary['model_name']} ({summary['num_parameters']:,} parameters, "
        f"learning rate {summary['learning_rate']})"
    )
    print(f"initial accuracy {summary['initial_accuracy']:.4f}")
    print(f"{'round':>5} {'contrib':>7} {'encrypted':>10} {'plaintext':>10} {'diff':>8}")
    for r in summary["rounds"]:
        print(
            f"{r['round']:>5} {r['contributors']:>7} {r['encrypted_accuracy']:>10.4f} "
            f"{r['plaintext_accuracy']:>10.4f} {r['abs_diff']:>8.5f}"
        )
    transfer = summary["transfer"]
    print(
        f"bytes uploaded {transfer['bytes_up']:,}, downloaded {transfer['bytes_down']:,} "
        f"(all nodes, all rounds)"
    )
    phases = ", ".join(f"{p} {s:.2f}s" for p, s in sorted(transfer["seconds_by_phase"].items()))
    print(f"time by phase (summed over nodes): {phases}")
    print(f"job wall time {summary['job_seconds']:.1f}s, total {summary['total_seconds']:.1f}s")
    if summary["non_contributor_refused"] is not None:
        print(f"non-contributor refused the model: {summary['non_contributor_refused']}")
    print(f"max |encrypted - plaintext| accuracy: {summary['max_abs_accuracy_diff']:.5f}")


_DEFAULT = DemoOptions()


def _to_int(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    return int(value)


@click.command(name="demo")
@click.option("--participants", type=int, default=_DEFAULT.participants, show_default=True)
@click.option("--rounds", type=int, default=_DEFAULT.rounds, show_default=True)
@click.option(
    "--dataset", type=click.Choice(sorted(LAYERS)), default=_DEFAULT.dataset, show_default=True
)
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default=_DEFAULT.model,
    show_default=True,
    help="architecture (rnn: a GRU reading the image row by row)",
)
@click.option(
    "--aggregation",
    type=click.Choice(AGGREGATIONS),
    default=_DEFAULT.aggregation,
    show_default=True,
    help="masked: BCP-sealed seeds and additive masks; bcp: packed BCP ciphertexts, the "
    "patent's literal form (docs/PROTOCOL.md)",
)
@click.option("--seed", type=int, default=_DEFAULT.seed, show_default=True)
@click.option(
    "--partition-scheme",
    type=click.Choice(("iid", "dirichlet")),
    default=_DEFAULT.partition_scheme,
    show_default=True,
    help="how the training set is split across participants (dirichlet: alpha 0.5)",
)
@click.option("--json", "json_path", help="write the summary here")
@click.option("--plot", help=f"PNG of both accuracy curves (default: {DEFAULT_PLOT})")
@click.option(
    "--bits",
    type=click.Choice(("1024", "2048", "3072")),
    default=str(_DEFAULT.bits),
    show_default=True,
    callback=_to_int,
)
@click.option("--workdir", help="keep databases and logs here (default: a temporary folder)")
@click.option(
    "--skip-round",
    type=int,
    metavar="K",
    help="one participant skips round K (default: the last round, when quorum allows)",
)
@click.option("--no-skip", is_flag=True, help="every participant contributes to every round")
@click.option(
    "--quorum",
    type=int,
    help="the job's quorum (default: min(3, participants); the nodes accept it)",
)
@click.option("--local-epochs", type=int, default=_DEFAULT.local_epochs, show_default=True)
@click.option(
    "--learning-rate",
    type=float,
    help="local SGD step (default: the model's, "
    + ", ".join(f"{m} {lr}" for m, lr in LEARNING_RATES.items())
    + ")",
)
@click.option(
    "--timeout", type=float, default=_DEFAULT.timeout, show_default=True, help="seconds for the job"
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def demo(**options: Any) -> None:
    """Run a whole encrypted federated job on this machine and check it against plaintext.

    Starts the KGC, the parameter server and one participant node per data owner as real
    processes on loopback, trains the job, then re-runs it in the clear with the same
    seed, partitions and schedule: the accuracies must match to fixed-point rounding. One
    participant skips a round (--skip-round), and must be refused that round's model.
    Exits 0 when everything matched, 1 otherwise.
    """
    chosen = DemoOptions(**options)
    if chosen.plot is None:  # a person at the command line gets the plot
        chosen = replace(chosen, plot=DEFAULT_PLOT)

    def _interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so the cluster's finally stops every service

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_demo(chosen)
    except (ClusterError, ServiceError) as exc:
        click.echo(f"demo failed: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    except KeyboardInterrupt:
        click.echo("demo interrupted; services stopped", err=True)
        raise click.exceptions.Exit(130) from None
    # 0.1 percentage points; the slack absorbs float error in a difference of accuracies
    # (0.883 - 0.882 is 0.0010000000000000009: one test example in 1000)
    ok = (
        summary["max_abs_accuracy_diff"] <= 0.001 + 1e-9
        and summary["non_contributor_refused"] in (None, True)
        and summary["contributors_per_round"] == summary["expected_contributors_per_round"]
    )
    raise click.exceptions.Exit(0 if ok else 1)


def main(argv: Sequence[str] | None = None) -> int:
    """``trapdoor demo ARGV`` (also ``python -m trapdoor.demo.job``); returns the exit status."""
    return exit_status(demo, argv, "trapdoor demo")


if __name__ == "__main__":
    sys.exit(main())
