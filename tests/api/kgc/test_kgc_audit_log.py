"""The KGC's audit log through its API and ``trapdoor kgc audit-log export|verify``.

Enrolments and certificates are logged in their own transaction, exported to the operator
only, verified offline with the KGC's public key; a row edited in the database is found.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from click.testing import CliRunner
from kgc_api_support import ApiWorld
from sqlalchemy import update
from werkzeug.serving import make_server

from trapdoor.cli import cli
from trapdoor.kgc.models import AuditEntry
from trapdoor.kgc.testing import TestSubject


def test_enrolments_are_logged_exported_and_verified(api: ApiWorld, tmp_path: Path) -> None:
    assert api.client.get("/v1/audit-log").status_code == 401
    subject = api.enrol(TestSubject.param_server(), "the PS")
    answer = api.client.get("/v1/audit-log", headers=api.admin).get_json()
    events = [(e["event"], e["subject"]) for e in answer["entries"]]
    assert ("enrolment", subject.subject_id) in events
    assert ("certificate-issued", subject.subject_id) in events
    assert all("code" not in json.dumps(e["detail"]) for e in answer["entries"])

    server = make_server("127.0.0.1", 0, api.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    token = api.admin["Authorization"].split()[1]
    out = tmp_path / "audit.jsonl"
    runner = CliRunner()
    try:
        exported = runner.invoke(
            cli, ["kgc", "audit-log", "export", "--out", str(out), "--url", url, "--token", token]
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert exported.exit_code == 0, exported.output
    assert token not in exported.output
    key = answer["verify_key"]
    head = exported.output.split("head: ")[1].split()[0]
    verified = runner.invoke(
        cli, ["kgc", "audit-log", "verify", str(out), "--verify-key", key, "--head", head]
    )
    assert verified.exit_code == 0, verified.output
    assert "chain and signatures intact" in verified.output

    # Someone with the database, but not the KGC's key, rewrites who was enrolled.
    with api.engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq == 1).values(subject="sub-mallory"))
    entries = api.client.get("/v1/audit-log", headers=api.admin).get_json()["entries"]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(e) + "\n" for e in entries))
    refused = runner.invoke(cli, ["kgc", "audit-log", "verify", str(tampered), "--verify-key", key])
    assert refused.exit_code == 1
    assert "PROBLEM line 1" in refused.output and "edited" in refused.output
