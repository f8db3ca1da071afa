"""The Flower quickstart app three ways: plain Flower, Flower + Trapdoor, Flower + SecAgg+
(issue 15).

Run ``python -m bench.flower_app_bench [--nodes 3] [--rounds 3] [--bits 2048]
[--out bench/results/flower_app]`` (a few minutes on two cores). It needs the ``flower``
and ``torch`` extras and scikit-learn (``pip install -e '.[flower,torch,demo]'``): Flower
1.42 with Ray, PyTorch; without them it exits with status 2 and says what is missing.

What runs
---------
The example app of ``examples/flower-quickstart`` (``quickstart.task``: a 64-32-10 MLP,
2,410 float32 parameters, on scikit-learn's digits split IID into ``--nodes`` partitions,
one local epoch of SGD at learning rate 0.05, seeded by partition and round) runs three
times in one process, one after the other, each in Flower's simulation engine
(``flwr.simulation.run_simulation``, the Ray backend, ``client_resources`` one CPU and no
GPU per ClientApp, so two ClientApps at a time on two cores), ``--nodes`` SuperNodes,
``--warmup`` (default 1) unmeasured rounds and then ``--rounds`` measured rounds of train +
evaluate on every node:

1. **plain**: the example's ``train``/``evaluate`` functions in a ``ClientApp`` without
   the mod, and Flower's ``FedAvg`` (message API) on the server;
2. **Trapdoor**: the example's ``ClientApp`` (``mods=[trapdoor_mod]``) and
   ``TrapdoorFedAvg``, against a real KGC and parameter server (``LocalCluster``: separate
   processes, loopback HTTP, SQLite; ``kgc init --demo --bits`` ``--bits``, 2048 by
   default), every node's identity enrolled at the KGC (``trapdoor.flower.identities``)
   before the run;
3. **SecAgg+**: Flower's own secure aggregation, which is built on Flower's legacy API: the
   same ``Net``/``load_data``/``train``/``test`` in a ``NumPyClient`` behind
   ``ClientApp(client_fn=..., mods=[secaggplus_mod])``, and on the server a
   ``ServerApp`` whose main runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
   num_shares=3, reconstruction_threshold=2))`` on a ``LegacyContext`` with the legacy
   ``FedAvg`` (the shape of Flower's ``flower-secure-aggregation`` example; 3 and 2 are its
   values, the workflow has no defaults; the rest is the workflow's defaults).

Same initial model (``torch.manual_seed(0); Net()``), same data, same seeds per node and
round in all three, so their accuracies can be compared round by round (SecAgg+ quantizes
the updates in steps of 16 / 2^22, Trapdoor encodes them with 22 fractional bits: either
moves the average by a few 1e-6 at most).

What is measured
----------------
* **seconds per round**: on the server, the time between the starts of consecutive rounds
  (a round starts when the strategy's ``configure_train`` is called, or, for SecAgg+, when
  the legacy fit workflow starts); the last round ends when the strategy (workflow)
  returns. A round is its train trip, the server's aggregation (for Trapdoor: waiting for
  the PS to release the round), and its evaluate trip. Before round 1, Trapdoor asks every
  node who it is and creates the job at the PS: reported as *setup*, not in a round.
  Each round's time is split into the time inside ``Grid.send_and_receive`` (the nodes'
  work, Ray's polling) and the server's time between its round trips (plain: FedAvg's
  aggregation; SecAgg+: summing the masked vectors and unmasking; Trapdoor: closing the
  round at the PS if needed and polling it, every 0.2 s, until the KGC has released it).
* **bytes per round**, all counted in the benchmark's process:

  - *Flower messages*: every message the ``ServerApp`` sends and every reply it receives
    (a recording wrapper around the ``Grid``), each counted as the summed length of its
    deflated Flower object tree (``get_all_nested_objects(msg)`` and ``obj.deflate()``:
    message, records, arrays and array chunks, metadata included), as
    ``bench.flower_bench`` counts them: what a SuperLink would store and ship. gRPC and
    HTTP framing are not counted. In a simulation no message crosses a network;
  - *Trapdoor HTTP*: the Trapdoor nodes reach the PS and the KGC, the Flower server the
    PS, and the PS the KGC, each through its own byte-counting TCP relay on loopback
    (started by this benchmark; the nodes get the relays' URLs in their identities and the
    round config, the PS at its start). Each relay counts the TCP payload in each
    direction: HTTP request and status lines, headers (bearer tokens included) and bodies;
    not TCP/IP headers. Bytes are assigned to a round by when the relay forwarded them.
    That covers every byte of the Trapdoor protocol: nodes <-> PS (job view, uploads,
    release bundles and the listed uploads they check), nodes <-> KGC (tokens), Flower
    server <-> PS (creating the job, polling the round's status, every 0.2 s, the
    strategy's default), PS <-> KGC (the release).

  Per round the table gives the mean over the measured rounds.
* the **warm-up**: the first round of each run starts Ray's workers (their imports:
  PyTorch, Flower, for Trapdoor the crypto) and, for Trapdoor, opens the identities and
  fetches and checks the job; it is timed and shown but kept out of the medians and means.
  For Trapdoor the hello before round 1 already starts the workers, so its setup is long
  and its warm-up round short. (From round 2 on SecAgg+'s global model is float64, as
  ``SecAggPlusWorkflow`` hands the strategy a float64 aggregate; the warm-up absorbs the
  one float32 round.)
* the **Flower round trips** per round, and the **HTTP requests** the PS and KGC served
  per round (their access-log lines, by timestamp);
* the **accuracy** each round (the nodes' evaluate metrics, weighted by examples), and the
  largest difference from the plain run.

Caveats, all of which the figures carry: Ray's simulation engine polls (the server's
``InMemoryGrid`` every 0.1 s for replies, the engine's node loop for messages), so a round
trip costs at least ~0.1-0.2 s whatever the app does; the KGC, the PS, the relays, Ray's
workers and the server all share the same cores (two here); Ray runs two ClientApps at a
time, on whichever worker is free, so a Trapdoor worker may open a node's identity and
fetch its job view again in a later round (that shows in the bytes of the round); the
relays are Python threads in the benchmark's process, next to the Flower server.

Writes ``<out>/flower_app_bench.json``, ``.txt`` (the table) and ``.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.crypto_bench import _loadavg, _log, _machine, command_line, publish

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.serverapp import Grid

__all__ = ["CountingRelay", "main", "run_benchmark"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower-quickstart"
MODES = ("plain", "trapdoor", "secaggplus")
LABEL = {"plain": "plain Flower", "trapdoor": "Flower + Trapdoor", "secaggplus": "Flower + SecAgg+"}
NEEDED = ("flwr", "ray", "torch", "sklearn", "matplotlib")
NUM_SHARES = 3  # Flower's flower-secure-aggregation example (the workflow has no default)
RECONSTRUCTION_THRESHOLD = 2  # idem
LR = 0.05  # the example's train config
PASSPHRASE = "flower app benchmark"
RESOURCES: Any = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
#: The Trapdoor HTTP links, each through its own relay.
LINKS = ("nodes_ps", "nodes_kgc", "server_ps", "ps_kgc")
LINK_LABEL = {
    "nodes_ps": "nodes <-> PS",
    "nodes_kgc": "nodes <-> KGC",
    "server_ps": "Flower server <-> PS",
    "ps_kgc": "PS <-> KGC",
}
# A werkzeug access line as trapdoor.service.logs writes it.
_ACCESS = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO werkzeug: .*\"(GET|POST|PUT|DELETE) "
)


class DependencyMissingError(RuntimeError):
    """Flower, Ray, PyTorch, scikit-learn or matplotlib is not installed."""


def _check_dependencies() -> None:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise DependencyMissingError(
            f"bench.flower_app_bench needs {', '.join(missing)} (not installed): "
            ".venv/bin/pip install -e '.[flower,torch,demo]'"
        )


# ---------------------------------------------------------------------------
# Counting bytes: a TCP relay in front of a service
# ---------------------------------------------------------------------------


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of ``target`` (``http://host:port``) that counts
    the bytes it forwards each way, with the ``time.perf_counter()`` of each chunk.

    One thread per direction per connection; ``TCP_NODELAY`` on both sides, so the relay
    adds no Nagle delay. ``url`` is where to reach ``target`` through it.
    """

    def __init__(self, target: str) -> None:
        parsed = urllib.parse.urlsplit(target)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"not a http://host:port URL: {target!r}")
        self._target = (parsed.hostname, parsed.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        #: ``(time, bytes to the target, bytes from the target)`` per forwarded chunk.
        self.chunks: list[tuple[float, int, int]] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            done = threading.Semaphore(0)
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up, done), name="relay-pump", daemon=True
                ).start()
            threading.Thread(
                target=self._close_after, args=(client, upstream, done), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, done: Any) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                n = len(data)
                with self._lock:
                    self.chunks.append((time.perf_counter(), n if up else 0, 0 if up else n))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            done.release()

    @staticmethod
    def _close_after(a: socket.socket, b: socket.socket, done: Any) -> None:
        done.acquire()
        done.acquire()
        a.close()
        b.close()

    def between(self, start: float, end: float) -> tuple[int, int]:
        """Bytes to and from the target forwarded in ``[start, end)``."""
        with self._lock:
            chunks = list(self.chunks)
        up = sum(u for t, u, _ in chunks if start <= t < end)
        down = sum(d for t, _, d in chunks if start <= t < end)
        return up, down

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()


