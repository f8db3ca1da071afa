"""Trapdoor inside Flower: the quickstart example in Flower's simulation engine.

The KGC and the parameter server run as real processes; Flower's ``run_simulation``
(Ray) runs the example's ``ServerApp`` and three ``ClientApp`` nodes. Checked:

- the encrypted run's accuracy equals the same Flower app's in plaintext ``FedAvg``
  (same seeds) within 0.1 percentage points, every round;
- the Flower server receives no parameters: every message that reaches it is recorded,
  and none carries an array;
- a node that was not sampled in a round cannot open that round's model: the PS refuses
  it the bundle (403 ``not-a-contributor``), and its mod refuses to train the next round;
- the same example deployed: a SuperLink and three SuperNodes as real processes, the app
  started with ``flwr run``, gives the same accuracies.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

flwr = pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from trapdoor.demo.cluster import LocalCluster  # noqa: E402
from trapdoor.flower import TrapdoorFedAvg  # noqa: E402
from trapdoor.flower.identities import participant_for, provision  # noqa: E402
from trapdoor.service.http import ServiceError  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower-quickstart"
ROUNDS = 3
NODES = 3
PASSPHRASE = "flower test passphrase"
RESOURCES = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    """A KGC and a PS (real processes), three enrolled Flower nodes' identities."""
    work = tmp_path_factory.mktemp("flower")
    cluster = LocalCluster(work / "cluster")
    saved = dict(os.environ)
    sys.path.insert(0, str(EXAMPLE))
    try:
        cluster.start_kgc(1024)
        cluster.start_param_server()
        identities = work / "identities"
        provision(cluster.kgc_url, cluster.kgc_admin_token, NODES, identities, PASSPHRASE)
        os.environ.update(
            {
                "TRAPDOOR_FLOWER_PASSPHRASE": PASSPHRASE,
                "TRAPDOOR_FLOWER_IDENTITY_DIR": str(identities),
                "TRAPDOOR_FLOWER_PS_URL": cluster.ps_url,
                "TRAPDOOR_PS_ADMIN_TOKEN": cluster.ps_admin_token,
                "PYTHONPATH": os.pathsep.join([str(EXAMPLE), *sys.path]),
            }
        )
        yield cluster, work
    finally:
        os.environ.clear()
        os.environ.update(saved)
        sys.path.remove(str(EXAMPLE))
        cluster.stop()


