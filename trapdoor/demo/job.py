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

``--data PATH`` (once per participant) runs the job on the participants' own files instead
(:func:`load_demo_data`: ``.csv`` with a header row and a label column, ``.parquet``, or
``.npz``); each node reads its own file, test rows included (the file's own test part, or a
seeded ``--data-test-fraction`` of it). The model is sized from the files (an MLP of
``features -> --hidden-layers -> classes``, :func:`build_data_model`). Every node then
scores the model on different test rows, so the encrypted number is their example-weighted
average, which the PS reports as the round's shared accuracy; the plaintext reference
scores the same FedAvg in the clear on the union of those test rows: the same quantity.

Shared metrics (``--share-metrics``, on by default): the job definition says
``"share_metrics": true``, every contributor reports its evaluation of each released
model to the PS, and the summary carries the PS's weighted average per round.
"""

from __future__ import annotations

import json
import math
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
from click.core import ParameterSource
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.sealing import SealError
from trapdoor.crypto.signing import b64encode
from trapdoor.demo.cluster import ClusterError, LocalCluster, NodeData
from trapdoor.ml.data import (
    DEFAULT_LABEL,
    NPZ_KEYS,
    DataError,
    LocalData,
    check_local_data,
    load_local_data,
)
from trapdoor.ml.datasets import Dataset
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
    "DemoData",
    "DemoError",
    "DemoOptions",
    "build_data_model",
    "build_model",
    "demo",
    "follow_rounds",
    "job_definition",
    "load_demo_data",
    "main",
    "parse_demo_options",
    "run_demo",
    "wait_nodes",
    "wait_shared_metrics",
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
#: Participants of a demo on a bundled data set, when ``--participants`` does not say.
DEFAULT_PARTICIPANTS = 5
#: The hidden layers of the MLP sized from ``--data`` files.
DEFAULT_HIDDEN_LAYERS = (32,)
#: The share of a ``--data`` file held out as its test rows (a file without a test part).
DEFAULT_TEST_FRACTION = 0.2
#: How long to wait for the contributors' metric reports of a released round.
SHARED_METRICS_WAIT = 60.0


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


def build_data_model(
    kind: str, features: int, classes: int, hidden: Sequence[int] = DEFAULT_HIDDEN_LAYERS
) -> Model:
    """The demo's ``kind`` of model for rows of ``features`` numbers and ``classes`` labels.

    ``mlp`` and ``torch-mlp``: ``features -> hidden... -> classes``. The image models
    (``cnn``, ``rnn``, ``torch-cnn``) fit only when ``features`` is a square ``side x side``
    (side >= 4), read as one grey image; :class:`DemoError` otherwise.
    """
    layers = [features, *hidden, classes]
    try:
        if kind == "mlp":
            return MLP(layers)
        if kind == "torch-mlp":
            from trapdoor.ml.torch_adapter import TorchModel  # optional extra

            return TorchModel("torch-mlp", layer_sizes=layers)
        if kind not in MODELS:
            raise DemoError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")
        side = math.isqrt(features)
        if side * side != features or side < 4:
            raise DemoError(
                f"--model {kind} reads square images (side x side features, side >= 4), and "
                f"{features} features are not one; use --model mlp or torch-mlp"
            )
        if kind == "cnn":
            from trapdoor.ml.cnn import CNN

            return CNN(input_shape=(1, side, side), conv_channels=8, num_classes=classes)
        if kind == "rnn":
            from trapdoor.ml.rnn import GRU

            return GRU(input_shape=(side, side), hidden=32, num_classes=classes, clip_value=1.0)
        from trapdoor.ml.torch_adapter import TorchModel  # optional extra

        return TorchModel("torch-cnn", side=side, channels=8, num_classes=classes)
    except ValueError as exc:
        raise DemoError(f"--model {kind} does not fit the data: {exc}") from None


@dataclass(frozen=True)
class DemoData:
    """The participants' own files, read and checked exactly as their nodes will read them."""

    #: What each node is told (``trapdoor node serve --data-*``), participant ``i`` at ``i``.
    files: tuple[NodeData, ...]
    #: Each participant's training and test rows.
    parts: tuple[LocalData, ...]
    num_features: int
    num_classes: int

    def reference(self, test_of: Sequence[int] | None = None) -> tuple[Dataset, list[np.ndarray]]:
        """Every participant's training rows, one file after the other, with the test rows of
        participants ``test_of`` (default: all); and each participant's row indices."""
        members = range(len(self.parts)) if test_of is None else test_of
        sizes = [len(p.y_train) for p in self.parts]
        starts = np.cumsum([0, *sizes])
        dataset = Dataset(
            "data",
            np.concatenate([p.X_train for p in self.parts]),
            np.concatenate([p.y_train for p in self.parts]),
            np.concatenate([self.parts[i].X_test for i in members]),
            np.concatenate([self.parts[i].y_test for i in members]),
            self.num_features,
            self.num_classes,
        )
        indices = [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
        return dataset, indices

    def summary(self) -> list[dict[str, Any]]:
        return [
            {**part.summary(), "test_fraction": node.test_fraction}
            for node, part in zip(self.files, self.parts, strict=True)
        ]


def _holds_test_part(path: str) -> bool:
    """A ``.npz`` with its own test arrays (``X_train, y_train, X_test, y_test``)."""
    if Path(path).suffix.lower() != ".npz" or not Path(path).is_file():
        return False
    try:
        with np.load(path) as npz:
            return set(NPZ_KEYS) <= set(npz.files)
    except (OSError, ValueError):
        return False  # load_local_data says what is wrong with it


def load_demo_data(
    paths: Sequence[str],
    *,
    label: str = DEFAULT_LABEL,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> DemoData:
    """Each participant's file (:func:`trapdoor.ml.data.load_local_data`), checked together.

    A ``.npz`` with ``X_train, y_train, X_test, y_test`` keeps its test part; any other file
    holds out ``test_fraction`` of its rows, shuffled by ``seed`` (as its node will). Every
    file must have the same feature columns, and the labels of all files together must be
    the class numbers ``0..k-1``, each present (``k``: the model's class count).
    :class:`DemoError` naming the file at fault, before anything starts.
    """
    if not paths:
        raise DemoError("no --data files")
    files: list[NodeData] = []
    parts: list[LocalData] = []
    for path in map(str, paths):
        node = NodeData(
            path, None if _holds_test_part(path) else test_fraction, split_seed=seed, label=label
        )
        try:
            data = load_local_data(
                path, label=label, test_fraction=node.test_fraction, seed=node.split_seed
            )
        except (DataError, OSError, ValueError) as exc:
            message = str(exc)
            raise DemoError(message if message.startswith(path) else f"{path}: {message}") from None
        files.append(node)
        parts.append(data)
    first, width = paths[0], parts[0].X_train.shape[1]
    for path, data in zip(paths[1:], parts[1:], strict=True):
        if data.X_train.shape[1] != width:
            raise DemoError(
                f"{path}: {data.X_train.shape[1]} feature columns, but {first} has {width}; "
                "every participant's rows need the same columns"
            )
        names, names0 = data.feature_names, parts[0].feature_names
        if names is not None and names0 is not None and names != names0:
            raise DemoError(
                f"{path}: feature columns {list(names)} differ from {first}'s {list(names0)}; "
                "every participant's rows need the same columns in the same order"
            )
    labels = np.unique(np.concatenate([np.concatenate([p.y_train, p.y_test]) for p in parts]))
    classes = int(labels.max()) + 1
    missing = sorted(set(range(classes)) - {int(v) for v in labels})
    if classes < 2 or missing:
        where = ", ".join(map(str, paths))
        raise DemoError(
            f"labels must be the class numbers 0..k-1, each present in some file, with k >= 2; "
            f"{where} have labels {[int(v) for v in labels[:12]]}"
            + (f", but no {missing[:12]}" if missing else "")
        )
    for path, data in zip(paths, parts, strict=True):
        try:
            check_local_data(data, features=width, classes=classes, source=path)
        except DataError as exc:
            raise DemoError(str(exc)) from None
    return DemoData(tuple(files), tuple(parts), int(width), classes)


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run does: the options of ``trapdoor demo`` (its ``--help`` says each)."""

    #: ``None``: :data:`DEFAULT_PARTICIPANTS`, or one per ``data`` file.
    participants: int | None = None
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
    #: The job shares the contributors' evaluations with the PS (``share_metrics``).
    share_metrics: bool = True
    #: One file per participant instead of partitions of ``dataset``.
    data: tuple[str, ...] = ()
    data_label: str = DEFAULT_LABEL
    data_test_fraction: float = DEFAULT_TEST_FRACTION
    #: Hidden layer widths of the MLP sized from ``data`` (``None``: 32).
    hidden_layers: tuple[int, ...] | None = None


def parse_demo_options(argv: Sequence[str]) -> DemoOptions:
    """The options ``trapdoor demo ARGV`` would run with, without running it (benchmarks and
    tests describe their runs this way). A bad option raises :class:`click.UsageError`."""
    return _options(demo.make_context("trapdoor demo", list(argv)))


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def _options(ctx: click.Context) -> DemoOptions:
    """The parsed options, checked together (:class:`click.UsageError` for a clash)."""
    params = dict(ctx.params)
    data = params.get("data") or ()
    if data:
        for name in ("dataset", "partition_scheme"):
            if _given(ctx, name):
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(
                    f"{flag} does not go with --data: the files are the participants' data", ctx
                )
        given = params.get("participants")
        if given is not None and given != len(data):
            raise click.UsageError(
                f"--participants {given} but {len(data)} --data file(s): with --data there is "
                "one participant per file (leave --participants out)",
                ctx,
            )
        params["participants"] = len(data)
    else:
        for name in ("data_label", "data_test_fraction", "hidden_layers"):
            if _given(ctx, name):
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(f"{flag} goes with --data", ctx)
        if params.get("participants") is None:
            params["participants"] = DEFAULT_PARTICIPANTS
    return DemoOptions(**params)


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


def _write_plot(
    path: str,
    encrypted: list[float],
    plaintext: list[float],
    title: str,
    *,
    shared: list[float] | None = None,
    encrypted_label: str = "encrypted (Trapdoor FL)",
) -> None:
    with needs_extra("demo", "the demo's accuracy plot"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(1, len(encrypted) + 1))
    ax.plot(xs, plaintext, "o-", label="plaintext FedAvg")
    ax.plot(xs, encrypted, "x--", label=encrypted_label)
    if shared is not None:
        ax.plot(xs, shared, "+:", label="contributors' reported accuracy (PS, weighted)")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def job_definition(
    job_id: str,
    model: Model,
    w0: Any,
    config: TrainingConfig,
    *,
    seed: int,
    samples: dict[str, int],
    quorum: int,
    rounds: int,
    aggregation: str,
    share_metrics: bool,
) -> dict[str, Any]:
    """The demo's job definition (``POST /v1/jobs`` at the PS): ``samples`` maps each
    participant's subject id to its number of training rows (its FedAvg weight)."""
    return {
        "job_id": job_id,
        "model": model.spec(),
        "initial_weights": b64encode(np.asarray(w0, dtype="<f8").tobytes()),
        "training": {
            "learning_rate": config.learning_rate,
            "local_epochs": config.local_epochs,
            "batch_size": config.batch_size,
            "mode": config.mode,
            "seed": seed,
        },
        "participants": [{"subject_id": s, "num_samples": n} for s, n in samples.items()],
        "quorum": quorum,
        "rounds": rounds,
        "round_deadline_seconds": 3600,
        "below_quorum_policy": "stay-open",
        "aggregation": aggregation,
        "encoding": dict(DEMO_MASKED_ENCODING if aggregation == "masked" else DEMO_ENCODING),
        "share_metrics": share_metrics,
    }


def run_demo(args: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to ``--json``)."""
    own: DemoData | None = None
    if args.data:
        if args.participants is not None and args.participants != len(args.data):
            raise DemoError(
                f"participants {args.participants} but {len(args.data)} data files: "
                "one participant per file"
            )
        # every file is read and checked before any service starts
        own = load_demo_data(
            args.data,
            label=args.data_label,
            test_fraction=args.data_test_fraction,
            seed=args.seed,
        )
        k = len(args.data)
    else:
        if args.hidden_layers is not None:
            raise DemoError("hidden_layers sizes the model of --data files")
        k = DEFAULT_PARTICIPANTS if args.participants is None else args.participants
    rounds = args.rounds
    if k < 1 or rounds < 1:
        raise DemoError("need at least one participant and one round")
    model_name, aggregation = args.model, args.aggregation
    hidden = DEFAULT_HIDDEN_LAYERS if args.hidden_layers is None else args.hidden_layers
    if own is not None:
        model = build_data_model(model_name, own.num_features, own.num_classes, hidden)
    else:
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
    name = "data" if own is not None else args.dataset
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
            data=own.files if own is not None else None,
        )
        node_ops = [cluster.node_operator(i) for i in range(k)]

        # -- the job
        if own is not None:
            dataset, parts = own.reference()
        else:
            dataset, parts = dataset_partitions(args.dataset, k, args.partition_scheme, args.seed)
        w0 = model.init_parameters(np.random.default_rng(args.seed))
        config = TrainingConfig(
            learning_rate=learning_rate, local_epochs=args.local_epochs, batch_size=32
        )
        job_id = f"{name}-demo-{secrets.token_hex(3)}"
        definition = job_definition(
            job_id,
            model,
            w0,
            config,
            seed=args.seed,
            samples={s: len(p) for s, p in zip(subjects, parts, strict=True)},
            quorum=quorum,
            rounds=rounds,
            aggregation=aggregation,
            share_metrics=args.share_metrics,
        )
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
        round_info = follow_rounds(
            ps_ops, job_id, expected, args.timeout, participants=k, quiet=args.quiet
        )
        node_jobs = wait_nodes(node_ops, job_id, expected, args.timeout)
        shared = (
            wait_shared_metrics(ps_ops, job_id, round_info, node_jobs, subjects)
            if args.share_metrics
            else None
        )
        job_seconds = time.perf_counter() - t_job

        # -- the contributors' own evaluations of each released W_{t+1}
        evaluations = [
            [_evaluation(node_jobs[i], t) for i in who] for t, who in enumerate(expected)
        ]
        node_weighted = [_weighted_accuracy(evals) for evals in evaluations]
        contributor_accuracies = [[acc for acc, _ in evals] for evals in evaluations]

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
        if own is not None:
            plaintext = _plaintext_on_own_data(model, own, config, rounds, args.seed, expected)
        else:
            history = run_plaintext_fedavg(
                model, dataset, parts, config, rounds, args.seed, participants_per_round=expected
            )
            plaintext = [float(h["test_accuracy"]) for h in history]
        w0_acc = evaluate(model, w0, dataset.X_test, dataset.y_test)["accuracy"]
    finally:
        cluster.stop()

    # -- encrypted accuracy. On a bundled data set every contributor of round t holds the
    # same W_{t+1} and the same test rows: any one's accuracy (and they must agree). On
    # own data each scores its own test rows: their example-weighted average, which the
    # PS reports when the job shares metrics, is the model's accuracy on all those rows.
    contributors = [len(r["contributors"]) for r in round_info]
    shared_accuracy = [_shared_accuracy(s) for s in shared] if shared is not None else None
    complete = shared is not None and all(
        s.get("reporters") == n and a is not None
        for s, n, a in zip(shared, contributors, shared_accuracy or [], strict=True)
    )
    # every round's shared accuracy, once every contributor reported it
    shared_complete = [a for a in shared_accuracy or [] if a is not None] if complete else None
    spread: float | None = None
    encrypted: list[float]
    if own is None:
        encrypted = [accs[0] for accs in contributor_accuracies]
        spread = max(max(accs) - min(accs) for accs in contributor_accuracies)
        source = "node"
    elif shared_complete is not None:
        encrypted = shared_complete
        source = "ps-shared-metrics"
    else:  # no shared metrics (or not every contributor's): the nodes' own, weighted here
        encrypted = node_weighted
        source = "nodes-weighted"

    diffs = [abs(e - p) for e, p in zip(encrypted, plaintext, strict=True)]
    per_round: list[dict[str, Any]] = []
    for t in range(rounds):
        row: dict[str, Any] = {
            "round": t,
            "encrypted_accuracy": encrypted[t],
            "plaintext_accuracy": plaintext[t],
            "abs_diff": diffs[t],
            "contributors": contributors[t],
            "contributor_accuracies": contributor_accuracies[t],
        }
        if shared is not None and shared_accuracy is not None:
            row.update(
                {
                    "shared_accuracy": shared_accuracy[t],
                    "shared_loss": shared[t].get("loss"),
                    "shared_num_examples": shared[t].get("num_examples", 0),
                    "reporters": shared[t].get("reporters", 0),
                }
            )
        per_round.append(row)
    summary: dict[str, Any] = {
        "job_id": job_id,
        "dataset": name,
        "model_name": model_name,
        "aggregation": aggregation,
        "model": model.spec(),
        "num_parameters": model.num_parameters,
        "learning_rate": learning_rate,
        "partition_scheme": args.partition_scheme if own is None else None,
        "bits": args.bits,
        "participants": k,
        "quorum": quorum,
        "share_metrics": args.share_metrics,
        "initial_accuracy": w0_acc,
        "encrypted_accuracy_source": source,
        "rounds": per_round,
        "contributors_per_round": contributors,
        "expected_contributors_per_round": [len(c) for c in expected],
        "non_contributor_refused": refused,
        "max_abs_accuracy_diff": max(diffs),
        # bundled data set: every contributor holds the same model and test rows, so 0.0
        # (own data: None, each node scores its own rows)
        "contributor_accuracy_spread": spread,
        "transfer": _phase_totals(node_jobs),
        "job_seconds": job_seconds,
        "total_seconds": time.perf_counter() - t_start,
    }
    if shared_accuracy is not None:
        # every contributor reported, and the PS's average is the one of the nodes' own rows
        summary["shared_metrics_complete"] = complete
        gaps = [
            abs(a - w) for a, w in zip(shared_accuracy, node_weighted, strict=True) if a is not None
        ]
        summary["max_abs_shared_diff"] = max(gaps) if gaps else None
    if own is not None:
        summary["data"] = own.summary()
        summary["num_features"] = own.num_features
        summary["num_classes"] = own.num_classes
        summary["hidden_layers"] = list(hidden) if model_name in ("mlp", "torch-mlp") else None
    _report(summary)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        what = f"{k} data files" if own is not None else args.dataset
        _write_plot(
            args.plot,
            encrypted if own is None else node_weighted,  # on own data: as the nodes hold it
            plaintext,
            f"{what}, {model_name}: {k} participants",
            shared=shared_complete,
            encrypted_label=(
                "encrypted (Trapdoor FL)"
                if own is None
                else "encrypted (Trapdoor FL, nodes' test rows, weighted)"
            ),
        )
        print(f"accuracy plot written to {args.plot}")
    return summary


def _evaluation(view: dict[str, Any], t: int) -> tuple[float, int]:
    """A node's accuracy of ``W_{t+1}`` on its test rows, and how many rows those are."""
    row = next(r for r in view["rounds"] if r["round"] == t)
    evaluation = row.get("evaluation") or {}
    examples = int(evaluation.get("num_examples") or 0)
    return float(row["test_accuracy"]), examples


def _weighted_accuracy(evaluations: Sequence[tuple[float, int]]) -> float:
    total = sum(n for _, n in evaluations)
    if total == 0:
        return float(evaluations[0][0])
    return sum(acc * n for acc, n in evaluations) / total


def _shared_accuracy(shared: dict[str, Any]) -> float | None:
    """The PS's weighted accuracy of a round; ``None`` before anyone reported one."""
    value = (shared.get("metrics") or {}).get("accuracy")
    return None if value is None else float(value)


def _plaintext_on_own_data(
    model: Model,
    own: DemoData,
    config: TrainingConfig,
    rounds: int,
    seed: int,
    expected: list[list[int]],
) -> list[float]:
    """Plaintext FedAvg on the participants' own rows; round ``t``'s accuracy on the union
    of its contributors' test rows (the rows whose weighted average the encrypted job
    reports). One run per distinct set of contributors: the training is the same."""
    by_members: dict[tuple[int, ...], list[int]] = {}
    for t, who in enumerate(expected):
        by_members.setdefault(tuple(who), []).append(t)
    accuracy = [0.0] * rounds
    for members, ts in by_members.items():
        dataset, parts = own.reference(members)
        history = run_plaintext_fedavg(
            model, dataset, parts, config, max(ts) + 1, seed, participants_per_round=expected
        )
        for t in ts:
            accuracy[t] = float(history[t]["test_accuracy"])
    return accuracy


def wait_shared_metrics(
    ps_ops: ServiceClient,
    job_id: str,
    round_info: list[dict[str, Any]],
    node_jobs: list[dict[str, Any]],
    subjects: list[str],
) -> list[dict[str, Any]]:
    """Each round's ``shared_metrics`` at the PS, once every contributor whose node says it
    reported is counted (contributors report right after opening the model)."""
    deadline = time.monotonic() + SHARED_METRICS_WAIT
    shared: list[dict[str, Any]] = []
    for t, info in enumerate(round_info):
        owed = set()
        for subject in info["contributors"]:
            view = node_jobs[subjects.index(subject)] if subject in subjects else None
            row = next((r for r in view["rounds"] if r["round"] == t), None) if view else None
            evaluation = (row.get("evaluation") or {}) if row is not None else {}
            if evaluation.get("reported") is False or "error" in evaluation:
                continue  # its node did not (could not) report
            owed.add(subject)
        while True:
            status = ps_ops.get_json(f"/v1/jobs/{job_id}/rounds/{t}")
            metrics: dict[str, Any] = status.get("shared_metrics") or {"reporters": 0}
            if owed <= set(metrics.get("reported", [])) or time.monotonic() > deadline:
                shared.append(metrics)
                break
            time.sleep(0.3)
    return shared


def follow_rounds(
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


def wait_nodes(
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
    if "data" in summary:
        files = ", ".join(
            f"{d['source']} ({d['num_train']} train, {d['num_test']} test)" for d in summary["data"]
        )
        print(
            f"data: {files}; {summary['num_features']} features, {summary['num_classes']} classes"
        )
        print(
            "encrypted accuracy: the contributors' accuracies on their own test rows, "
            "weighted by test rows; plaintext: on all those rows"
        )
    print(f"initial accuracy {summary['initial_accuracy']:.4f}")
    shared = summary.get("share_metrics") and "shared_metrics_complete" in summary
    extra = f" {'shared (PS)':>11} {'reporters':>9}" if shared else ""
    print(f"{'round':>5} {'contrib':>7} {'encrypted':>10} {'plaintext':>10} {'diff':>8}{extra}")
    for r in summary["rounds"]:
        extra = f" {r['shared_accuracy']:>11.4f} {r['reporters']:>9}" if shared else ""
        print(
            f"{r['round']:>5} {r['contributors']:>7} {r['encrypted_accuracy']:>10.4f} "
            f"{r['plaintext_accuracy']:>10.4f} {r['abs_diff']:>8.5f}{extra}"
        )
    if shared:
        print(
            "shared (PS): the contributors' reported accuracy, weighted by their test "
            f"examples; every contributor reported: {summary['shared_metrics_complete']}"
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


def _layer_widths(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    """``"64,32"`` as ``(64, 32)``; ``""`` or ``"none"``: no hidden layer."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in ("", "none"):
        return ()
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of widths") from None
    if any(w < 1 for w in widths):
        raise click.BadParameter(f"{value!r}: every width must be at least 1")
    return widths


@click.command(name="demo")
@click.option(
    "--participants",
    type=click.IntRange(min=1),
    default=None,
    show_default=f"{DEFAULT_PARTICIPANTS}; with --data, one per file",
)
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
@click.option(
    "--share-metrics/--no-share-metrics",
    default=_DEFAULT.share_metrics,
    show_default=True,
    help="the job shares each contributor's evaluation of the released models with the "
    "PS, which reports their average weighted by test examples",
)
@click.option(
    "--data",
    multiple=True,
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False),
    help="a participant's own data (.csv with a header row, .parquet, or .npz); once per "
    "participant, instead of --dataset. Labels are class numbers 0..k-1, features numbers "
    "(scale them: the encoding holds weights within +-16)",
)
@click.option(
    "--data-label",
    default=_DEFAULT.data_label,
    show_default=True,
    help="the label column of the --data .csv/.parquet files",
)
@click.option(
    "--data-test-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=_DEFAULT.data_test_fraction,
    show_default=True,
    help="test rows held out of each --data file (seeded by --seed); a .npz with "
    "X_train, y_train, X_test, y_test keeps its own",
)
@click.option(
    "--hidden-layers",
    callback=_layer_widths,
    metavar="W1,W2,...",
    help="hidden layer widths of the MLP sized from --data "
    f"(default: {','.join(map(str, DEFAULT_HIDDEN_LAYERS))}; 'none': softmax regression)",
)
def demo(**options: Any) -> None:
    """Run a whole encrypted federated job on this machine and check it against plaintext.

    Starts the KGC, the parameter server and one participant node per data owner as real
    processes on loopback, trains the job, then re-runs it in the clear with the same
    seed, partitions and schedule: the accuracies must match to fixed-point rounding. One
    participant skips a round (--skip-round), and must be refused that round's model.
    With --data PATH (once per participant) each node trains on its own file. Exits 0
    when everything matched, 1 otherwise.
    """
    chosen = _options(click.get_current_context())
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
        and summary.get("shared_metrics_complete", True)
        and (summary.get("max_abs_shared_diff") or 0.0) <= 1e-9
    )
    raise click.exceptions.Exit(0 if ok else 1)


def main(argv: Sequence[str] | None = None) -> int:
    """``trapdoor demo ARGV`` (also ``python -m trapdoor.demo.job``); returns the exit status."""
    return exit_status(demo, argv, "trapdoor demo")


if __name__ == "__main__":
    sys.exit(main())
