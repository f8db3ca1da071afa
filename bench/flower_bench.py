"""One federated round of Flower with SecAgg+ beside plain Flower FedAvg (issue 12).

Run ``python -m bench.flower_bench [--k 2 5 10] [--rounds N] [--out bench/results/flower]``
(well under a minute on two cores). It needs Flower, which the project's default install
does not include: ``pip install 'flwr==1.42.0'``; the simulation extra (Ray) is *not*
needed, see "Runtime" below. Without Flower it exits with status 2 and says so.

What runs
---------
For each ``K`` in ``--k`` there are two runs on the same model, the same clients and the
same starting parameters, with ``--warmup`` unrecorded rounds followed by ``--rounds``
recorded ones:

* **plain**: Flower's legacy ``DefaultWorkflow`` with its default fit workflow and
  ``flwr.server.strategy.FedAvg`` (every client sampled, evaluation off), and a
  ``ClientApp(client_fn=...)`` whose ``NumPyClient`` does the "training";
* **SecAgg+**: the same, with ``fit_workflow=SecAggPlusWorkflow(...)`` on the server and
  ``mods=[secaggplus_mod]`` on the ``ClientApp``: Flower's own SecAgg+ code on both sides.

The model is the project's MNIST MLP, 784-128-64-10: six float32 arrays in PyTorch's
``nn.Linear`` layout, 109,386 parameters (``--model tiny`` is a 46-parameter one for
tests). The "training" is trivial on purpose, so that the figures are the protocol's
cost: each client returns the parameters it received plus a fixed random float32 vector
(normal, sd 0.01, seeded by the client's partition id) and ``num_examples = 1000``.

SecAgg+ parameters: ``SecAggPlusWorkflow`` has no default for ``num_shares`` or
``reconstruction_threshold`` (both are required); this uses 3 and 2, the values of
Flower's own ``flower-secure-aggregation`` example (``--num-shares``, ``--threshold``
to change them). Everything else is the workflow's default: ``max_weight`` 1000 (which the
clients' ``num_examples`` equals, so each client's weight factor quantizes exactly),
``clipping_range`` 8.0, ``quantization_range`` 2^22, ``modulus_range`` 2^32.

Runtime
-------
In Flower 1.42 ``flwr.simulation.run_simulation`` has a single backend, Ray (the
``flwr[simulation]`` extra, ``ray==2.55.1``), which adds worker processes and 0.1 s
polling loops to every round trip. This benchmark does not use it. It drives the real
``DefaultWorkflow``/``SecAggPlusWorkflow`` and the real ``ClientApp`` and mods in one
process, through a small in-process ``flwr.serverapp.Grid``: every message and every
reply is deflated into Flower's wire objects (``get_all_nested_objects(msg)`` and
``obj.deflate()``, the object tree that the deployment runtime pushes and pulls) and
inflated again on the other side (``inflate_object_from_contents``), and each client
keeps its own ``Context`` across messages, as a SuperNode does. Clients run one after the
other; there is no network, gRPC, SuperLink or database.

What is measured (per recorded round; the table shows the median over rounds)
------------------------------------------------------------------------------
* **round wall**: the server's fit round from its start (``configure_fit``) to the new
  aggregated parameters being stored (``aggregate_fit`` done), all in one process, the
  clients included, one after the other;
* **round trips**: ``Grid.send_and_receive`` calls per fit round;
* **server compute**: the round's wall (and CPU) time outside the clients: the
  workflow's own steps between round trips plus the server's half of the serialization
  (deflating what it sends, inflating what it receives). **Aggregation** is the part
  after the replies with the updates arrive: plain, ``aggregate_fit``; SecAgg+, summing
  the masked vectors (after the ``collect_masked_vectors`` trip) plus unmasking
  (Shamir reconstruction, regenerating the masks, dequantizing, ``aggregate_fit``: after
  the ``unmask`` trip);
* **client**, per client and round (mean over the K clients), wall and CPU time
  of its ``ClientApp`` calls over all round trips, split into the *app* (Flower's legacy
  message handling + the trivial ``fit``, timed by a mod placed inside ``secaggplus_mod``)
  and the *mod* (the rest: for SecAgg+ key generation, Shamir sharing, share encryption,
  quantization and masking; for plain Flower only the ``ClientApp`` dispatch), and the
  client's half of the serialization; also the wall time per SecAgg+ stage;
* **bytes** per client and round, down (server to client) and up: the summed length of
  the deflated object tree of each message (message, record dict, records, arrays and
  array chunks, metadata included; gRPC/HTTP framing and object-ID lists excluded);
* **parallel-client estimate**: server compute plus, for each round trip, the slowest
  client's time (app + mod + its serialization): the round's wall if the clients ran on
  their own machines over an instant network. An estimate, not a measurement;
* a check: the SecAgg+ model after all rounds against the plain FedAvg one and against
  the exact average (the run fails loudly if SecAgg+ is off by more than 1e-4).

CPU times are process CPU times (Flower's Shamir sharing and reconstruction use a thread
pool); nothing else runs in the process meanwhile. Two things of Flower's that show in the
bytes: the SecAgg+ upload is the masked vector as int64 ``.npy`` bytes in a
``ConfigRecord`` (8 B per parameter, against 4 for the float32 ``ArrayRecord`` of plain
FedAvg), and ``SecAggPlusWorkflow`` hands the strategy a float64 aggregate, so from the
second round on the global model it sends down is float64 too (the warm-up round absorbs
the one float32 download).

Writes ``<out>/flower_bench.json``, ``<out>/flower_bench.txt`` and
``<out>/flower_bench.png``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bench.crypto_bench import _loadavg, _log, _machine, command_line, grouped_bars, publish

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.serverapp import Grid

__all__ = ["main", "run_benchmark"]

FLWR_PIN = "flwr==1.42.0"
MODELS: dict[str, tuple[tuple[int, ...], ...]] = {
    # PyTorch nn.Linear layout: weight (out, in), then bias (out,).
    "mnist-mlp": ((128, 784), (128,), (64, 128), (64,), (10, 64), (10,)),
    "tiny": ((4, 8), (4,), (2, 4), (2,)),
}
DATA_SEED = 20240601
INIT_SCALE = 0.05
DELTA_SCALE = 0.01
NUM_EXAMPLES = 1000
NUM_SHARES = 3  # Flower's flower-secure-aggregation example (the workflow has no default)
RECONSTRUCTION_THRESHOLD = 2  # idem
TOLERANCE = 1e-4
RUN_ID = 7
SERVER_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID
FIRST_CLIENT_NODE_ID = 101
PLAIN_STAGE = "fit"
_COLLECT = "collect_masked_vectors"  # the SecAgg+ stage that carries the update
MODES = ("plain", "secaggplus")
MODE_LABEL = {"plain": "plain", "secaggplus": "SecAgg+"}

Arrays = list[npt.NDArray[Any]]


class FlowerMissingError(RuntimeError):
    """Flower is not installed."""


def _flwr_version() -> str:
    try:
        import flwr  # noqa: F401  (only to see that it imports)
    except ImportError as exc:
        raise FlowerMissingError(
            "bench.flower_bench needs Flower, which the project's default install does not "
            f"include: .venv/bin/pip install '{FLWR_PIN}'"
        ) from exc
    return importlib.metadata.version("flwr")


# ---------------------------------------------------------------------------
# Measurement records
# ---------------------------------------------------------------------------


class _Clock:
    """Wall and process CPU time since the last ``lap``.

    Process, not thread, CPU time: Flower's Shamir sharing runs in a thread pool. Nothing
    else runs in this process meanwhile (clients and server take turns).
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