# ---------------------------------------------------------------------------
# The server's view: rounds and messages
# ---------------------------------------------------------------------------


@dataclass
class _Trip:
    """One ``send_and_receive``: the round it belongs to (0: before round 1), what went
    out, what came back."""

    round: int
    sent: list[Message]
    received: list[Message]
    seconds: float


@dataclass
class _Meter:
    """Round starts (``perf_counter`` and wall clock), the end, and every round trip."""

    starts: list[float] = field(default_factory=list)
    wall_starts: list[float] = field(default_factory=list)
    begin: float = 0.0
    wall_begin: float = 0.0
    end: float = 0.0
    wall_end: float = 0.0
    trips: list[_Trip] = field(default_factory=list)

    def open(self) -> None:
        self.begin, self.wall_begin = time.perf_counter(), time.time()

    def start_round(self) -> None:
        self.starts.append(time.perf_counter())
        self.wall_starts.append(time.time())

    def close(self) -> None:
        self.end, self.wall_end = time.perf_counter(), time.time()

    @property
    def round(self) -> int:
        return len(self.starts)

    def windows(self) -> list[tuple[float, float]]:
        """``[start, end)`` of each round (perf_counter)."""
        return list(zip(self.starts, [*self.starts[1:], self.end], strict=True))

    def wall_windows(self) -> list[tuple[float, float]]:
        return list(zip(self.wall_starts, [*self.wall_starts[1:], self.wall_end], strict=True))


