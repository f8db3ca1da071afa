"""``trapdoor node``: a data owner's participant node (``serve``) and its operator's commands.

The node only calls out (to the KGC and the PS), so it runs behind its owner's firewall;
its API serves that owner's operator alone. Every ``TRAPDOOR_NODE_*`` setting
(:class:`~trapdoor.participant.settings.NodeSettings`) applies; ``--db``, ``--host`` and
``--port`` override theirs for one run, and the data options say which local data it
trains on.

``enrol``, ``join``, ``status`` and ``download-model`` are clients of the running node's
operator API (``TRAPDOOR_NODE_ADMIN_TOKEN`` or ``--token``). ``download-model`` shapes the
flat released vector into the model's named tensors (:func:`named_tensors`) with the
job's model spec, so a user loads a model, not a vector.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from trapdoor.crypto.signing import b64decode
from trapdoor.ml.data import DEFAULT_LABEL, DataError
from trapdoor.participant.app import AppLoadError
from trapdoor.participant.node import PASSPHRASE_ENV
from trapdoor.participant.node_api import create_app
from trapdoor.participant.settings import NodeSettings
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.service.cli import (
    client_options,
    echo_table,
    fail,
    load_settings,
    log_format_option,
    operator_client,
    read_json_file,
    refusals,
    require_loopback,
    setting_option,
)
from trapdoor.service.http import ServiceClient
from trapdoor.service.web import restrict_new_files, serve

__all__ = ["MODEL_SUFFIXES", "named_tensors", "node"]

#: The files ``download-model`` writes: numpy's archive, or a torch ``state_dict``.
MODEL_SUFFIXES = (".npz", ".pt")
#: A joined job's states after which nothing more happens to it.
_JOB_ENDS = frozenset({"finished", "failed", "refused"})


@click.group(name="node")
def node() -> None:
    """The participant node: one per data owner, behind its firewall."""


@node.command("serve")
@setting_option(NodeSettings, "database_url", "--db", help="SQLAlchemy URL")
@setting_option(NodeSettings, "host", "--host", help="loopback address to bind")
@setting_option(
    NodeSettings, "port", "--port", type=click.IntRange(0, 65535), help="0 picks a free port"
)
@click.option(
    "--dataset", type=click.Choice(("digits", "mnist")), default="digits", show_default=True
)
@click.option("--partition-index", type=int, default=0, show_default=True)
@click.option("--num-partitions", type=int, default=1, show_default=True)
@click.option(
    "--partition-scheme", type=click.Choice(("iid", "dirichlet")), default="iid", show_default=True
)
@click.option("--partition-seed", type=int, default=0, show_default=True)
@click.option(
    "--data-path",
    help="your own training data: .csv (header row), .parquet or .npz (X_train, y_train, "
    "X_test, y_test; or X, y); instead of --dataset",
)
@click.option("--data-test-path", help="test rows in a second file (else --data-test-fraction)")
@click.option(
    "--data-test-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=None,
    help="hold out this fraction of --data-path as test rows (seeded split)",
)
@click.option("--data-split-seed", type=int, default=0, show_default=True)
@click.option(
    "--data-label",
    default=DEFAULT_LABEL,
    show_default=True,
    help="the label column of a .csv or .parquet file",
)
@click.option(
    "--app",
    "app_ref",
    default=None,
    help="your own training (module:object, or a trapdoor.apps entry point name): an app, "
    "or a factory(data) that makes one from this node's data; default: the job's model "
    "trained on the node's data",
)
@click.option(
    "--app-dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, exists=True),
    help="look for --app's module in this folder first",
)
@click.option("--encrypt-workers", type=int, default=1, show_default=True)
@click.option("--poll-seconds", type=float, default=0.5, show_default=True)
@click.option(
    "--min-quorum",
    type=click.IntRange(min=1),
    default=None,
    help=f"refuse jobs whose quorum is below this (default: {DEFAULT_MIN_QUORUM}, "
    "the protocol's default)",
)
@log_format_option
def serve_command(
    db: str | None,
    host: str | None,
    port: int | None,
    dataset: str,
    partition_index: int,
    num_partitions: int,
    partition_scheme: str,
    partition_seed: int,
    data_path: str | None,
    data_test_path: str | None,
    data_test_fraction: float | None,
    data_split_seed: int,
    data_label: str,
    app_ref: str | None,
    app_dir: str,
    encrypt_workers: int,
    poll_seconds: float,
    min_quorum: int | None,
    log_format: str,
) -> None:
    """Serve the participant node API on loopback."""
    settings = load_settings(NodeSettings, database_url=db, host=host, port=port)
    require_loopback(settings.host)
    if not settings.passphrase:
        fail(f"set {PASSPHRASE_ENV} (it seals this node's keys)")
    restrict_new_files()  # the database, its journal and logs: owner-only
    if data_path is None and (data_test_path or data_test_fraction is not None):
        fail("--data-test-path and --data-test-fraction go with --data-path")
    try:
        app = create_app(
            {
                **settings.app_config(),
                "DATASET": dataset,
                "PARTITION_INDEX": partition_index,
                "NUM_PARTITIONS": num_partitions,
                "PARTITION_SCHEME": partition_scheme,
                "PARTITION_SEED": partition_seed,
                "DATA_PATH": data_path,
                "DATA_TEST_PATH": data_test_path,
                "DATA_TEST_FRACTION": data_test_fraction,
                "DATA_SPLIT_SEED": data_split_seed,
                "DATA_LABEL": data_label,
                "APP": app_ref,
                "APP_DIR": app_dir if app_ref else None,
                "ENCRYPT_WORKERS": encrypt_workers,
                "POLL_SECONDS": poll_seconds,
                "MIN_QUORUM": min_quorum or DEFAULT_MIN_QUORUM,
            },
        )
    except (DataError, AppLoadError) as exc:
        fail(str(exc))
    serve(
        app,
        settings.host,
        settings.port,
        "participant node",
        app.extensions["participant_node"].close,
        log_format,
    )


def _client(url: str | None, token: str | None) -> ServiceClient:
    return operator_client(NodeSettings, url, token)


#: What the node's operator can do about each refusal the node relays.
_NODE_HINTS = {
    "not-enrolled": "enrol first: trapdoor node enrol --kgc URL --subject ID --code CODE",
    "already-enrolled": "this node is enrolled already (see trapdoor node status)",
    "already-joined": "see its progress with: trapdoor node status JOB_ID",
    "job-refused": "this node will not train this job; the reason is above",
    "not-a-participant": "the job does not list this node's subject id",
    "ps-subject-conflict": "the PS's subject id differs from the one pinned with --ps-subject",
    "no-model": "no round of this job is released yet: wait, or follow it with "
    "trapdoor node status JOB_ID --follow",
}


@node.command("enrol")
@click.option("--kgc", "kgc_url", required=True, help="the KGC's base URL")
@click.option("--subject", "subject_id", required=True, help="subject id from the KGC operator")
@click.option(
    "--code", required=True, help="one-time code (it may start with '-': write --code=CODE)"
)
@client_options(NodeSettings, "node")
def enrol_command(
    kgc_url: str, subject_id: str, code: str, url: str | None, token: str | None
) -> None:
    """Enrol the running node with the KGC (its keys are made and kept in the node)."""
    client = _client(url, token)
    with refusals("enrolment", _NODE_HINTS):
        client.post_json("/v1/enrol", {"kgc_url": kgc_url, "subject_id": subject_id, "code": code})
    click.echo(f"node enrolled as {subject_id} at {kgc_url}")


@node.command("join")
@click.option("--ps", "ps_url", required=True, help="the parameter server's base URL")
@click.option("--job", "job_id", required=True, help="the job's id at that PS")
@click.option(
    "--skip-round",
    "skip_rounds",
    type=click.IntRange(min=0),
    multiple=True,
    help="a round not to take part in (repeatable)",
)
@click.option("--ps-subject", help="pin the PS's subject id (else the PS's /v1/info names it)")
@client_options(NodeSettings, "node")
def join_command(
    ps_url: str,
    job_id: str,
    skip_rounds: tuple[int, ...],
    ps_subject: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Join a job: the node checks its KGC-signed terms, then trains each open round."""
    body: dict[str, Any] = {"ps_url": ps_url, "job_id": job_id, "skip_rounds": list(skip_rounds)}
    if ps_subject is not None:
        body["ps_subject_id"] = ps_subject
    client = _client(url, token)
    with refusals(f"joining {job_id}", _NODE_HINTS):
        job = client.post_json("/v1/jobs", body)
    click.echo(f"joined {job_id} at {job['ps_url']}: {job['status']}")
    click.echo(f"follow it with: trapdoor node status {job_id} --follow")