@dataclass
class _ClientCall:
    """One client's handling of one message."""

    node: int
    stage: str
    down_bytes: int = 0
    up_bytes: int = 0
    wall_s: float = 0.0  # the ClientApp call (mods + app)
    cpu_s: float = 0.0
    app_wall_s: float = 0.0  # inside the innermost mod: legacy handling + fit
    app_cpu_s: float = 0.0
    serde_wall_s: float = 0.0  # inflate what it receives + deflate its reply
    serde_cpu_s: float = 0.0


@dataclass
class _Trip:
    """One ``send_and_receive``: a round trip to the sampled clients."""

    stage: str
    start: float
    start_cpu: float
    end: float = 0.0
    end_cpu: float = 0.0
    server_serde_wall_s: float = 0.0
    server_serde_cpu_s: float = 0.0
    calls: list[_ClientCall] = field(default_factory=list)


@dataclass
class _AppTimer:
    """Filled by the innermost mod, read by the grid after each ClientApp call."""

    wall_s: float = 0.0
    cpu_s: float = 0.0


@dataclass
class _Meter:
    """Everything measured in one run (one K, one mode)."""

    trips: list[_Trip] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    app: _AppTimer = field(default_factory=_AppTimer)


# ---------------------------------------------------------------------------
# Flower side: model, client, in-process grid, timed fit round
# ---------------------------------------------------------------------------


