"""A whole Trapdoor FL deployment as local processes: KGC, parameter server, nodes.

``trapdoor demo`` and the end-to-end tests need the same thing: the real services as
separate processes on loopback, each on a port the OS picks (port 0; the URL is read from
the service's log line ``listening on ...``), enrolled with the operators' admin tokens over
HTTP, and all of it torn down afterwards even when something failed half-way::

    with LocalCluster() as cluster:
        cluster.start_kgc(1024, demo=True)
        cluster.start_param_server()
        enrolment = cluster.enrol("alice", "participant")
        ...

Services that boot slowly can be started together: pass ``wait=False`` and then call
:meth:`LocalCluster.wait_ready` on all of them at once.

The KGC and the parameter server can also run as they are deployed: under gunicorn with
several workers on one shared database (``start_kgc(..., gunicorn_workers=2,
database_url="postgresql+psycopg://...")``), with exactly the commands of
docs/RELIABILITY.md ("Deployment"). :meth:`LocalCluster.kill` (SIGKILL, the whole process
group) and :meth:`LocalCluster.restart` (same command, same port, same database) are for
the fault tests.

Everything the cluster creates is owner-only: the working folder is 0700, log files 0600,
and every child process runs with umask 077 (its databases, journals and files too).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import tenacity

from trapdoor.service.http import ServiceClient

__all__ = ["ClusterError", "LocalCluster", "NodeData", "ServiceProcess", "wait_until"]

#: Files the services create (databases, journals, logs) are owner-only.
CHILD_UMASK = 0o077
# Werkzeug (``trapdoor.service.web.serve``) and gunicorn ("Listening at: http://...") lines.
_LISTENING = re.compile(r"(?:listening on|Listening at:) (http://127\.0\.0\.1:\d+)")


class ClusterError(RuntimeError):
    """A service could not be started (it exited, or did not say where it listens)."""


@dataclass(frozen=True)
class NodeData:
    """A node's own data file instead of a partition of a bundled data set: the
    ``--data-*`` options of ``trapdoor node serve`` (:func:`trapdoor.ml.data.load_local_data`).

    ``test_fraction`` holds out that share of the rows as test rows (shuffled by
    ``split_seed``); ``None`` for a ``.npz`` that holds its own test part.
    """

    path: str
    test_fraction: float | None = None
    split_seed: int = 0
    label: str = "label"

    def argv(self) -> list[str]:
        """The node's data options; the path made absolute (nodes run in the workdir)."""
        args = ["--data-path", str(Path(self.path).resolve()), f"--data-label={self.label}"]
        if self.test_fraction is not None:
            args += ["--data-test-fraction", repr(float(self.test_fraction))]
        return [*args, "--data-split-seed", str(self.split_seed)]