class _RecordingGrid:
    """The ServerApp's grid, recording each round trip under the current round."""

    def __init__(self, grid: Grid, meter: _Meter) -> None:
        self.grid = grid
        self.meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        sent = list(messages)
        start = time.perf_counter()
        received = list(self.grid.send_and_receive(sent, timeout=timeout))
        seconds = time.perf_counter() - start
        self.meter.trips.append(_Trip(self.meter.round, sent, received, seconds))
        return received


def _wire_bytes(msg: Message) -> int:
    """The summed length of ``msg``'s deflated Flower objects."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


# ---------------------------------------------------------------------------
# The three apps
# ---------------------------------------------------------------------------


def _initial_state() -> dict[str, Any]:
    import torch
    from quickstart.task import Net

    torch.manual_seed(0)
    return dict(Net().state_dict())


def _plain_client() -> Any:
    """The example's ClientApp functions without the mod: plain Flower."""
    from flwr.clientapp import ClientApp
    from quickstart import client_app as example

    plain = ClientApp()
    plain.train()(example.train)
    plain.evaluate()(example.evaluate)
    return plain


def _timed_strategy(base: type, meter: _Meter, **overrides: Any) -> Any:
    """``base`` (a message-API strategy class) whose ``configure_train`` marks a round."""

    class Timed(base):
        def configure_train(self, server_round: int, *args: Any) -> Any:
            meter.start_round()
            return super().configure_train(server_round, *args)

    for name, method in overrides.items():
        setattr(Timed, name, method)
    return Timed


def _message_api_server(
    strategy_factory: Callable[[], Any], rounds: int, out: dict[str, Any]
) -> Any:
    """A ServerApp running ``strategy.start`` on a recording grid; the per-round evaluate
    accuracies land in ``out["accuracy"]``."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp

    server = ServerApp()
    meter: _Meter = out["meter"]

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = strategy_factory()
        initial = ArrayRecord(_initial_state())
        meter.open()
        result = strategy.start(
            grid=cast("Grid", _RecordingGrid(grid, meter)),
            initial_arrays=initial,
            train_config=ConfigRecord({"lr": LR}),
            num_rounds=rounds,
        )
        meter.close()
        out["accuracy"] = {
            int(r): float(m["eval_acc"]) for r, m in result.evaluate_metrics_clientapp.items()
        }

    return server


def _weighted(metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The legacy FedAvg's metric aggregation: each metric weighted by examples."""
    total = sum(n for n, _ in metrics)
    keys = {k for _, m in metrics for k in m}
    return {k: sum(n * float(m[k]) for n, m in metrics if k in m) / total for k in keys}