def _initial_arrays(shapes: Sequence[tuple[int, ...]]) -> Arrays:
    rng = np.random.default_rng(DATA_SEED)
    return [rng.normal(0.0, INIT_SCALE, s).astype(np.float32) for s in shapes]


def _client_delta(shapes: Sequence[tuple[int, ...]], partition: int) -> Arrays:
    rng = np.random.default_rng(DATA_SEED + 1 + partition)
    return [rng.normal(0.0, DELTA_SCALE, s).astype(np.float32) for s in shapes]


def _stage_of(msg: Message) -> str:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:
        return PLAIN_STAGE
    return str(configs.get(Key.STAGE, "?"))


def _wire(msg: Message) -> tuple[dict[str, bytes], int]:
    """``msg`` deflated into Flower's wire objects, and their total length."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    return contents, sum(len(c) for c in contents.values())


def _unwire(object_id: str, contents: dict[str, bytes], message_id: str) -> Message:
    from flwr.app import Message
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    msg = inflate_object_from_contents(object_id, contents)
    if not isinstance(msg, Message):
        raise TypeError(f"expected a Message, inflated a {type(msg).__name__}")
    # The message ID is not part of the deflated object; the SuperLink sets it.
    msg.metadata.__dict__["_message_id"] = message_id
    return msg


def _make_client_app(shapes: Sequence[tuple[int, ...]], secure: bool, timer: _AppTimer) -> Any:
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.clientapp.typing import ClientAppCallable, Mod

    deltas: dict[int, Arrays] = {}

    class _Client(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.delta = deltas.setdefault(partition, _client_delta(shapes, partition))

        def fit(
            self, parameters: Arrays, config: dict[str, Any]
        ) -> tuple[Arrays, int, dict[str, Any]]:
            return [p + d for p, d in zip(parameters, self.delta, strict=True)], NUM_EXAMPLES, {}

    def client_fn(context: Context) -> Any:
        return _Client(int(context.node_config["partition-id"])).to_client()

    def app_timer_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        clock = _Clock()
        out = call_next(msg, ctxt)
        timer.wall_s, timer.cpu_s = clock.lap()
        return out

    mods: list[Mod] = [secaggplus_mod, app_timer_mod] if secure else [app_timer_mod]
    return ClientApp(client_fn=client_fn, mods=mods)


def _make_grid(app: Any, k: int, meter: _Meter) -> Grid:
    """An in-process ``Grid`` that hands each message, through Flower's wire format, to
    the ``ClientApp`` of its destination node."""
    from flwr.app import Context, Message, RecordDict
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    class _InProcessGrid(Grid):
        def __init__(self) -> None:
            self._run = Run.create_empty(RUN_ID)
            self.node_ids = list(range(FIRST_CLIENT_NODE_ID, FIRST_CLIENT_NODE_ID + k))
            self.contexts = {
                nid: Context(
                    run_id=RUN_ID,
                    node_id=nid,
                    node_config={"partition-id": i, "num-partitions": k},
                    state=RecordDict(),
                    run_config={},
                )
                for i, nid in enumerate(self.node_ids)
            }

        def set_run(self, run: Run) -> None:
            self._run = run

        @property
        def run(self) -> Run:
            return self._run

        def create_message(
            self,
            content: RecordDict,
            message_type: str,
            dst_node_id: int,
            group_id: str,
            ttl: float | None = None,
        ) -> Message:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> list[int]:
            return list(self.node_ids)

        def push_messages(self, messages: Any) -> list[str]:
            raise NotImplementedError("the benchmark only uses send_and_receive")

        def pull_messages(self, message_ids: Any) -> list[Message]:
            raise NotImplementedError("the benchmark only uses send_and_receive")

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
            messages = list(messages)
            stage = _stage_of(messages[0]) if messages else "?"
            clock = _Clock()
            trip = _Trip(stage=stage, start=clock.wall, start_cpu=clock.cpu)
            replies: list[Message] = []
            for msg in messages:
                call = _ClientCall(node=msg.metadata.dst_node_id, stage=_stage_of(msg))
                # Server: give the message its ID (the SuperLink's job) and deflate it.
                clock.lap()
                msg.metadata.__dict__["_message_id"] = msg.object_id
                contents, call.down_bytes = _wire(msg)
                w1, c1 = clock.lap()
                # Client: inflate it, run the ClientApp, deflate the reply.
                received = _unwire(msg.object_id, contents, msg.metadata.message_id)
                w2, c2 = clock.lap()
                meter.app.wall_s = meter.app.cpu_s = math.nan
                reply = app(received, self.contexts[call.node])
                call.wall_s, call.cpu_s = clock.lap()
                call.app_wall_s, call.app_cpu_s = meter.app.wall_s, meter.app.cpu_s
                reply_id = reply.object_id
                reply_contents, call.up_bytes = _wire(reply)
                w3, c3 = clock.lap()
                # Server: inflate the reply.
                replies.append(_unwire(reply_id, reply_contents, reply_id))
                w4, c4 = clock.lap()
                call.serde_wall_s, call.serde_cpu_s = w2 + w3, c2 + c3
                trip.server_serde_wall_s += w1 + w4
                trip.server_serde_cpu_s += c1 + c4
                trip.calls.append(call)
            trip.end, trip.end_cpu = time.perf_counter(), time.process_time()
            meter.trips.append(trip)
            return replies

    return _InProcessGrid()


def _round_record(
    meter: _Meter, start: float, start_cpu: float, end: float, end_cpu: float
) -> dict[str, Any]:
    """Summarize one fit round from the trips it made (``meter.trips``)."""
    trips = meter.trips
    meter.trips = []
    # Server time between round trips, each labelled by the trip before it.
    segments: dict[str, float] = {}
    segments_cpu: dict[str, float] = {}
    prev, prev_cpu, label = start, start_cpu, "before_" + (trips[0].stage if trips else "?")
    for trip in trips:
        segments[label] = trip.start - prev
        segments_cpu[label] = trip.start_cpu - prev_cpu
        prev, prev_cpu, label = trip.end, trip.end_cpu, "after_" + trip.stage
    segments[label] = end - prev
    segments_cpu[label] = end_cpu - prev_cpu
    server_serde = sum(t.server_serde_wall_s for t in trips)
    server_serde_cpu = sum(t.server_serde_cpu_s for t in trips)
    aggregation_keys = [
        key
        for key in segments
        if key in ("after_" + PLAIN_STAGE, "after_collect_masked_vectors", "after_unmask")
    ]

    nodes = sorted({c.node for t in trips for c in t.calls})
    per_client: dict[int, dict[str, Any]] = {}
    for node in nodes:
        calls = [c for t in trips for c in t.calls if c.node == node]
        wall = sum(c.wall_s for c in calls)
        cpu = sum(c.cpu_s for c in calls)
        app_wall = sum(c.app_wall_s for c in calls if c.stage in (PLAIN_STAGE, _COLLECT))
        app_cpu = sum(c.app_cpu_s for c in calls if c.stage in (PLAIN_STAGE, _COLLECT))
        stages: dict[str, float] = {}
        stages_cpu: dict[str, float] = {}
        for c in calls:
            stages[c.stage] = stages.get(c.stage, 0.0) + c.wall_s + c.serde_wall_s
            stages_cpu[c.stage] = stages_cpu.get(c.stage, 0.0) + c.cpu_s + c.serde_cpu_s
        per_client[node] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "app_wall_s": app_wall,
            "app_cpu_s": app_cpu,
            "mod_wall_s": wall - app_wall,
            "mod_cpu_s": cpu - app_cpu,
            "serde_wall_s": sum(c.serde_wall_s for c in calls),
            "serde_cpu_s": sum(c.serde_cpu_s for c in calls),
            "down_bytes": sum(c.down_bytes for c in calls),
            "up_bytes": sum(c.up_bytes for c in calls),
            "stages_wall_s": stages,
            "stages_cpu_s": stages_cpu,
        }
    server_wall = sum(segments.values()) + server_serde
    slowest = sum(max((c.wall_s + c.serde_wall_s for c in t.calls), default=0.0) for t in trips)
    return {
        "wall_s": end - start,
        "cpu_s": end_cpu - start_cpu,
        "round_trips": len(trips),
        "stages": [t.stage for t in trips],
        "server": {
            "compute_wall_s": server_wall,
            "compute_cpu_s": sum(segments_cpu.values()) + server_serde_cpu,
            "aggregation_wall_s": sum(segments[k] for k in aggregation_keys),
            "aggregation_cpu_s": sum(segments_cpu[k] for k in aggregation_keys),
            "serde_wall_s": server_serde,
            "segments_wall_s": segments,
        },
        "clients": {str(n): v for n, v in per_client.items()},
        "parallel_estimate_s": server_wall + slowest,
    }


def _run(
    k: int,
    mode: str,
    shapes: Sequence[tuple[int, ...]],
    rounds: int,
    warmup: int,
    num_shares: int,
    threshold: int,
) -> tuple[dict[str, Any], Arrays]:
    """Run ``warmup + rounds`` fit rounds; returns the per-round records and the model."""
    from flwr.app import Context, RecordDict
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.supercore.task_identity import TaskIdentity

    secure = mode == "secaggplus"
    # What the ServerApp runtime sets before it runs a ServerApp (Message() reads it).
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = SERVER_NODE_ID

    meter = _Meter()
    grid = _make_grid(_make_client_app(shapes, secure, meter.app), k, meter)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=k,
        min_evaluate_clients=k,
        min_available_clients=k,
        initial_parameters=ndarrays_to_parameters(_initial_arrays(shapes)),
        fit_metrics_aggregation_fn=lambda _: {},
    )
    context = LegacyContext(
        context=Context(
            run_id=RUN_ID, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config={}
        ),
        config=ServerConfig(num_rounds=warmup + rounds),
        strategy=strategy,
    )
    inner: Callable[[Grid, Context], None] = (
        SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold)
        if secure
        else default_fit_workflow
    )

    def timed_fit(grid: Grid, ctx: Context) -> None:
        meter.trips = []
        start, start_cpu = time.perf_counter(), time.process_time()
        inner(grid, ctx)
        end, end_cpu = time.perf_counter(), time.process_time()
        record = _round_record(meter, start, start_cpu, end, end_cpu)
        arrays = ctx.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        record["global_dtype"] = str(arrays[0].dtype)
        meter.rounds.append(record)

    DefaultWorkflow(fit_workflow=timed_fit)(grid, context)
    model = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    if len(meter.rounds) != warmup + rounds:
        raise RuntimeError(f"{mode} K={k}: {len(meter.rounds)} rounds ran, not {warmup + rounds}")
    return _summarize(k, mode, meter.rounds, warmup), model


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values))


def _summarize(k: int, mode: str, rounds: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    recorded = rounds[warmup:]

    def med(key: str) -> float:
        return _median([r[key] for r in recorded])

    def server(key: str) -> float:
        return _median([r["server"][key] for r in recorded])

    def segment(name: str) -> float:
        return _median([r["server"]["segments_wall_s"][name] for r in recorded])

    def client_mean(key: str) -> float:
        return _median([_mean([c[key] for c in r["clients"].values()]) for r in recorded])

    def client_max(key: str) -> float:
        return _median([max(c[key] for c in r["clients"].values()) for r in recorded])

    def client_stage(kind: str, stage: str) -> float:
        return _median([_mean([c[kind][stage] for c in r["clients"].values()]) for r in recorded])

    client_keys = (
        "wall_s",
        "cpu_s",
        "app_wall_s",
        "app_cpu_s",
        "mod_wall_s",
        "mod_cpu_s",
        "serde_wall_s",
        "serde_cpu_s",
    )
    server_keys = (
        "compute_wall_s",
        "compute_cpu_s",
        "aggregation_wall_s",
        "aggregation_cpu_s",
        "serde_wall_s",
    )
    stages: list[str] = recorded[0]["stages"]
    segments: list[str] = list(recorded[0]["server"]["segments_wall_s"])
    return {
        "k": k,
        "mode": mode,
        "round_trips": recorded[0]["round_trips"],
        "stages": stages,
        "round_wall_s": med("wall_s"),
        "round_cpu_s": med("cpu_s"),
        "parallel_estimate_s": med("parallel_estimate_s"),
        "server": {key: server(key) for key in server_keys}
        | {"segments_wall_s": {name: segment(name) for name in segments}},
        "client_mean": {key: client_mean(key) for key in client_keys}
        | {
            "stages_wall_s": {s: client_stage("stages_wall_s", s) for s in stages},
            "stages_cpu_s": {s: client_stage("stages_cpu_s", s) for s in stages},
        },
        "client_max_wall_s": client_max("wall_s"),
        "bytes_per_client": {
            "down": client_mean("down_bytes"),
            "up": client_mean("up_bytes"),
            "down_max": client_max("down_bytes"),
            "up_max": client_max("up_bytes"),
        },
        "global_dtype_by_round": [r["global_dtype"] for r in rounds],
        "per_round": [_compact(r) for r in rounds],
    }


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    """One round's record with the per-client figures reduced to their mean and max."""
    clients = list(record["clients"].values())
    scalars = [key for key, value in clients[0].items() if not isinstance(value, dict)]
    out = {key: value for key, value in record.items() if key != "clients"}
    out["client_mean"] = {key: _mean([c[key] for c in clients]) for key in scalars}
    out["client_max"] = {key: max(c[key] for c in clients) for key in scalars}
    return out