@dataclass
class ServiceProcess:
    """One spawned service: its process, its log file and, once it serves, its URL."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: Runs in its own process group (gunicorn: the master and its workers), so
    #: :meth:`LocalCluster.kill` can take all of them down at once.
    group: bool = False
    #: How many times this service was restarted (names the next log file).
    generation: int = 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class LocalCluster:
    """Spawns and stops the services of one deployment under ``workdir``.

    Each service gets a fresh random admin token (``kgc_admin_token``,
    ``ps_admin_token``, ``node_admin_token``) and passphrase; databases are SQLite files
    and logs ``<name>.log`` in ``workdir``. A temporary ``workdir`` (the default) is
    removed by :meth:`stop` unless ``keep_workdir`` is set; a given one is kept. The
    workdir is created 0700 (a given one that exists keeps its mode), logs 0600, and the
    children run with umask 077.
    """

    def __init__(self, workdir: str | Path | None = None, *, keep_workdir: bool = False) -> None:
        self._own_workdir = workdir is None and not keep_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="trapdoor-demo-"))
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.kgc_admin_token = secrets.token_urlsafe(16)
        self.ps_admin_token = secrets.token_urlsafe(16)
        self.node_admin_token = secrets.token_urlsafe(16)
        self.node_passphrase = secrets.token_urlsafe(16)
        self.kgc_passphrase = secrets.token_urlsafe(16)
        self.ps_passphrase = secrets.token_urlsafe(16)
        #: Enrolment codes this cluster handed out (the log-secrecy test looks for them).
        self.enrolment_codes: list[str] = []
        self.kgc: ServiceProcess | None = None
        self.param_server: ServiceProcess | None = None
        self.param_server_subject: str | None = None
        self.nodes: list[ServiceProcess] = []
        self.node_dbs: list[str] = []
        self.procs: list[ServiceProcess] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate every process, kill what did not stop in 10 s, drop a temp workdir."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def logs(self) -> dict[str, Path]:
        """Log file of each spawned service, by name (``kgc``, ``param_server``, ``node-i``)."""
        return {proc.name: proc.log for proc in self.procs}

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        group: bool = False,
        log_name: str | None = None,
    ) -> ServiceProcess:
        """Start ``python <argv>`` in the workdir, output to ``<name>.log``."""
        log = self.workdir / f"{log_name or name}.log"
        handle = _private_log(log)
        popen = subprocess.Popen(
            [sys.executable, *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            cwd=str(self.workdir),
            start_new_session=group,
            umask=CHILD_UMASK,
        )
        handle.close()
        proc = ServiceProcess(name, popen, log, argv=list(argv), env=dict(env), group=group)
        self.procs.append(proc)
        return proc

    # ------------------------------------------------------------------ faults

    def kill(self, proc: ServiceProcess) -> None:
        """SIGKILL, no clean-up: a crash (for gunicorn, the master and all workers)."""
        if proc.popen.poll() is None:
            if proc.group:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            else:
                proc.popen.kill()
        proc.popen.wait()

    def restart(
        self, proc: ServiceProcess, *, wait: bool = True, timeout: float = 120
    ) -> ServiceProcess:
        """Start ``proc``'s command again on the same port and database (kill it first).

        The same port, because the other services were configured with its URL (the PS
        keeps the KGC's URL, nodes the PS's). The log goes to ``<name>.<n>.log``, so the
        earlier log is kept. Returns the new process, which takes the old one's place.
        """
        if proc.popen.poll() is None:
            self.kill(proc)
        port = proc.url.rsplit(":", 1)[1] if proc.url else "0"
        argv = _with_port(proc.argv, port)
        generation = proc.generation + 1
        new = self.spawn(
            proc.name,
            argv,
            proc.env,
            group=proc.group,
            log_name=f"{proc.name}.{generation}",
        )
        new.generation = generation
        new.url = ""
        if self.kgc is proc:
            self.kgc = new
        if self.param_server is proc:
            self.param_server = new
        self.nodes = [new if node is proc else node for node in self.nodes]
        if wait:
            self.wait_ready([new], timeout)
        return new

    def all_logs(self) -> str:
        """The text of every log this cluster wrote, restarts included."""
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.workdir.glob("*.log"))
        )

    def _gunicorn(self, name: str, app: str, workers: int, env: dict[str, str]) -> ServiceProcess:
        """``gunicorn -w N -b 127.0.0.1:0 app`` in its own process group."""
        argv = [
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--bind",
            "127.0.0.1:0",
            "--timeout",
            "300",
            "--graceful-timeout",
            "10",
            app,
        ]
        return self.spawn(name, argv, env, group=True)

    @staticmethod
    def wait_ready(procs: Sequence[ServiceProcess], timeout: float) -> None:
        """Each service prints its URL once it serves (port 0: the OS picks a free port)."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            while True:
                match = _LISTENING.search(proc.log_text())
                if match and (not proc.group or _healthy(match.group(1))):
                    proc.url = match.group(1)
                    break
                if proc.popen.poll() is not None:
                    tail = proc.log_text()[-2000:]
                    raise ClusterError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"{proc.name} did not start in {timeout:.0f} s")
                time.sleep(0.1)

    # ------------------------------------------------------------------ KGC

    @property
    def kgc_url(self) -> str:
        if self.kgc is None or not self.kgc.url:
            raise ClusterError("the KGC is not running")
        return self.kgc.url

    def start_kgc(
        self,
        bits: int,
        *,
        demo: bool = True,
        timeout: float = 120,
        database_url: str | None = None,
        gunicorn_workers: int = 0,
    ) -> ServiceProcess:
        """``kgc init`` (``--demo``: the shipped public parameters, no prime search), then serve.

        ``gunicorn_workers > 0`` serves with ``gunicorn trapdoor.kgc.wsgi:app`` instead of the
        built-in server; ``database_url`` replaces the SQLite file (e.g. PostgreSQL).
        """
        db = database_url or f"sqlite:///{self.workdir}/kgc.db"
        env = {
            "TRAPDOOR_KGC_PASSPHRASE": self.kgc_passphrase,
            "TRAPDOOR_KGC_ADMIN_TOKEN": self.kgc_admin_token,
        }
        flags = ["--demo"] if demo else []
        init = subprocess.run(
            [sys.executable, "-m", "trapdoor.kgc", "init", "--db", db, "--bits", str(bits), *flags],
            env={**os.environ, **env},
            cwd=str(self.workdir),
            capture_output=True,
            text=True,
            timeout=300,
            umask=CHILD_UMASK,
        )
        if init.returncode != 0:
            raise ClusterError(f"kgc init failed: {init.stderr[-2000:]}")
        if gunicorn_workers > 0:
            wsgi_env = {**env, "TRAPDOOR_KGC_DATABASE_URL": db}
            if demo:
                wsgi_env["TRAPDOOR_KGC_DEMO"] = "1"
            self.kgc = self._gunicorn("kgc", "trapdoor.kgc.wsgi:app", gunicorn_workers, wsgi_env)
        else:
            self.kgc = self.spawn(
                "kgc", ["-m", "trapdoor.kgc", "serve", "--db", db, "--port", "0", *flags], env
            )
        self.wait_ready([self.kgc], timeout)
        return self.kgc

    def kgc_operator(self, *, timeout: float = 60.0) -> ServiceClient:
        """The KGC's operator API (admin token)."""
        return ServiceClient(self.kgc_url, self.kgc_admin_token, timeout=timeout)

    def enrol(self, name: str, role: str) -> dict[str, Any]:
        """Operator step of an enrolment: ``{"subject_id", "code"}`` for the subject to complete."""
        answer: dict[str, Any] = self.kgc_operator().post_json(
            "/v1/enrolments", {"name": name, "role": role}
        )
        self.enrolment_codes.append(str(answer["code"]))
        return answer

    # ------------------------------------------------------------------ parameter server

    @property
    def ps_url(self) -> str:
        if self.param_server is None or not self.param_server.url:
            raise ClusterError("the parameter server is not running")
        return self.param_server.url

    def start_param_server(
        self,
        *,
        wait: bool = True,
        timeout: float = 300,
        database_url: str | None = None,
        gunicorn_workers: int = 0,
    ) -> ServiceProcess:
        """Enrol the PS at the KGC and start it; it completes the enrolment on first start.

        ``gunicorn_workers > 0``: ``python -m trapdoor.ps enrol`` once, then
        ``gunicorn trapdoor.ps.wsgi:app`` with that many workers (use PostgreSQL as
        ``database_url`` for more than one).
        """
        enrolment = self.enrol("param-server", "param_server")
        self.param_server_subject = str(enrolment["subject_id"])
        db = database_url or f"sqlite:///{self.workdir}/ps.db"
        env = {
            "TRAPDOOR_PS_PASSPHRASE": self.ps_passphrase,
            "TRAPDOOR_PS_ADMIN_TOKEN": self.ps_admin_token,
        }
        if gunicorn_workers > 0:
            enrol = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "trapdoor.ps",
                    "enrol",
                    "--db",
                    db,
                    "--kgc",
                    self.kgc_url,
                    # "--opt=value": a one-time code may start with "-" (base64url)
                    f"--enrol-subject={enrolment['subject_id']}",
                    f"--enrol-code={enrolment['code']}",
                ],
                env={**os.environ, **env},
                cwd=str(self.workdir),
                capture_output=True,
                text=True,
                timeout=300,
                umask=CHILD_UMASK,
            )
            if enrol.returncode != 0:
                raise ClusterError(f"param_server enrol failed: {enrol.stderr[-2000:]}")
            wsgi_env = {**env, "TRAPDOOR_PS_DATABASE_URL": db, "TRAPDOOR_PS_KGC_URL": self.kgc_url}
            self.param_server = self._gunicorn(
                "param_server", "trapdoor.ps.wsgi:app", gunicorn_workers, wsgi_env
            )
            if wait:
                self.wait_ready([self.param_server], timeout)
            return self.param_server
        self.param_server = self.spawn(
            "param_server",
            [
                "-m",
                "trapdoor.ps",
                "serve",
                "--db",
                db,
                "--kgc",
                self.kgc_url,
                "--port",
                "0",
                f"--enrol-subject={enrolment['subject_id']}",
                f"--enrol-code={enrolment['code']}",
            ],
            env,
        )
        if wait:
            self.wait_ready([self.param_server], timeout)
        return self.param_server

    def ps_operator(self, *, timeout: float = 600.0) -> ServiceClient:
        """The parameter server's operator API (admin token)."""
        return ServiceClient(self.ps_url, self.ps_admin_token, timeout=timeout)

    # ------------------------------------------------------------------ participant nodes

    def start_nodes(
        self,
        count: int,
        *,
        dataset: str = "digits",
        partition_seed: int = 0,
        partition_scheme: str = "iid",
        poll_seconds: float = 0.3,
        wait: bool = True,
        timeout: float = 300,
        min_quorum: int | None = None,
        data: Sequence[NodeData] | None = None,
    ) -> list[ServiceProcess]:
        """One node per data owner; node ``i`` holds partition ``i`` of ``count``.

        ``partition_scheme`` is ``"iid"`` or ``"dirichlet"`` (non-IID, alpha 0.5); every
        node derives the same split from the seed, as the plaintext reference does.
        ``min_quorum`` lowers (or raises) the smallest job quorum the nodes accept
        (``--min-quorum``; default: the protocol's, 3): a job of 2 participants needs 2.
        ``data`` (one per node, ``count`` of them) gives each node its own file instead.
        """
        if data is not None and len(data) != count:
            raise ClusterError(f"{count} nodes but {len(data)} data files: one file per node")
        first = len(self.nodes)
        started = []
        for i in range(first, first + count):
            db = f"sqlite:///{self.workdir}/node-{i}.db"
            self.node_dbs.append(db)
            if data is not None:
                source = data[i - first].argv()
            else:
                source = [
                    "--dataset",
                    dataset,
                    "--partition-index",
                    str(i),
                    "--num-partitions",
                    str(count),
                    "--partition-seed",
                    str(partition_seed),
                    "--partition-scheme",
                    partition_scheme,
                ]
            started.append(
                self.spawn(
                    f"node-{i}",
                    [
                        "-m",
                        "trapdoor.cli",
                        "node",
                        "serve",
                        "--db",
                        db,
                        "--port",
                        "0",
                        *source,
                        "--poll-seconds",
                        str(poll_seconds),
                        *(["--min-quorum", str(min_quorum)] if min_quorum is not None else []),
                    ],
                    {
                        "TRAPDOOR_NODE_PASSPHRASE": self.node_passphrase,
                        "TRAPDOOR_NODE_ADMIN_TOKEN": self.node_admin_token,
                    },
                )
            )
        self.nodes.extend(started)
        if wait:
            self.wait_ready(started, timeout)
        return started

    def node_operator(self, index: int, *, timeout: float = 300.0) -> ServiceClient:
        """Node ``index``'s operator API (admin token)."""
        node = self.nodes[index]
        if not node.url:
            raise ClusterError(f"{node.name} is not running")
        return ServiceClient(node.url, self.node_admin_token, timeout=timeout)

    def start_all(
        self,
        nodes: int,
        *,
        dataset: str = "digits",
        partition_seed: int = 0,
        bits: int = 1024,
        partition_scheme: str = "iid",
        min_quorum: int | None = None,
        timeout: float = 300,
        data: Sequence[NodeData] | None = None,
    ) -> list[str]:
        """A whole local deployment: the KGC (demo parameters of ``bits``), then the PS and
        ``nodes`` nodes booting in parallel, each node enrolled. The nodes' subject ids.

        The nodes hold partitions of ``dataset``, or each its own file of ``data``."""
        self.start_kgc(bits, demo=True)
        ps = self.start_param_server(wait=False)
        started = self.start_nodes(
            nodes,
            dataset=dataset,
            partition_seed=partition_seed,
            partition_scheme=partition_scheme,
            poll_seconds=0.3,
            wait=False,
            min_quorum=min_quorum,
            data=data,
        )
        self.wait_ready([ps, *started], timeout)
        return self.enrol_nodes()

    def enrol_nodes(self) -> list[str]:
        """Enrol every started node at the KGC (one code each); their subject ids."""
        subjects = []
        for index in range(len(self.nodes)):
            enrolment = self.enrol(f"node-{index}", "participant")
            self.enrol_node(index, enrolment)
            subjects.append(str(enrolment["subject_id"]))
        return subjects

    def enrol_node(self, index: int, enrolment: dict[str, Any]) -> dict[str, Any]:
        """Have node ``index`` complete an enrolment (it makes its keys locally)."""
        answer: dict[str, Any] = self.node_operator(index).post_json(
            "/v1/enrol",
            {
                "kgc_url": self.kgc_url,
                "subject_id": enrolment["subject_id"],
                "code": enrolment["code"],
            },
        )
        return answer


def wait_until(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy; that value. ``TimeoutError``
    naming ``what`` when it does not come in time."""

    def timed_out(_: tenacity.RetryCallState) -> Any:
        raise TimeoutError(f"timed out waiting for {what}")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: not value),
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_fixed(poll),
        retry_error_callback=timed_out,
    )
    return retrying(check)


def _private_log(path: Path) -> Any:
    """``path`` opened for writing, created 0600 (and made 0600 if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def _with_port(argv: list[str], port: str) -> list[str]:
    """``--port 0`` / ``--bind 127.0.0.1:0`` of a first start, pinned to ``port``."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--port":
            out[i + 1] = port
        elif arg == "--bind":
            out[i + 1] = f"127.0.0.1:{port}"
    return out


def _healthy(url: str) -> bool:
    """gunicorn binds before its workers load the app: ready once ``/healthz`` answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
