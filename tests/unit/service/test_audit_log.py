"""The tamper-evident audit log (trapdoor.service.audit_log) over a real SQLite table.

Whoever can write the table but not sign as the service: every edit, deletion from the
middle, reordering or forged row is found; a cut at the end is found against an earlier
head; two appends from the same row cannot both land (no fork).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from trapdoor.crypto.signing import generate_signing_key, sign_json
from trapdoor.service.audit_log import (
    GENESIS,
    AuditLogColumns,
    append_entry,
    entry_digest,
    export_entries,
    verify_entries,
)
from trapdoor.service.db import make_engine, make_metadata


class _Base(DeclarativeBase):
    metadata = make_metadata()


class Entry(AuditLogColumns, _Base):
    __tablename__ = "test_audit_log"


KEY = generate_signing_key()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    _Base.metadata.create_all(engine)
    yield sessionmaker(engine)
    engine.dispose()


def _fill(sessions: sessionmaker[Session], count: int = 5) -> list[dict[str, Any]]:
    for i in range(count):
        with sessions.begin() as session:
            append_entry(
                session,
                Entry,
                KEY,
                at=1000.0 + i,
                event="enrolment",
                subject=f"sub-{i}",
                detail={"role": "participant", "i": i},
            )
    with sessions() as session:
        return export_entries(session, Entry)


def test_an_untouched_log_verifies_and_names_its_head(sessions: sessionmaker[Session]) -> None:
    entries = _fill(sessions)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_sha256"] == GENESIS
    assert all(b["prev_sha256"] == a["sha256"] for a, b in itertools.pairwise(entries))
    result = verify_entries(entries, KEY.public_key())
    assert result.ok and result.entries == 5
    assert (result.head_seq, result.head_sha256) == (5, entries[-1]["sha256"])
    assert verify_entries([], KEY.public_key()).ok


def _problems(entries: list[dict[str, Any]], **kw: Any) -> list[str]:
    return verify_entries(entries, KEY.public_key(), **kw).problems


def test_edits_deletions_reorderings_and_forgeries_are_found(
    sessions: sessionmaker[Session],
) -> None:
    entries = _fill(sessions)
    edited = copy.deepcopy(entries)
    edited[2]["detail"]["role"] = "param_server"
    assert any("edited" in p for p in _problems(edited))
    # Edited with its digest recomputed: the signature still gives it away.
    rehashed = copy.deepcopy(edited)
    rehashed[2]["sha256"] = entry_digest(rehashed[2])
    assert any("not signed by the service" in p for p in _problems(rehashed))
    deleted = entries[:2] + entries[3:]
    assert any("deleted or moved" in p for p in _problems(deleted))
    assert any("chain broken" in p for p in _problems(deleted))
    swapped = [entries[0], entries[2], entries[1], *entries[3:]]
    assert _problems(swapped)
    # Signed, but by someone else's key.
    other = generate_signing_key()
    forged = copy.deepcopy(entries)
    body = {k: forged[4][k] for k in ("seq", "at", "event", "subject", "detail", "prev_sha256")}
    forged[4]["signature"] = sign_json(other, body)
    assert any("not signed by the service" in p for p in _problems(forged))
    assert any("missing" in p for p in _problems([{"seq": 1}]))


def test_a_cut_at_the_end_is_found_against_an_earlier_head(
    sessions: sessionmaker[Session],
) -> None:
    entries = _fill(sessions)
    head = (5, entries[-1]["sha256"])
    assert not _problems(entries, expected_head=head)
    assert not _problems(entries[:3])  # alone, a shorter chain is a valid chain
    assert any("cut or replaced" in p for p in _problems(entries[:3], expected_head=head))


def test_an_edit_in_the_database_is_found_in_the_next_export(
    sessions: sessionmaker[Session],
) -> None:
    _fill(sessions, 3)
    with sessions.begin() as session:
        session.execute(update(Entry).where(Entry.seq == 2).values(subject="someone-else"))
    with sessions() as session:
        assert _problems(export_entries(session, Entry))


def test_two_appends_after_the_same_row_cannot_both_land(
    sessions: sessionmaker[Session],
) -> None:
    _fill(sessions, 1)
    first, second = sessions(), sessions()
    try:
        append_entry(first, Entry, KEY, at=1.0, event="a")
        append_entry(second, Entry, KEY, at=2.0, event="b")
        first.commit()
        with pytest.raises(IntegrityError):
            second.commit()
    finally:
        first.close()
        second.close()
    with sessions() as session:
        entries = export_entries(session, Entry)
    assert [e["event"] for e in entries] == ["enrolment", "a"]
    assert verify_entries(entries, KEY.public_key()).ok