def run_benchmark(
    ks: Sequence[int],
    rounds: int,
    warmup: int = 1,
    model: str = "mnist-mlp",
    num_shares: int = NUM_SHARES,
    threshold: int = RECONSTRUCTION_THRESHOLD,
) -> dict[str, Any]:
    """Run every configuration and return the JSON document (without writing it)."""
    flwr_version = _flwr_version()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    shapes = MODELS[model]
    params = sum(math.prod(s) for s in shapes)
    load_start = _loadavg()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    init = _initial_arrays(shapes)
    for k in ks:
        deltas = [_client_delta(shapes, i) for i in range(k)]
        exact = [
            a.astype(np.float64) + (warmup + rounds) * np.mean([d[j] for d in deltas], axis=0)
            for j, a in enumerate(init)
        ]
        models: dict[str, Arrays] = {}
        for mode in MODES:
            _log(f"{MODE_LABEL[mode]}, K={k}: {warmup} warm-up + {rounds} rounds, {params:,} par.")
            summary, models[mode] = _run(k, mode, shapes, rounds, warmup, num_shares, threshold)
            _log(
                f"  round {summary['round_wall_s'] * 1e3:.1f} ms, "
                f"{summary['round_trips']} round trips, up "
                f"{summary['bytes_per_client']['up']:,.0f} B/client"
            )
            results.append(summary)

        def max_diff(a: Arrays, b: Arrays) -> float:
            return max(
                float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                for x, y in zip(a, b, strict=True)
            )

        check = {
            "k": k,
            "secaggplus_vs_plain_max_abs": max_diff(models["secaggplus"], models["plain"]),
            "secaggplus_vs_exact_max_abs": max_diff(models["secaggplus"], exact),
            "plain_vs_exact_max_abs": max_diff(models["plain"], exact),
            "tolerance": TOLERANCE,
        }
        if check["secaggplus_vs_exact_max_abs"] > TOLERANCE:
            raise RuntimeError(f"SecAgg+ model is off at K={k}: {check}")
        checks.append(check)
    load_end = _loadavg()
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "flwr": flwr_version,
        "runtime": (
            "in-process: Flower's DefaultWorkflow / SecAggPlusWorkflow and ClientApp "
            "(+ secaggplus_mod) driven through an in-process Grid; every message deflated "
            "to Flower's wire objects and inflated again; clients run one after the other"
        ),
        "model": {
            "name": model,
            "shapes": [list(s) for s in shapes],
            "params": params,
            "dtype": "float32 (SecAgg+ returns the aggregate as float64)",
        },
        "training": (
            "trivial: each client returns the parameters it got + a fixed random float32 "
            f"vector (normal, sd {DELTA_SCALE}), num_examples={NUM_EXAMPLES}"
        ),
        "k": list(ks),
        "rounds": rounds,
        "warmup": warmup,
        "secaggplus": {
            "num_shares": num_shares,
            "reconstruction_threshold": threshold,
            "max_weight": 1000.0,
            "clipping_range": 8.0,
            "quantization_range": 2**22,
            "modulus_range": 2**32,
            "source": (
                "num_shares/reconstruction_threshold have no default in SecAggPlusWorkflow; "
                "3/2 are Flower's flower-secure-aggregation example values. The rest are "
                "the workflow's defaults."
            ),
        },
        "machine": _machine()
        | {"flwr": flwr_version, "cryptography": importlib.metadata.version("cryptography")},
        "load_start": None if load_start is None else round(load_start, 2),
        "load_end": None if load_end is None else round(load_end, 2),
        "total_s": time.perf_counter() - t0,
        "results": results,
        "checks": checks,
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    ms = v * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def _bytes(v: float) -> str:
    return f"{v:,.0f} B"


