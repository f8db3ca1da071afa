"""``trapdoor ps``: the parameter server's command line (also ``python -m trapdoor.ps ...``).

On first start ``serve`` enrols with the KGC (``--enrol-subject`` and ``--enrol-code`` from
the KGC operator): it makes an Ed25519 key, has the KGC certify it and stores it sealed
under ``TRAPDOOR_PS_PASSPHRASE``. Then it serves on loopback with Werkzeug's threaded
server (gunicorn with :mod:`trapdoor.ps.wsgi` is the deployment path). ``enrol`` does only
the first step (migrate, enrol, store the sealed key) and exits: gunicorn workers cannot
enrol, so a deployment runs it once before ``gunicorn trapdoor.ps.wsgi:app``
(docs/RELIABILITY.md, "Deployment"). Every ``TRAPDOOR_PS_*`` setting
(:class:`~trapdoor.ps.settings.PsSettings`) applies; ``--db``, ``--kgc``, ``--host`` and
``--port`` override theirs for one run.

``create-job`` and ``status`` are the operator's clients of the running PS's HTTP API
(``POST /v1/jobs``; ``GET /v1/jobs``, ``/v1/jobs/<id>`` and its rounds), with
``TRAPDOOR_PS_ADMIN_TOKEN`` (or ``--token``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from sqlalchemy.orm import sessionmaker

from trapdoor.crypto.sealing import SealError
from trapdoor.ps.app import create_app
from trapdoor.ps.identity import ServerIdentity, enrol, load_identity
from trapdoor.ps.kgc_gateway import KgcError
from trapdoor.ps.settings import PsSettings
from trapdoor.service.cli import (
    client_options,
    echo_table,
    exit_status,
    fail,
    load_settings,
    log_format_option,
    operator_client,
    read_json_file,
    refusals,
    require_loopback,
    setting_option,
)
from trapdoor.service.db import make_engine, migrate
from trapdoor.service.web import serve

__all__ = ["PASSPHRASE_ENV", "main", "ps"]

PASSPHRASE_ENV = PsSettings.variable("passphrase")

F = TypeVar("F", bound=Callable[..., Any])


@click.group(name="ps")
def ps() -> None:
    """The parameter server: `enrol` (for gunicorn) or `serve` (enrols on first start);
    `create-job` and `status` for its operator."""


def _enrolment_options(command: F) -> F:
    """The options ``serve`` and ``enrol`` share: where the state is, and the enrolment."""
    for option in reversed(
        [
            setting_option(PsSettings, "database_url", "--db", help="SQLAlchemy URL"),
            setting_option(PsSettings, "kgc_url", "--kgc", help="KGC base URL"),
            click.option("--enrol-subject", help="subject id given by the KGC operator"),
            click.option(
                "--enrol-code",
                help="one-time enrolment code (it may start with '-': write --enrol-code=CODE)",
            ),
        ]
    ):
        command = option(command)
    return command


def _enrolled(settings: PsSettings, subject: str | None, code: str | None) -> ServerIdentity:
    """The stored identity, unsealed; on first start, enrol with the KGC and store it."""
    passphrase = settings.passphrase
    if not passphrase:
        fail(f"set {PASSPHRASE_ENV} (it seals this server's signing key)")
    migrate("param_server", settings.database_url)
    sessions = sessionmaker(make_engine(settings.database_url), expire_on_commit=False)
    try:
        identity = load_identity(sessions, passphrase)
    except SealError:
        fail(f"{PASSPHRASE_ENV} does not open the stored signing key")
    if identity is not None:
        if subject or code:
            click.echo(f"already enrolled as {identity.subject_id}; ignoring --enrol-*")
        return identity
    if not (settings.kgc_url and subject and code):
        fail("not enrolled yet: pass --kgc URL --enrol-subject ID --enrol-code CODE")
    try:
        identity = enrol(
            sessions, settings.kgc_url, subject_id=subject, code=code, passphrase=passphrase
        )
    except KgcError as exc:
        fail(f"enrolment failed: {exc}", code=1)
    click.echo(f"enrolled with the KGC as {identity.subject_id}")
    return identity


@ps.command("enrol")
@_enrolment_options
def enrol_command(
    db: str | None, kgc: str | None, enrol_subject: str | None, enrol_code: str | None
) -> None:
    """Enrol with the KGC and exit (run once before gunicorn)."""
    settings = load_settings(PsSettings, database_url=db, kgc_url=kgc)
    _enrolled(settings, enrol_subject, enrol_code)


@ps.command("serve")
@_enrolment_options
@setting_option(PsSettings, "host", "--host", help="loopback address to bind")
@setting_option(
    PsSettings, "port", "--port", type=click.IntRange(0, 65535), help="0 picks a free port"
)
@log_format_option
def serve_command(
    db: str | None,
    kgc: str | None,
    enrol_subject: str | None,
    enrol_code: str | None,
    host: str | None,
    port: int | None,
    log_format: str,
) -> None:
    """Enrol on first start, then serve the API on loopback (gunicorn: trapdoor.ps.wsgi)."""
    settings = load_settings(PsSettings, database_url=db, kgc_url=kgc, host=host, port=port)
    require_loopback(settings.host, "trapdoor.ps.wsgi")
    identity = _enrolled(settings, enrol_subject, enrol_code)
    app = create_app(
        {
            **settings.app_config(),
            "AUTO_MIGRATE": False,
            "KGC_URL": settings.kgc_url or identity.kgc_url,
            "SIGNING_KEY": identity.signing_key,
            "SUBJECT_ID": identity.subject_id,
            "BACKGROUND": True,  # the built-in server always runs the ticker
        }
    )

    def _stop() -> None:
        ticker = app.extensions.get("param_server_ticker")
        if ticker is not None:
            ticker.stop()
        app.extensions["param_server"].close()

    serve(app, settings.host, settings.port, "parameter server", _stop, log_format)


#: What the operator can do about each refusal of a new job (``POST /v1/jobs``).
_CREATE_HINTS = {
    "bad-definition": "fix the field named above in the definition file",
    "invalid-definition": "fix the value named above in the definition file",
    "malformed-json": "the definition must be one JSON object",
    "job-exists": "choose another job_id (job ids are never reused)",
    "kgc-rejected": "the KGC refused the job's terms (are its participants enrolled there?)",
    "kgc-unavailable": "the PS cannot reach its KGC; start the KGC or check TRAPDOOR_PS_KGC_URL",
    "kgc-error": "the KGC failed; see its log",
    "bad-kgc-answer": "the KGC's answer did not check; see the PS's log",
}


@ps.command("create-job")
@click.option(
    "--definition",
    "definition_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="the job definition, a JSON file (docs/PROTOCOL.md, job definition)",
)
@client_options(PsSettings, "parameter server")
def create_job_command(definition_path: str, url: str | None, token: str | None) -> None:
    """Create a job at the running PS from a JSON definition."""
    definition = read_json_file(definition_path, "definition")
    if not isinstance(definition, dict):
        fail(f"definition {definition_path} must be a JSON object")
    client = operator_client(PsSettings, url, token)
    with refusals("creating the job", _CREATE_HINTS):
        job = client.post_json("/v1/jobs", definition)
    click.echo(
        f"job {job['job_id']} created: {job['status']}, round {job['current_round']} "
        f"of {job['rounds_total']} open"
    )


@ps.command("status")
@click.argument("job_id", required=False)
@client_options(PsSettings, "parameter server")
def status_command(job_id: str | None, url: str | None, token: str | None) -> None:
    """Every job; or, with JOB_ID, that job's rounds."""
    client = operator_client(PsSettings, url, token)
    with refusals("reading the status"):
        if job_id is None:
            jobs = client.get_json("/v1/jobs")["jobs"]
            if not jobs:
                click.echo("no jobs yet")
                return
            echo_table(jobs, ("job_id", "status", "current_round", "rounds_total"))
            return
        job = client.get_json(f"/v1/jobs/{job_id}")
        last = max(0, min(job["current_round"], job["rounds_total"] - 1))
        rounds = [client.get_json(f"/v1/jobs/{job_id}/rounds/{t}") for t in range(last + 1)]
    mode = job["definition"].get("aggregation", "bcp")
    click.echo(f"job {job_id} ({mode}): {job['status']}, {job['rounds_total']} rounds")
    columns: tuple[str, ...] = ("round", "status", "run", "attempt", "commitments", "uploads")
    if job["definition"].get("share_metrics"):
        rounds = [{**r, **_shared_columns(r.get("shared_metrics") or {})} for r in rounds]
        columns += (
            "reporters",
            "loss",
            *sorted({k for r in rounds for k in r if k.startswith("m:")}),
        )
    echo_table(rounds, columns)
    said = job.get("participation") or {}
    silent = sorted(set(job["weights"]) - set(said))
    for subject, entry in sorted(said.items()):
        reason = f": {entry['reason']}" if entry.get("reason") else ""
        click.echo(f"{subject} {entry['status']}{reason}")
    if silent:
        click.echo(f"not heard from yet: {', '.join(silent)}")


def _shared_columns(shared: dict[str, Any]) -> dict[str, Any]:
    """A round's shared metrics as table cells (``m:NAME`` for each metric)."""
    if not shared.get("reporters"):
        return {"reporters": 0, "loss": "-"}
    cells: dict[str, Any] = {"reporters": shared["reporters"], "loss": f"{shared['loss']:.4f}"}
    for name, value in shared.get("metrics", {}).items():
        cells[f"m:{name}"] = f"{value:.4f}"
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trapdoor.ps ARGV``; returns the exit status."""
    return exit_status(ps, argv, "python -m trapdoor.ps")
