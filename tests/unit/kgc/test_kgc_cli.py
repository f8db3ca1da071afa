"""The KGC command line (init, serve) and the gunicorn entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import trapdoor.kgc.wsgi
from trapdoor.kgc.cli import main


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAPDOOR_KGC_PASSPHRASE", "cli pass")
    monkeypatch.delenv("TRAPDOOR_KGC_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("TRAPDOOR_KGC_ADMIN_TOKEN", "admin-cli")


@pytest.mark.usefixtures("env")
def test_init_once_then_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/kgc.db"
    assert main(["init", "--db", url, "--bits", "1024", "--demo"]) == 0
    out = capsys.readouterr().out
    assert "KGC initialised" in out and "1024-bit N, PUBLIC DEMO parameters" in out
    assert "cli pass" not in out
    assert main(["init", "--db", url, "--bits", "1024", "--demo"]) == 2
    assert "already holds KGC keys" in capsys.readouterr().err


@pytest.mark.usefixtures("env")
def test_init_generates_fresh_parameters_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--db", f"sqlite:///{tmp_path}/kgc.db", "--bits", "128"]) == 0
    assert "128-bit N, fresh parameters" in capsys.readouterr().out


def test_serve_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/kgc.db"
    monkeypatch.delenv("TRAPDOOR_KGC_PASSPHRASE", raising=False)
    monkeypatch.delenv("TRAPDOOR_KGC_PASSPHRASE_FILE", raising=False)
    assert main(["serve", "--db", url]) == 2
    assert "TRAPDOOR_KGC_PASSPHRASE" in capsys.readouterr().err
    monkeypatch.setenv("TRAPDOOR_KGC_PASSPHRASE", "pw")
    assert main(["serve", "--db", url, "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["serve", "--db", url]) == 2
    assert "not initialised" in capsys.readouterr().err
    assert main(["init", "--db", url, "--bits", "1024", "--demo"]) == 0
    assert main(["serve", "--db", url]) == 2  # demo parameters without --demo
    assert "DEMO" in capsys.readouterr().err
    monkeypatch.setenv("TRAPDOOR_KGC_PASSPHRASE", "wrong")
    assert main(["serve", "--db", url, "--demo"]) == 2
    assert "does not open" in capsys.readouterr().err


def test_serve_initialises_and_answers_over_http(tmp_path: Path) -> None:
    environ = {
        **os.environ,
        "TRAPDOOR_KGC_PASSPHRASE": "pw",
        "TRAPDOOR_KGC_ADMIN_TOKEN": "admin-e2e",
    }
    environ.pop("TRAPDOOR_KGC_PASSPHRASE_FILE", None)
    command = [sys.executable, "-m", "trapdoor.kgc", "serve", "--db", f"sqlite:///{tmp_path}/k.db"]
    command += ["--port", "0", "--demo", "--init", "--bits", "1024"]
    proc = subprocess.Popen(
        command,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("KGC initialised at")
        assert lines[1].startswith("KGC listening on http://127.0.0.1:")
        base = lines[1].split(" on ", 1)[1].strip()
        assert requests.get(f"{base}/healthz", timeout=10).json()["status"] == "ok"
        assert requests.get(f"{base}/v1/info", timeout=10).json()["demo"] is True
        enrol = requests.post(
            f"{base}/v1/enrolments",
            json={"name": "A", "role": "participant"},
            headers={"Authorization": "Bearer admin-e2e"},
            timeout=10,
        )
        assert enrol.status_code == 201
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_wsgi_builds_the_app_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/kgc.db"
    monkeypatch.setenv("TRAPDOOR_KGC_PASSPHRASE", "pw")
    monkeypatch.delenv("TRAPDOOR_KGC_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("TRAPDOOR_KGC_DATABASE_URL", url)
    monkeypatch.setenv("TRAPDOOR_KGC_DEMO", "1")
    monkeypatch.setenv("TRAPDOOR_KGC_ADMIN_TOKEN", "kgc-admin")
    monkeypatch.setattr(trapdoor.kgc.wsgi, "_app", None)
    assert main(["init", "--db", url, "--bits", "1024", "--demo"]) == 0
    app = trapdoor.kgc.wsgi.app
    assert app is trapdoor.kgc.wsgi.app
    assert app.config["ADMIN_TOKEN"] == "kgc-admin"
    assert "PASSPHRASE" not in app.config
    assert app.test_client().get("/v1/info").get_json()["demo"] is True
    with pytest.raises(AttributeError):
        _ = trapdoor.kgc.wsgi.nothing