def _round_line(job_id: str, entry: dict[str, Any]) -> str:
    """One round's progress as one line: status, whether this node contributed, metrics."""
    parts = [f"job {job_id} round {entry['round']}: {entry['status']}"]
    if entry.get("contributed"):
        parts.append("contributed")
    for key in ("test_accuracy", "test_loss"):
        if isinstance(entry.get(key), int | float):
            parts.append(f"{key.removeprefix('test_')} {entry[key]:.4f}")
    evaluation = entry.get("evaluation") or {}
    for name, value in sorted((evaluation.get("metrics") or {}).items()):
        if name != "accuracy" and isinstance(value, int | float):
            parts.append(f"{name} {value:.4f}")
    if evaluation.get("reported"):
        parts.append("shared with the PS")
    return ", ".join(parts)


def _job_line(job: dict[str, Any]) -> str:
    error = f" ({job['error']})" if job.get("error") else ""
    return f"job {job['job_id']}: {job['status']}, next round {job['next_round']}{error}"


def _follow(get: Callable[[], dict[str, Any]], interval: float) -> None:
    """A line per change (the job's state, or any round's line) until the job ends."""
    seen: dict[Any, str] = {}
    while True:
        job = get()
        for key, line in [
            ("job", _job_line(job)),
            *((r["round"], _round_line(job["job_id"], r)) for r in job["rounds"]),
        ]:
            if seen.get(key) != line:
                seen[key] = line
                click.echo(line)
        if job["status"] in _JOB_ENDS:
            return
        time.sleep(interval)


