"""``trapdoor node join|status|download-model``: clients of a real node app on a loopback
port. A released model needs a whole encrypted round (the end-to-end tests run one), so
the download tests give the real node's job status and model answers by hand."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from flask import Flask

from tests.loopback import serving
from trapdoor.cli import cli
from trapdoor.crypto.signing import b64encode
from trapdoor.ml.models import MLP
from trapdoor.participant.cli import named_tensors
from trapdoor.participant.node_api import create_app
from trapdoor.participant.settings import NodeSettings

TOKEN = "node-admin"
MLP_SPEC = {"kind": "mlp", "layer_sizes": [4, 3, 2]}
TORCH_SPEC = {"kind": "torch", "name": "torch-mlp", "kwargs": {"layer_sizes": [4, 3, 2]}}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv(NodeSettings.variable("admin_token"), TOKEN)
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/node.db",
            "ADMIN_TOKEN": TOKEN,
            "PASSPHRASE": "node-pass",
            "BACKGROUND": False,
            "DATASET": "digits",
        }
    )
    yield app
    app.extensions["participant_node"].close()


@pytest.fixture
def url(app: Flask) -> Iterator[str]:
    with serving(app) as base:
        yield base


def _node(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["node", *args, "--url", url])


def _holding(app: Flask, monkeypatch: pytest.MonkeyPatch, weights: np.ndarray) -> None:
    """The node answers as one holding ``weights`` released in round 2 of ``job-a``."""
    node = app.extensions["participant_node"]
    job = {
        "job_id": "job-a",
        "ps_url": "http://ps",
        "status": "finished",
        "next_round": 3,
        "rounds": [],
    }
    model = {"job_id": "job-a", "round": 2, "weights": b64encode(weights.astype("<f8").tobytes())}
    monkeypatch.setattr(node, "job_status", lambda _job_id: job)
    monkeypatch.setattr(node, "latest_model", lambda _job_id: model)


def _spec_file(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job_id": "job-a", "model": spec}))
    return str(path)


def test_status_before_enrolment_and_join_refused_until_enrolled(url: str) -> None:
    status = _node(url, "status")
    assert status.exit_code == 0, status.output
    assert "node: not enrolled; data digits" in status.output
    joined = _node(url, "join", "--ps", "http://127.0.0.1:9", "--job", "job-a")
    assert joined.exit_code == 1
    assert "409" in joined.output and "trapdoor node enrol" in joined.output
    assert "job-a" not in _node(url, "status").output  # nothing recorded


def test_status_of_a_job_never_joined_exits_1(url: str) -> None:
    result = _node(url, "status", "nope")
    assert result.exit_code == 1 and "404" in result.output


def test_follow_prints_until_the_job_ends(
    app: Flask, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _holding(app, monkeypatch, np.zeros(3))
    result = _node(url, "status", "job-a", "--follow", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["job job-a: finished, next round 3"]


def test_download_model_npz_gives_named_arrays(
    app: Flask, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlp = MLP(MLP_SPEC["layer_sizes"])  # type: ignore[arg-type]
    weights = np.arange(mlp.num_parameters, dtype=np.float64)
    _holding(app, monkeypatch, weights)
    out = tmp_path / "model.npz"
    result = _node(
        url,
        "download-model",
        "job-a",
        "--out",
        str(out),
        "--definition",
        _spec_file(tmp_path, MLP_SPEC),
    )
    assert result.exit_code == 0, result.output
    loaded = np.load(out)
    assert sorted(loaded.files) == ["layer0.W", "layer0.b", "layer1.W", "layer1.b"]
    (W0, b0), _ = mlp.unflatten(weights)
    assert np.array_equal(loaded["layer0.W"], W0) and np.array_equal(loaded["layer0.b"], b0)


def test_download_model_pt_is_a_loadable_state_dict(
    app: Flask, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    weights = np.linspace(-1.0, 1.0, 4 * 3 + 3 + 3 * 2 + 2)
    _holding(app, monkeypatch, weights)
    out = tmp_path / "model.pt"
    result = _node(
        url,
        "download-model",
        "job-a",
        "--out",
        str(out),
        "--definition",
        _spec_file(tmp_path, TORCH_SPEC),
    )
    assert result.exit_code == 0, result.output
    state = torch.load(io.BytesIO(out.read_bytes()))
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    ).double()
    module.load_state_dict(state)
    flat = torch.nn.utils.parameters_to_vector(module.parameters()).detach().numpy()
    assert np.array_equal(flat, weights)


@pytest.mark.parametrize(
    ("out", "spec", "says"),
    [
        ("model.txt", MLP_SPEC, "must end in .npz or .pt"),
        ("model.pt", MLP_SPEC, "write .npz"),
        ("model.npz", {"kind": "mlp", "layer_sizes": [5, 2]}, "cannot shape"),
    ],
)
def test_download_model_refusals_write_nothing(
    app: Flask,
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    out: str,
    spec: dict[str, Any],
    says: str,
) -> None:
    _holding(app, monkeypatch, np.zeros(MLP(MLP_SPEC["layer_sizes"]).num_parameters))  # type: ignore[arg-type]
    result = _node(
        url,
        "download-model",
        "job-a",
        "--out",
        str(tmp_path / out),
        "--definition",
        _spec_file(tmp_path, spec),
    )
    assert result.exit_code != 0
    assert says in result.output
    assert not list(tmp_path.glob("model*"))


def test_named_tensors_of_a_cnn_are_its_own_views() -> None:
    from trapdoor.ml.cnn import CNN

    cnn = CNN(input_shape=(1, 6, 6), conv_channels=2, num_classes=3)
    weights = np.random.default_rng(0).normal(size=cnn.num_parameters)
    named = named_tensors(cnn.spec(), weights)
    assert named.keys() == cnn.unflatten(weights).keys()
    assert sum(v.size for v in named.values()) == weights.size