def _find(doc: dict[str, Any], k: int, mode: str) -> dict[str, Any]:
    for r in doc["results"]:
        if r["k"] == k and r["mode"] == mode:
            return r
    raise KeyError((k, mode))


def _stage_cell(stage: str) -> Callable[[dict[str, Any]], str]:
    def cell(r: dict[str, Any]) -> str:
        walls = r["client_mean"]["stages_wall_s"]
        return _ms(walls[stage]) if stage in walls else "-"

    return cell


def _table(doc: dict[str, Any]) -> str:
    ks: list[int] = doc["k"]
    cols = [(k, mode) for k in ks for mode in MODES]
    rows: list[list[str]] = []

    def row(label: str, get: Callable[[dict[str, Any]], str] | None) -> None:
        if get is None:
            rows.append([label] + [""] * len(cols))
            return
        cells = []
        for k, mode in cols:
            try:
                cells.append(get(_find(doc, k, mode)))
            except KeyError:
                cells.append("-")
        rows.append([label, *cells])

    params = doc["model"]["params"]
    stage_names = ("setup", "share_keys", _COLLECT, "unmask")
    row("round trips per fit round", lambda r: str(r["round_trips"]))
    row("round wall, in-process, clients in turn", lambda r: _ms(r["round_wall_s"]))
    row("  parallel-client estimate", lambda r: _ms(r["parallel_estimate_s"]))
    row("server compute (wall)", lambda r: _ms(r["server"]["compute_wall_s"]))
    row("  server compute (CPU)", lambda r: _ms(r["server"]["compute_cpu_s"]))
    row("  of which aggregation/unmasking", lambda r: _ms(r["server"]["aggregation_wall_s"]))
    row("  of which (de)serialization", lambda r: _ms(r["server"]["serde_wall_s"]))
    row("per client, all its calls (wall)", lambda r: _ms(r["client_mean"]["wall_s"]))
    row("  (CPU)", lambda r: _ms(r["client_mean"]["cpu_s"]))
    row("  SecAgg+ mod / ClientApp dispatch (wall)", lambda r: _ms(r["client_mean"]["mod_wall_s"]))
    row("  SecAgg+ mod / ClientApp dispatch (CPU)", lambda r: _ms(r["client_mean"]["mod_cpu_s"]))
    row("  app: legacy handling + fit (wall)", lambda r: _ms(r["client_mean"]["app_wall_s"]))
    row("  client (de)serialization (wall)", lambda r: _ms(r["client_mean"]["serde_wall_s"]))
    row("per client, by stage (wall, incl. serde)", None)
    for stage in (*stage_names, PLAIN_STAGE):
        row(f"  {stage}", _stage_cell(stage))
    row("bytes per client per round", None)
    row("  down (server -> client)", lambda r: _bytes(r["bytes_per_client"]["down"]))
    row("  up (client -> server)", lambda r: _bytes(r["bytes_per_client"]["up"]))
    row("  up per parameter", lambda r: f"{r['bytes_per_client']['up'] / params:.3f}")
    row("  down per parameter", lambda r: f"{r['bytes_per_client']['down'] / params:.3f}")
    row(
        "global model dtype (round 1 -> last)",
        lambda r: f"{r['global_dtype_by_round'][0]}->{r['global_dtype_by_round'][-1]}",
    )

    header = ["measure (median over rounds)", *(f"K={k} {MODE_LABEL[m]}" for k, m in cols)]
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    m = doc["machine"]
    sa = doc["secaggplus"]
    lines = [
        f"Flower {doc['flwr']} one fit round: SecAgg+ (SecAggPlusWorkflow + secaggplus_mod) vs "
        f"plain FedAvg; {params:,} parameters ({doc['model']['name']}, float32), "
        f"K = {', '.join(str(k) for k in ks)}",
        f"SecAgg+: num_shares {sa['num_shares']}, reconstruction_threshold "
        f"{sa['reconstruction_threshold']} (Flower example values; no defaults), max_weight "
        f"{sa['max_weight']:g}, clipping ±{sa['clipping_range']:g}, quantization 2^22, "
        f"modulus 2^32",
        f"runtime: {doc['runtime']}",
        f"training: {doc['training']}",
        f"machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, numpy {m['numpy']}, "
        f"cryptography {m['cryptography']}; load average {doc['load_start']} at start, "
        f"{doc['load_end']} at end; median of {doc['rounds']} rounds after {doc['warmup']} "
        "warm-up",
        "",
        line(header),
        "  ".join("-" * w for w in widths),
        *(line(r) for r in rows),
        "",
    ]
    for c in doc["checks"]:
        lines.append(
            f"check K={c['k']}: max |SecAgg+ - exact average| = "
            f"{c['secaggplus_vs_exact_max_abs']:.2e}, |SecAgg+ - plain| = "
            f"{c['secaggplus_vs_plain_max_abs']:.2e}, |plain - exact| = "
            f"{c['plain_vs_exact_max_abs']:.2e} (tolerance {c['tolerance']:g})"
        )
    lines.append(
        "Bytes: deflated Flower wire objects per message (metadata included; no gRPC/HTTP "
        "framing). Parallel-client estimate = server compute + slowest client per round trip."
    )
    return "\n".join(lines)