def _secagg_client_fn(context: Context) -> Any:
    """The example's model, data and training as a legacy ``NumPyClient``."""
    from collections import OrderedDict

    import numpy as np
    import torch
    from flwr.client import NumPyClient
    from quickstart.task import Net, load_data
    from quickstart.task import test as test_fn
    from quickstart.task import train as train_fn

    torch.set_num_threads(1)  # as the example's client_app does
    partition = int(context.node_config["partition-id"])
    partitions = int(context.node_config["num-partitions"])

    def net_with(parameters: list[np.ndarray]) -> Net:
        net = Net()
        keys = list(net.state_dict())
        state = OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters, strict=True))
        net.load_state_dict(state, strict=True)
        return net

    class Client(NumPyClient):
        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            model = net_with(parameters)
            trainloader, _ = load_data(partition, partitions)
            server_round = int(config["server-round"])
            loss = train_fn(
                model,
                trainloader,
                epochs=1,
                lr=float(config["lr"]),
                seed=1000 * server_round + partition,
            )
            arrays = [v.cpu().numpy() for v in model.state_dict().values()]
            return arrays, len(trainloader.dataset), {"train_loss": loss}

        def evaluate(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[float, int, dict[str, Any]]:
            model = net_with(parameters)
            _, testloader = load_data(partition, partitions)
            loss, accuracy = test_fn(model, testloader)
            return loss, len(testloader.dataset), {"eval_acc": accuracy}

    return Client().to_client()


def _secagg_client() -> Any:
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    return ClientApp(client_fn=_secagg_client_fn, mods=[secaggplus_mod])


def _secagg_server(nodes: int, rounds: int, out: dict[str, Any]) -> Any:
    """Flower's secure-aggregation ServerApp: legacy FedAvg, DefaultWorkflow, SecAgg+."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import ServerApp

    server = ServerApp()
    meter: _Meter = out["meter"]

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        initial = [v.numpy() for v in _initial_state().values()]
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=nodes,
            min_evaluate_clients=nodes,
            min_available_clients=nodes,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda r: {"lr": LR, "server-round": r},
            fit_metrics_aggregation_fn=_weighted,
            evaluate_metrics_aggregation_fn=_weighted,
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        secagg = SecAggPlusWorkflow(
            num_shares=NUM_SHARES, reconstruction_threshold=RECONSTRUCTION_THRESHOLD
        )

        def fit(grid: Grid, ctx: Context) -> None:
            meter.start_round()
            secagg(grid, ctx)

        meter.open()
        DefaultWorkflow(fit_workflow=fit)(cast("Grid", _RecordingGrid(grid, meter)), legacy)
        meter.close()
        out["accuracy"] = {
            int(r): float(v) for r, v in legacy.history.metrics_distributed["eval_acc"]
        }

    return server


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------


@dataclass
class _Trapdoor:
    """The services of the Trapdoor run and the relays in front of them."""

    cluster: Any
    relays: dict[str, CountingRelay]


def _start_trapdoor(work: Path, bits: int, nodes: int) -> _Trapdoor:
    """KGC and PS processes, a relay per link, ``nodes`` identities (through the nodes'
    KGC relay: their identities keep that URL)."""
    from trapdoor.demo.cluster import LocalCluster
    from trapdoor.flower.identities import provision

    cluster = LocalCluster(work / "cluster")
    relays: dict[str, CountingRelay] = {}
    try:
        kgc = cluster.start_kgc(bits)
        relays["nodes_kgc"] = CountingRelay(kgc.url)
        relays["ps_kgc"] = CountingRelay(kgc.url)
        kgc.url = relays["ps_kgc"].url  # the PS is started with this KGC URL
        ps = cluster.start_param_server()
        relays["nodes_ps"] = CountingRelay(ps.url)
        relays["server_ps"] = CountingRelay(ps.url)
        provision(
            relays["nodes_kgc"].url,
            cluster.kgc_admin_token,
            nodes,
            work / "identities",
            PASSPHRASE,
        )
    except BaseException:
        for relay in relays.values():
            relay.close()
        cluster.stop()
        raise
    return _Trapdoor(cluster, relays)


def _access_times(log: Path) -> list[float]:
    """The wall-clock times of the requests a service logged."""
    import calendar

    times = []
    for line in log.read_text(errors="replace").splitlines():
        match = _ACCESS.match(line)
        if match:
            stamp, millis = match.group(1).split(".")
            seconds = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
            times.append(seconds + int(millis) / 1000)
    return times


def _run_mode(
    mode: str, nodes: int, rounds: int, warmup: int, trapdoor: _Trapdoor | None
) -> dict[str, Any]:
    """One simulation of ``warmup + rounds`` rounds; its summary."""
    total_rounds = warmup + rounds
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    out: dict[str, Any] = {"meter": _Meter()}
    meter: _Meter = out["meter"]
    if mode == "plain":
        strategy = _timed_strategy(FedAvg, meter)
        server = _message_api_server(lambda: strategy(min_available_nodes=nodes), total_rounds, out)
        client = _plain_client()
    elif mode == "trapdoor":
        assert trapdoor is not None
        from quickstart.client_app import app as trapdoor_client

        from trapdoor.flower import TrapdoorFedAvg
        from trapdoor.flower.messages import PS_URL

        nodes_ps = trapdoor.relays["nodes_ps"].url

        def coordinates(self: Any, config: Any, server_round: int) -> Any:
            # The nodes reach the PS through their own relay.
            record = TrapdoorFedAvg._coordinates(self, config, server_round)
            record[PS_URL] = nodes_ps
            return record

        strategy = _timed_strategy(TrapdoorFedAvg, meter, _coordinates=coordinates)
        cluster = trapdoor.cluster
        server = _message_api_server(
            lambda: strategy(
                ps_url=trapdoor.relays["server_ps"].url,
                ps_admin_token=cluster.ps_admin_token,
                job_id=f"flower-app-bench-{int(time.time())}",
                min_available_nodes=nodes,
            ),
            total_rounds,
            out,
        )
        client = trapdoor_client
    else:
        server = _secagg_server(nodes, total_rounds, out)
        client = _secagg_client()

    t0 = time.perf_counter()
    run_simulation(
        server_app=server, client_app=client, num_supernodes=nodes, backend_config=RESOURCES
    )
    total = time.perf_counter() - t0
    if "accuracy" not in out or meter.round != total_rounds:
        raise RuntimeError(f"{mode}: the ServerApp did not finish its {total_rounds} rounds")
    return _summarize(mode, meter, out["accuracy"], total, trapdoor, warmup)


def _summarize(
    mode: str,
    meter: _Meter,
    accuracy: dict[int, float],
    total: float,
    trapdoor: _Trapdoor | None,
    warmup: int,
) -> dict[str, Any]:
    errors = [m.error.reason for t in meter.trips for m in t.received if m.has_error()]
    if errors:
        raise RuntimeError(f"{mode}: nodes answered with errors: {errors[:3]}")
    windows = meter.windows()
    setup_window = (meter.begin, meter.starts[0])

    def flower_bytes(r: int) -> dict[str, int]:
        trips = [t for t in meter.trips if t.round == r]
        return {
            "flower_down": sum(_wire_bytes(m) for t in trips for m in t.sent),
            "flower_up": sum(_wire_bytes(m) for t in trips for m in t.received),
            "flower_messages": sum(len(t.sent) + len(t.received) for t in trips),
            "flower_round_trips": len(trips),
        }

    def http_bytes(window: tuple[float, float]) -> dict[str, int]:
        out: dict[str, int] = {}
        for link in LINKS:
            up = down = 0
            if trapdoor is not None:
                up, down = trapdoor.relays[link].between(*window)
            out[f"{link}_up"], out[f"{link}_down"] = up, down
        return out

    def record(r: int, window: tuple[float, float]) -> dict[str, Any]:
        rec: dict[str, Any] = {**flower_bytes(r), **http_bytes(window)}
        rec["flower_bytes"] = rec["flower_down"] + rec["flower_up"]
        rec["trapdoor_http_bytes"] = sum(rec[f"{k}_{d}"] for k in LINKS for d in ("up", "down"))
        rec["total_bytes"] = rec["flower_bytes"] + rec["trapdoor_http_bytes"]
        return rec

    per_round = []
    for r, window in enumerate(windows, start=1):
        rec: dict[str, Any] = {"round": r, "warmup": r <= warmup, "wall_s": window[1] - window[0]}
        rec["trips_s"] = sum(t.seconds for t in meter.trips if t.round == r)
        rec["between_trips_s"] = rec["wall_s"] - rec["trips_s"]
        rec |= record(r, window)
        rec["accuracy"] = accuracy.get(r)
        per_round.append(rec)
    setup = {"wall_s": setup_window[1] - setup_window[0], **record(0, setup_window)}

    requests: dict[str, list[int]] = {}
    if trapdoor is not None:
        logs = trapdoor.cluster.logs
        for name, key in (("param_server", "ps"), ("kgc", "kgc")):
            times = _access_times(logs[name])
            requests[key] = [sum(1 for t in times if a <= t < b) for a, b in meter.wall_windows()]
    measured = per_round[warmup:]
    numeric = [
        k
        for k, v in per_round[0].items()
        if k not in ("round", "warmup", "accuracy") and isinstance(v, int | float)
    ]
    walls = [r["wall_s"] for r in measured]
    return {
        "mode": mode,
        "label": LABEL[mode],
        "round_wall_median_s": statistics.median(walls),
        "round_wall_mean_s": statistics.fmean(walls),
        "round_wall_s": walls,
        "setup": setup,
        "warmup_wall_s": [r["wall_s"] for r in per_round[:warmup]],
        "rounds_s": meter.end - meter.starts[0],
        "simulation_s": total,
        "mean_per_round": {k: statistics.fmean(float(r[k]) for r in measured) for k in numeric},
        "per_round": per_round,
        "http_requests_per_round": requests,
        "accuracy": {str(r): a for r, a in sorted(accuracy.items())},
        "final_accuracy": accuracy[max(accuracy)],
    }


@dataclass
class _Environment:
    """What the simulations need from the process environment, restored afterwards."""

    saved: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    path: list[str] = field(default_factory=lambda: list(sys.path))

    def restore(self) -> None:
        os.environ.clear()
        os.environ.update(self.saved)
        sys.path[:] = self.path


class _Quiet(logging.Filter):
    """Drops Flower's INFO lines (its logger's level is reset by ``run_simulation``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def run_benchmark(nodes: int, rounds: int, bits: int, warmup: int = 1) -> dict[str, Any]:
    """Run the three configurations and return the JSON document (without writing it)."""
    _check_dependencies()
    env = _Environment()
    # The Ray workers import quickstart (the example) and this module from these paths.
    sys.path.insert(0, str(EXAMPLE))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), str(ROOT), *env.path])
    quiet = _Quiet()
    logging.getLogger("flwr").addFilter(quiet)
    load_start = _loadavg()
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="flower-app-bench-"))
    trapdoor: _Trapdoor | None = None
    try:
        for mode in MODES:
            _log(f"{LABEL[mode]}: {nodes} nodes, {warmup} warm-up + {rounds} rounds")
            if mode == "trapdoor":
                trapdoor = _start_trapdoor(work, bits, nodes)
                os.environ.update(
                    {
                        "TRAPDOOR_FLOWER_PASSPHRASE": PASSPHRASE,
                        "TRAPDOOR_FLOWER_IDENTITY_DIR": str(work / "identities"),
                        "TRAPDOOR_PS_ADMIN_TOKEN": trapdoor.cluster.ps_admin_token,
                    }
                )
            try:
                summary = _run_mode(mode, nodes, rounds, warmup, trapdoor)
            finally:
                if trapdoor is not None:
                    for relay in trapdoor.relays.values():
                        relay.close()
                    trapdoor.cluster.stop()
                    trapdoor = None
            _log(
                f"  {summary['round_wall_median_s']:.2f} s per round (median), "
                f"{summary['mean_per_round']['total_bytes']:,.0f} B per round, "
                f"accuracy {summary['final_accuracy']:.4f}"
            )
            results.append(summary)
    finally:
        env.restore()
        logging.getLogger("flwr").removeFilter(quiet)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    plain = {int(r): a for r, a in results[0]["accuracy"].items()}
    for summary in results:
        summary["max_abs_accuracy_diff_vs_plain"] = max(
            abs(a - plain[int(r)]) for r, a in summary["accuracy"].items()
        )
    load_end = _loadavg()
    flwr_version = importlib.metadata.version("flwr")
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "flwr": flwr_version,
        "nodes": nodes,
        "rounds": rounds,
        "warmup": warmup,
        "bits": bits,
        "app": (
            "examples/flower-quickstart: 64-32-10 MLP (2,410 float32 parameters) on "
            f"scikit-learn digits, IID over {nodes} nodes, 1 local epoch SGD lr {LR}, "
            "seeded by partition and round; every node trains and evaluates every round"
        ),
        "runtime": (
            "flwr.simulation.run_simulation, Ray backend, client_resources num_cpus 1 "
            "num_gpus 0; the three runs one after the other in one process"
        ),
        "secaggplus": {
            "num_shares": NUM_SHARES,
            "reconstruction_threshold": RECONSTRUCTION_THRESHOLD,
            "rest": "SecAggPlusWorkflow defaults (max_weight 1000, clipping 8, "
            "quantization 2^22, modulus 2^32)",
        },
        "counted": {
            "round_wall": "server: time between consecutive round starts (configure_train, "
            "or the legacy fit workflow's start); the last round ends when the strategy "
            "(workflow) returns",
            "flower_bytes": "every message the ServerApp sends and receives, as the summed "
            "length of its deflated Flower objects (no gRPC/HTTP framing)",
            "trapdoor_http_bytes": "TCP payload (HTTP request/status lines, headers, "
            "bodies) through byte-counting relays on nodes<->PS, nodes<->KGC, Flower "
            "server<->PS and PS<->KGC, assigned to rounds by time",
        },
        "machine": _machine()
        | {
            "flwr": flwr_version,
            "ray": importlib.metadata.version("ray"),
            "torch": importlib.metadata.version("torch"),
        },
        "load_start": None if load_start is None else round(load_start, 2),
        "load_end": None if load_end is None else round(load_end, 2),
        "total_s": time.perf_counter() - t0,
        "results": results,
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _s(v: float) -> str:
    return f"{v:.2f} s"