class RecordingGrid:
    """The server's grid, recording every message the server receives."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.received: list[Message] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies

    def pull_messages(self, message_ids: Any) -> Any:
        replies = list(self.grid.pull_messages(message_ids))
        self.received.extend(replies)
        return replies


def _initial() -> ArrayRecord:
    import torch
    from quickstart.task import Net

    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def _run(strategy_for: Any, client_app: ClientApp, out: Path) -> dict[str, Any]:
    """One Flower simulation of ROUNDS rounds; the evaluate metrics by round and what the
    server received."""
    server = ServerApp()
    seen: dict[str, Any] = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        recording = RecordingGrid(grid)
        result = strategy_for().start(
            grid=recording,
            initial_arrays=_initial(),
            train_config=ConfigRecord({"lr": 0.05}),
            num_rounds=ROUNDS,
        )
        seen["evaluate"] = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
        seen["received"] = recording.received

    run_simulation(
        server_app=server, client_app=client_app, num_supernodes=NODES, backend_config=RESOURCES
    )
    out.write_text(json.dumps(seen["evaluate"]))
    return seen


def _plain_client() -> ClientApp:
    """The same ClientApp without the mod: plain Flower."""
    from quickstart import client_app as example

    plain = ClientApp()
    plain.train()(example.train)
    plain.evaluate()(example.evaluate)
    return plain


@pytest.fixture(scope="module")
def plain(services: tuple[LocalCluster, Path]) -> dict[str, Any]:
    """The same app in plain Flower FedAvg: the reference every Trapdoor run must meet."""
    return _run(
        lambda: FedAvg(min_available_nodes=NODES), _plain_client(), services[1] / "plain.json"
    )


@pytest.mark.parametrize(("aggregation", "trips"), [("masked", 2), ("bcp", 4)])
def test_encrypted_flower_matches_plaintext_and_the_server_sees_no_parameters(
    services: tuple[LocalCluster, Path], plain: dict[str, Any], aggregation: str, trips: int
) -> None:
    """``trips``: messages per node and round (masked: train, evaluate; bcp: train and
    commit, upload, audit, evaluate)."""
    cluster, work = services
    from quickstart.client_app import app as trapdoor_client

    job_id = f"flower-e2e-{aggregation}"
    encrypted = _run(
        lambda: TrapdoorFedAvg(
            ps_url=cluster.ps_url,
            ps_admin_token=cluster.ps_admin_token,
            job_id=job_id,
            aggregation=aggregation,
            min_available_nodes=NODES,
        ),
        trapdoor_client,
        work / f"encrypted-{aggregation}.json",
    )

    for seen in (encrypted, plain):  # every node answered every message
        assert not [m.error.reason for m in seen["received"] if m.has_error()]
    for r in range(1, ROUNDS + 1):
        enc, ref = encrypted["evaluate"][r]["eval_acc"], plain["evaluate"][r]["eval_acc"]
        assert abs(enc - ref) <= 0.001, (r, enc, ref)
    assert encrypted["evaluate"][ROUNDS]["eval_acc"] > 0.6  # it learned

    received = encrypted["received"]
    assert len(received) == NODES * (1 + trips * ROUNDS)  # hello, then each round's
    for message in received:
        assert not message.has_error(), message.error
        assert not [v for v in message.content.values() if isinstance(v, ArrayRecord)]
    # Plain Flower's server, on the other hand, receives every node's parameters.
    assert any(
        isinstance(v, ArrayRecord) and len(v) > 0
        for m in plain["received"]
        for v in m.content.values()
    )

    # The PS released every round to the three nodes; the job is over.
    ops = cluster.ps_operator()
    job = ops.get_json(f"/v1/jobs/{job_id}")
    assert job["status"] == "finished" and job["definition"]["aggregation"] == aggregation
    for t in range(ROUNDS):
        assert len(ops.get_json(f"/v1/jobs/{job_id}/rounds/{t}")["contributors"]) == NODES


def test_a_node_that_skipped_a_round_cannot_open_its_model(
    services: tuple[LocalCluster, Path],
) -> None:
    cluster, work = services
    from quickstart.client_app import app as trapdoor_client

    class LeaveOneOut(TrapdoorFedAvg):
        """Round 1 samples two of the three nodes; later rounds ask all three."""

        def configure_train(self, server_round: int, *args: Any) -> Any:
            messages = list(super().configure_train(server_round, *args))
            return messages[:2] if server_round == 1 else messages

    os.environ["TRAPDOOR_FLOWER_MIN_QUORUM"] = "2"  # the nodes accept a quorum of 2
    seen = _run(
        lambda: LeaveOneOut(
            ps_url=cluster.ps_url,
            ps_admin_token=cluster.ps_admin_token,
            job_id="flower-skip",
            quorum=2,
            min_available_nodes=NODES,
            fraction_evaluate=0.0,
        ),
        trapdoor_client,
        work / "skip.json",
    )
    ops = cluster.ps_operator()
    contributors = [
        set(ops.get_json(f"/v1/jobs/flower-skip/rounds/{t}")["contributors"]) for t in range(ROUNDS)
    ]
    everyone = set(ops.get_json("/v1/jobs/flower-skip")["weights"])
    skipped = everyone - contributors[0]
    assert len(contributors[0]) == 2 and len(skipped) == 1
    [outsider] = skipped
    index = next(
        i
        for i in range(NODES)
        if participant_for(
            work / "identities" / f"{i}.json", PASSPHRASE, min_quorum=2
        ).identity.subject_id
        == outsider
    )
    client = participant_for(work / "identities" / f"{index}.json", PASSPHRASE, min_quorum=2)
    with pytest.raises(ServiceError) as refused:
        client.download_bundle(cluster.ps_url, "flower-skip", 0)
    assert (refused.value.status, refused.value.code) == (403, "not-a-contributor")
    # Its mod said so when it was asked to train a later round, and the job went on.
    errors = [m.error.reason for m in seen["received"] if m.has_error()]
    assert all("did not contribute" in e for e in errors)
    assert ops.get_json("/v1/jobs/flower-skip")["status"] == "finished"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_example_deployed_with_superlink_and_supernodes(
    services: tuple[LocalCluster, Path], plain: dict[str, Any]
) -> None:
    """``flower-superlink``, three ``flower-supernode`` and ``flwr run``, as an operator
    would start them (dependencies already installed: runtime installation off)."""
    cluster, work = services
    home = work / "flwr-home"
    home.mkdir()
    link = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    logs = work / "flower-logs"
    logs.mkdir()
    procs = []

    def spawn(name: str, *argv: str) -> None:
        handle = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(
            (
                subprocess.Popen(
                    [str(bin_dir / argv[0]), *argv[1:]],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=work,
                ),
                handle,
            )
        )

    results = work / "deployed.json"
    try:
        spawn(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--port",
            str(link),
        )
        time.sleep(3)
        for i in range(NODES):
            identity = work / "identities" / f"{i}.json"
            spawn(
                f"supernode-{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={i} num-partitions={NODES} trapdoor-identity='{identity}'",
            )
        run_config = (
            f"trapdoor-ps-url='{cluster.ps_url}' num-server-rounds={ROUNDS} "
            f"num-nodes={NODES} results-path='{results}'"
        )
        done = subprocess.run(
            [
                str(bin_dir / "flwr"),
                "run",
                str(EXAMPLE),
                "test",
                "--run-config",
                run_config,
                "--stream",
            ],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        deployed = json.loads(results.read_text())["evaluate"]
    finally:
        for process, _handle in procs:
            process.terminate()
        for process, handle in procs:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
            handle.close()
    for r in range(1, ROUNDS + 1):
        assert abs(deployed[str(r)]["eval_acc"] - plain["evaluate"][r]["eval_acc"]) <= 0.001