@node.command("status")
@click.argument("job_id", required=False)
@click.option("--follow", is_flag=True, help="print each change until the job ends (Ctrl-C stops)")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="seconds between polls with --follow",
)
@client_options(NodeSettings, "node")
def status_command(
    job_id: str | None, follow: bool, interval: float, url: str | None, token: str | None
) -> None:
    """The node's identity, data and jobs; or, with JOB_ID, that job's rounds."""
    if follow and job_id is None:
        fail("--follow needs a JOB_ID")
    client = _client(url, token)
    with refusals("reading the status", _NODE_HINTS):
        if job_id is None:
            status = client.get_json("/v1/status")
            ident, data = status["identity"], status["data"]
            who = ident["subject_id"] if ident["enrolled"] else "not enrolled"
            click.echo(
                f"node: {who}; data {data['source']}: {data['num_train']} train, "
                f"{data['num_test']} test, {data['num_features']} features"
            )
            if status["jobs"]:
                echo_table(status["jobs"], ("job_id", "status", "next_round", "ps_url", "error"))
            return
        path = f"/v1/jobs/{job_id}"
        if follow:
            try:
                _follow(lambda: client.get_json(path), interval)
            except KeyboardInterrupt:
                click.echo("stopped following (the node goes on)")
            return
        job = client.get_json(path)
    click.echo(_job_line(job))
    echo_table(job["rounds"], ("round", "status", "contributed", "test_accuracy", "test_loss"))


# ---------------------------------------------------------------- download-model


def named_tensors(spec: dict[str, Any], weights: np.ndarray) -> dict[str, np.ndarray]:
    """The flat released vector as the model's named tensors (copies), by its spec.

    ``mlp``: ``layer{i}.W`` of shape ``(n_in, n_out)`` and ``layer{i}.b``; ``cnn`` and
    ``gru``: their own names (``trapdoor.ml.cnn``, ``trapdoor.ml.rnn``); ``torch``: the
    module's ``state_dict`` names (buffers kept local have the module's initial values).
    ValueError for a spec or a length that does not fit.
    """
    model = _model(spec)
    if spec.get("kind") == "torch":
        return {k: v.numpy().copy() for k, v in model.load_released(weights).items()}
    views = model.unflatten(np.asarray(weights, dtype=np.float64))
    if isinstance(views, dict):
        return {name: np.array(v) for name, v in views.items()}
    named: dict[str, np.ndarray] = {}
    for i, (W, b) in enumerate(views):
        named[f"layer{i}.W"], named[f"layer{i}.b"] = np.array(W), np.array(b)
    return named


