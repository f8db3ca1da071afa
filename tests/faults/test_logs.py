"""The gunicorn deployment's logs (KGC and PS, restarts included) hold no secret.

Runs after the load, crash and deadline tests of this folder (file order), so the logs
cover 50 participants' uploads, two crashes and a failed round. The node cluster's logs
are checked in test_node_restart.py.
"""

from __future__ import annotations

import pytest
from conftest import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]


def test_deployment_logs_hold_no_secret(deployment: Deployment) -> None:
    cluster = deployment.cluster
    logs = cluster.all_logs()
    assert "Booting worker" in logs
    secrets = {
        "kgc admin token": cluster.kgc_admin_token,
        "ps admin token": cluster.ps_admin_token,
        "kgc passphrase": cluster.kgc_passphrase,
        "ps passphrase": cluster.ps_passphrase,
        **{f"enrolment code {i}": code for i, code in enumerate(cluster.enrolment_codes)},
    }
    for i, client in enumerate(deployment.clients):
        secrets[f"token {i}"] = client.ps_token(cluster.ps_url)
        secrets[f"kgc token {i}"] = client.token()
        secrets[f"secret exponent {i}"] = format(int(client.identity.secret_key.a), "x")
    leaked = [name for name, value in secrets.items() if value in logs]
    assert leaked == []