def _b(v: float) -> str:
    return f"{v:,.0f} B"


def _table(doc: dict[str, Any]) -> str:
    results: list[dict[str, Any]] = doc["results"]
    rows: list[list[str]] = []

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> None:
        rows.append([label, *(get(r) for r in results)])

    def mean(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: _b(r["mean_per_round"][key])

    def link(name: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            if r["mode"] != "trapdoor":
                return "-"
            m = r["mean_per_round"]
            return f"{_b(m[f'{name}_up'])} up, {_b(m[f'{name}_down'])} down"

        return cell

    def requests(service: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            counts = r["http_requests_per_round"].get(service, [])[doc["warmup"] :]
            return " / ".join(str(c) for c in counts) if counts else "-"

        return cell

    row("seconds per round (median)", lambda r: _s(r["round_wall_median_s"]))
    row("seconds per round (mean)", lambda r: _s(r["round_wall_mean_s"]))
    row("  each round", lambda r: " / ".join(f"{w:.2f}" for w in r["round_wall_s"]))
    row("  in Flower round trips (mean)", lambda r: _s(r["mean_per_round"]["trips_s"]))
    row(
        "  server between trips (mean)",
        lambda r: _s(r["mean_per_round"]["between_trips_s"]),
    )
    row(
        "warm-up round(s), not measured",
        lambda r: " / ".join(f"{w:.2f}" for w in r["warmup_wall_s"]) or "-",
    )
    row("setup before round 1", lambda r: _s(r["setup"]["wall_s"]))
    row("bytes per round (mean), total", mean("total_bytes"))
    row("  Flower messages, server -> nodes", mean("flower_down"))
    row("  Flower messages, nodes -> server", mean("flower_up"))
    row("  Trapdoor HTTP, all links", mean("trapdoor_http_bytes"))
    for name in LINKS:
        row(f"    {LINK_LABEL[name]}", link(name))
    row(
        "  each measured round, total",
        lambda r: " / ".join(f"{p['total_bytes']:,}" for p in r["per_round"] if not p["warmup"]),
    )
    row("setup bytes (Flower + HTTP)", lambda r: _b(r["setup"]["total_bytes"]))
    row("Flower round trips per round", lambda r: f"{r['mean_per_round']['flower_round_trips']:g}")
    row("HTTP requests at the PS, per round", requests("ps"))
    row("HTTP requests at the KGC, per round", requests("kgc"))
    row(
        "accuracy, each round (warm-up too)",
        lambda r: " / ".join(f"{a:.4f}" for a in r["accuracy"].values()),
    )
    row("max |accuracy - plain|", lambda r: f"{r['max_abs_accuracy_diff_vs_plain'] * 100:.2f} pp")

    header = ["per round", *(r["label"] for r in results)]
    widths = [max(len(x[i]) for x in [*rows, header]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    m = doc["machine"]
    return "\n".join(
        [
            f"Flower {doc['flwr']} quickstart app, {doc['nodes']} nodes, {doc['rounds']} "
            f"rounds: plain vs Trapdoor ({doc['bits']}-bit demo parameters) vs SecAgg+ "
            f"(num_shares {NUM_SHARES}, threshold {RECONSTRUCTION_THRESHOLD})",
            f"app: {doc['app']}",
            f"runtime: {doc['runtime']}",
            f"machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, Ray "
            f"{m['ray']}, torch {m['torch']}; load average {doc['load_start']} at start, "
            f"{doc['load_end']} at end",
            "",
            line(header),
            "  ".join("-" * w for w in widths),
            *(line(r) for r in rows),
            "",
            f"round wall: {doc['counted']['round_wall']}.",
            f"Flower bytes: {doc['counted']['flower_bytes']}.",
            f"Trapdoor HTTP bytes: {doc['counted']['trapdoor_http_bytes']}.",
        ]
    )


def _plot(doc: dict[str, Any], path: Path) -> None:
    """Left: seconds per round. Right: bytes per round, Flower messages and Trapdoor HTTP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: list[dict[str, Any]] = doc["results"]
    labels = [r["label"].replace("Flower + ", "+ ") for r in results]
    xs = list(range(len(results)))
    colors = ["tab:orange", "tab:green", "tab:blue"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))

    medians = [r["round_wall_median_s"] for r in results]
    left.bar(xs, medians, color=colors, width=0.6)
    for x, r in zip(xs, results, strict=True):
        rounds = r["round_wall_s"]
        left.scatter([x] * len(rounds), rounds, color="black", s=12, zorder=3)
        left.annotate(
            f"{r['round_wall_median_s']:.2f} s",
            (x, max(rounds)),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    left.set_xticks(xs, labels)
    left.set_ylabel("seconds per round (bar: median; dots: each round)")
    left.set_title("server: time per round (train + aggregate + evaluate)")

    kib = 1024.0
    flower = [r["mean_per_round"]["flower_bytes"] / kib for r in results]
    http = [r["mean_per_round"]["trapdoor_http_bytes"] / kib for r in results]
    right.bar(xs, flower, color="tab:gray", width=0.6, label="Flower messages (deflated)")
    right.bar(
        xs,
        http,
        bottom=flower,
        color="tab:green",
        width=0.6,
        alpha=0.6,
        label="Trapdoor HTTP (nodes/server/PS/KGC)",
    )
    for x, f, h in zip(xs, flower, http, strict=True):
        right.annotate(f"{f + h:,.0f} KiB", (x, f + h), ha="center", va="bottom", fontsize=8)
    right.set_xticks(xs, labels)
    right.set_ylabel("KiB per round (mean over rounds)")
    right.set_title("bytes per round, all parties")
    right.legend(fontsize=8, loc="upper left")
    for ax in (left, right):
        ax.set_ylim(top=ax.get_ylim()[1] * 1.2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Flower {doc['flwr']} quickstart app, {doc['nodes']} nodes, {doc['rounds']} rounds, "
        f"Ray simulation; Trapdoor at {doc['bits']} bits",
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
        prog="python -m bench.flower_app_bench", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--nodes", type=int, default=3, help="Flower SuperNodes (K), at least 3")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds of each run")
    p.add_argument(
        "--warmup", type=int, default=1, help="unmeasured rounds first (Ray's workers start)"
    )
    p.add_argument("--bits", type=int, default=2048, help="Trapdoor demo parameters' size")
    p.add_argument(
        "--out", type=Path, default=Path("bench/results/flower_app"), help="output folder"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.nodes < 3:
        print(
            "--rounds must be >= 1, --warmup >= 0 and --nodes >= 3 (SecAgg+ shares among 3, and a "
            "Trapdoor node accepts a quorum of 3 by default)",
            file=sys.stderr,
        )
        return 2
    try:
        doc = run_benchmark(args.nodes, args.rounds, args.bits, args.warmup)
    except DependencyMissingError as exc:
        print(exc, file=sys.stderr)
        return 2
    doc = {"command": command_line("bench.flower_app_bench", argv), **doc}
    publish(args.out, "flower_app_bench", doc, _table(doc), _plot)
    return 0


if __name__ == "__main__":
    # Run under its importable name, so the Ray workers unpickle the SecAgg+ client
    # function by reference (bench.flower_app_bench._secagg_client_fn).
    from bench.flower_app_bench import main as _main

    raise SystemExit(_main())
