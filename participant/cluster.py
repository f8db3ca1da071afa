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
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from common.http import ServiceClient

__all__ = ["ClusterError", "LocalCluster", "ServiceProcess"]

_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class ClusterError(RuntimeError):
    """A service could not be started (it exited, or did not say where it listens)."""


@dataclass
class ServiceProcess:
    """One spawned service: its process, its log file and, once it serves, its URL."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class LocalCluster:
    """Spawns and stops the services of one deployment under ``workdir``.

    Each service gets a fresh random admin token (``kgc_admin_token``,
    ``ps_admin_token``, ``node_admin_token``) and passphrase; databases are SQLite files
    and logs ``<name>.log`` in ``workdir``. A temporary ``workdir`` (the default) is
    removed by :meth:`stop` unless ``keep_workdir`` is set; a given one is kept.
    """

    def __init__(self, workdir: str | Path | None = None, *, keep_workdir: bool = False) -> None:
        self._own_workdir = workdir is None and not keep_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="trapdoor-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kgc_admin_token = secrets.token_urlsafe(16)
        self.ps_admin_token = secrets.token_urlsafe(16)
        self.node_admin_token = secrets.token_urlsafe(16)
        self.node_passphrase = secrets.token_urlsafe(16)
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

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ServiceProcess:
        """Start ``python <argv>`` from the repository root, output to ``<name>.log``."""
        log = self.workdir / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            cwd=str(_REPO_ROOT),
        )
        handle.close()
        proc = ServiceProcess(name, popen, log)
        self.procs.append(proc)
        return proc

    @staticmethod
    def wait_ready(procs: Sequence[ServiceProcess], timeout: float) -> None:
        """Each service prints its URL once it serves (port 0: the OS picks a free port)."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            while True:
                match = _LISTENING.search(proc.log_text())
                if match:
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

    def start_kgc(self, bits: int, *, demo: bool = True, timeout: float = 120) -> ServiceProcess:
        """``kgc init`` (``--demo``: the shipped public parameters, no prime search), then serve."""
        db = f"sqlite:///{self.workdir}/kgc.db"
        env = {
            "TRAPDOOR_KGC_PASSPHRASE": secrets.token_urlsafe(16),
            "TRAPDOOR_KGC_ADMIN_TOKEN": self.kgc_admin_token,
            "TRAPDOOR_ADMIN_TOKEN": self.kgc_admin_token,
        }
        flags = ["--demo"] if demo else []
        init = subprocess.run(
            [sys.executable, "-m", "kgc.cli", "init", "--db", db, "--bits", str(bits), *flags],
            env={**os.environ, **env},
            cwd=str(_REPO_ROOT),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if init.returncode != 0:
            raise ClusterError(f"kgc init failed: {init.stderr[-2000:]}")
        self.kgc = self.spawn(
            "kgc", ["-m", "kgc.cli", "serve", "--db", db, "--port", "0", *flags], env
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
        return answer

    # ------------------------------------------------------------------ parameter server

    @property
    def ps_url(self) -> str:
        if self.param_server is None or not self.param_server.url:
            raise ClusterError("the parameter server is not running")
        return self.param_server.url

    def start_param_server(self, *, wait: bool = True, timeout: float = 300) -> ServiceProcess:
        """Enrol the PS at the KGC and start it; it completes the enrolment on first start."""
        enrolment = self.enrol("param-server", "param_server")
        self.param_server_subject = str(enrolment["subject_id"])
        self.param_server = self.spawn(
            "param_server",
            [
                "-m",
                "param_server",
                "serve",
                "--db",
                f"sqlite:///{self.workdir}/ps.db",
                "--kgc",
                self.kgc_url,
                "--port",
                "0",
                "--enrol-subject",
                enrolment["subject_id"],
                "--enrol-code",
                enrolment["code"],
            ],
            {
                "TRAPDOOR_PS_PASSPHRASE": secrets.token_urlsafe(16),
                "TRAPDOOR_ADMIN_TOKEN": self.ps_admin_token,
            },
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
        dataset: str,
        partition_seed: int,
        partition_scheme: str = "iid",
        poll_seconds: float = 0.3,
        wait: bool = True,
        timeout: float = 300,
    ) -> list[ServiceProcess]:
        """One node per data owner; node ``i`` holds partition ``i`` of ``count``.

        ``partition_scheme`` is ``"iid"`` or ``"dirichlet"`` (non-IID, alpha 0.5); every
        node derives the same split from the seed, as the plaintext reference does.
        """
        first = len(self.nodes)
        started = []
        for i in range(first, first + count):
            db = f"sqlite:///{self.workdir}/node-{i}.db"
            self.node_dbs.append(db)
            started.append(
                self.spawn(
                    f"node-{i}",
                    [
                        "-m",
                        "participant.cli",
                        "node",
                        "serve",
                        "--db",
                        db,
                        "--port",
                        "0",
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
                        "--poll-seconds",
                        str(poll_seconds),
                    ],
                    {
                        "TRAPDOOR_NODE_PASSPHRASE": self.node_passphrase,
                        "TRAPDOOR_ADMIN_TOKEN": self.node_admin_token,
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