def _plot(doc: dict[str, Any], path: Path) -> None:
    """Left: round wall per K. Middle: client time per round. Right: bytes per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks: list[int] = doc["k"]
    plain = [_find(doc, k, "plain") for k in ks]
    sec = [_find(doc, k, "secaggplus") for k in ks]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))

    xs = grouped_bars(
        axes[0],
        len(ks),
        [
            ("plain FedAvg", [r["round_wall_s"] * 1e3 for r in plain], "tab:orange"),
            ("SecAgg+", [r["round_wall_s"] * 1e3 for r in sec], "tab:blue"),
            (
                "plain, parallel-client estimate",
                [r["parallel_estimate_s"] * 1e3 for r in plain],
                "moccasin",
            ),
            (
                "SecAgg+, parallel-client estimate",
                [r["parallel_estimate_s"] * 1e3 for r in sec],
                "lightsteelblue",
            ),
        ],
        lambda v: f"{v:.0f}",
    )
    axes[0].set_xticks(xs, [f"K={k}" for k in ks])
    axes[0].set_ylabel("ms per fit round")
    axes[0].set_title("server: one fit round (clients in turn, in-process)")

    xs = grouped_bars(
        axes[1],
        len(ks),
        [
            ("plain client (all)", [r["client_mean"]["wall_s"] * 1e3 for r in plain], "tab:orange"),
            ("SecAgg+ client (all)", [r["client_mean"]["wall_s"] * 1e3 for r in sec], "tab:blue"),
            ("SecAgg+ mod only", [r["client_mean"]["mod_wall_s"] * 1e3 for r in sec], "tab:cyan"),
            (
                "SecAgg+ server aggregation",
                [r["server"]["aggregation_wall_s"] * 1e3 for r in sec],
                "tab:purple",
            ),
            (
                "plain server aggregation",
                [r["server"]["aggregation_wall_s"] * 1e3 for r in plain],
                "tab:red",
            ),
        ],
        lambda v: f"{v:.1f}",
    )
    axes[1].set_xticks(xs, [f"K={k}" for k in ks])
    axes[1].set_ylabel("ms per round (client: mean per client)")
    axes[1].set_title("client and server-aggregation time (wall)")

    kib = 1024.0
    xs = grouped_bars(
        axes[2],
        len(ks),
        [
            ("plain up", [r["bytes_per_client"]["up"] / kib for r in plain], "tab:orange"),
            ("SecAgg+ up", [r["bytes_per_client"]["up"] / kib for r in sec], "tab:blue"),
            ("plain down", [r["bytes_per_client"]["down"] / kib for r in plain], "moccasin"),
            ("SecAgg+ down", [r["bytes_per_client"]["down"] / kib for r in sec], "lightsteelblue"),
        ],
        lambda v: f"{v:.0f}",
    )
    axes[2].set_xticks(xs, [f"K={k}" for k in ks])
    axes[2].set_ylabel("KiB per client per round")
    axes[2].set_title("bytes per client (deflated Flower wire objects)")
    for ax in axes:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Flower {doc['flwr']}: SecAgg+ vs plain FedAvg, {doc['model']['params']:,} parameters, "
        f"median of {doc['rounds']} rounds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.flower_bench", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--k", type=int, nargs="+", default=[2, 5, 10], help="clients per round")
    p.add_argument("--rounds", type=int, default=10, help="recorded rounds (median)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first")
    p.add_argument("--model", choices=sorted(MODELS), default="mnist-mlp", help="model shapes")
    p.add_argument("--num-shares", type=int, default=NUM_SHARES, help="SecAgg+ num_shares")
    p.add_argument(
        "--threshold", type=int, default=RECONSTRUCTION_THRESHOLD, help="SecAgg+ threshold"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/flower"), help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or min(args.k) < 2:
        print("--rounds must be >= 1, --warmup >= 0 and every --k >= 2", file=sys.stderr)
        return 2
    try:
        doc = run_benchmark(
            args.k,
            args.rounds,
            warmup=args.warmup,
            model=args.model,
            num_shares=args.num_shares,
            threshold=args.threshold,
        )
    except FlowerMissingError as exc:
        print(exc, file=sys.stderr)
        return 2
    doc = {"command": command_line("bench.flower_bench", argv), **doc}
    publish(args.out, "flower_bench", doc, _table(doc), _plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