def _model(spec: dict[str, Any]) -> Any:
    from trapdoor.ml.models import model_from_spec

    return model_from_spec(spec)


def _model_spec(job: dict[str, Any], definition_path: str | None) -> dict[str, Any]:
    """The job's model spec: from the node's answer when it carries one, else from the
    job definition file (``{"model": ...}``) or a bare spec file."""
    if isinstance(job.get("model"), dict):
        return dict(job["model"])
    if definition_path is None:
        fail("the node does not say this job's model: pass --definition job.json")
    loaded = read_json_file(definition_path, "definition")
    spec = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(spec, dict) or "kind" not in spec:
        fail(f"{definition_path} has no model spec (a 'model' object with a 'kind')")
    return spec


def _import_modules(modules: Sequence[str]) -> None:
    """Import the user's modules (their torch models register themselves on import)."""
    if modules and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the user's module: say which and why
            fail(f"--import {name}: {type(exc).__name__}: {exc}")


def _check_out(out: Path) -> None:
    if out.suffix not in MODEL_SUFFIXES:
        fail(f"--out must end in {' or '.join(MODEL_SUFFIXES)}, not {out.name!r}")
    if not out.parent.is_dir():
        fail(f"no folder {out.parent} for --out")


def _write_model(out: Path, spec: dict[str, Any], weights: np.ndarray) -> int:
    """Write the named tensors to ``out`` whole or not at all; the count of tensors."""
    if out.suffix == ".pt":
        if spec.get("kind") != "torch":
            fail(
                f"a .pt file holds a torch state_dict; this job's model is "
                f"{spec.get('kind')!r}: write .npz"
            )
        try:
            import torch
        except ImportError:
            fail("writing .pt needs torch: pip install -e '.[torch]', or write .npz")
        state = _model(spec).load_released(weights)  # loads with strict=True
        save: Callable[[Any], None] = lambda f: torch.save(state, f)  # noqa: E731
        count = len(state)
    else:
        tensors = named_tensors(spec, weights)
        savez: Any = np.savez  # its stubs type **kwds as allow_pickle's bool
        save = lambda f: savez(f, **tensors)  # noqa: E731
        count = len(tensors)
    partial = out.with_name(out.name + ".part")
    try:
        with open(partial, "wb") as handle:
            save(handle)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return count


@node.command("download-model")
@click.argument("job_id")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="model.npz (numpy arrays by name) or model.pt (torch state_dict)",
)
@click.option(
    "--definition",
    "definition_path",
    type=click.Path(dir_okay=False),
    help="the job definition (or a model spec) JSON, for the model's layout",
)
@click.option(
    "--import",
    "modules",
    multiple=True,
    help="import this module first (from the current folder or installed): the one that "
    "registers your torch model, e.g. the module of --app (repeatable)",
)
@client_options(NodeSettings, "node")
def download_model_command(
    job_id: str,
    out: Path,
    definition_path: str | None,
    modules: tuple[str, ...],
    url: str | None,
    token: str | None,
) -> None:
    """Save the latest released model of JOB_ID as named tensors."""
    _check_out(out)
    _import_modules(modules)
    client = _client(url, token)
    with refusals(f"downloading the model of {job_id}", _NODE_HINTS):
        job = client.get_json(f"/v1/jobs/{job_id}")
        answer = client.get_json(f"/v1/jobs/{job_id}/model")
    spec = _model_spec(job, definition_path)
    weights = np.frombuffer(b64decode(answer["weights"]), dtype="<f8")
    try:
        count = _write_model(out, spec, weights)
    except (ValueError, ImportError) as exc:
        hint = (
            " (import the module that registers it: --import MODULE)"
            if "unknown torch" in str(exc)
            else ""
        )
        fail(f"cannot shape the model of {job_id} by {spec.get('kind')!r}: {exc}{hint}")
    click.echo(
        f"round {answer['round']} model of {job_id}: {count} tensors, "
        f"{weights.size} weights -> {out}"
    )
