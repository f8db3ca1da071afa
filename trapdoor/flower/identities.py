"""Each Flower node's Trapdoor identity: enrolled with the KGC, sealed in a file.

A Flower node is a Trapdoor participant: it has its own keys, certified by the KGC, and
they never leave it. :func:`provision` enrols ``count`` of them through the KGC's
operator API and seals each under a passphrase in ``folder/<i>.json`` (for a simulation,
where node ``i`` is the partition ``i``; a deployment provisions each node on its own
machine). :func:`participant_for` opens the one a node's mod uses, once per process.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from trapdoor.participant.client import Identity, ParticipantClient
from trapdoor.service.http import ServiceClient

__all__ = ["PASSPHRASE_ENV", "participant_for", "provision"]

#: The passphrase a node's identity file is sealed under.
PASSPHRASE_ENV = "TRAPDOOR_FLOWER_PASSPHRASE"

_OPEN: dict[tuple[str, int], ParticipantClient] = {}
_LOCK = threading.Lock()


def provision(
    kgc_url: str,
    admin_token: str,
    count: int,
    folder: str | Path,
    passphrase: str,
    *,
    name: str = "Flower node",
) -> list[str]:
    """Enrol ``count`` participants and seal node ``i``'s identity in ``folder/<i>.json``
    (owner-only); their subject ids, in order."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    operator = ServiceClient(kgc_url, token=admin_token)
    subjects = []
    for i in range(count):
        answer = operator.post_json(
            "/v1/enrolments", {"name": f"{name} {i}", "role": "participant"}
        )
        client = ParticipantClient.enrol(kgc_url, answer["subject_id"], answer["code"])
        path = out / f"{i}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(client.identity.to_sealed(passphrase), handle)
        subjects.append(client.identity.subject_id)
    return subjects


def participant_for(path: str | Path, passphrase: str, *, min_quorum: int) -> ParticipantClient:
    """The client of the identity sealed at ``path`` (opened once per process)."""
    key = (str(Path(path).resolve()), min_quorum)
    with _LOCK:
        client = _OPEN.get(key)
        if client is None:
            sealed = json.loads(Path(path).read_text())
            identity = Identity.from_sealed(sealed, passphrase)
            if not identity.kgc_url:
                raise ValueError(f"{path}: the identity does not say its KGC")
            client = ParticipantClient(identity, identity.kgc_url, min_quorum=min_quorum)
            _OPEN[key] = client
        return client
