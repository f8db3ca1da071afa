"""What every step of the parameter server shares: one object, passed to each step.

The database sessions, the KGC gateway and its public information, the PS's signing key
and subject id, the clock and randomness (injected, so tests are deterministic), the
model store, the job setups and the one lock that serialises state changes. No step keeps
state of its own, and nothing here is a module global.

Concurrency: :meth:`PsState.transaction` takes the in-process lock (SQLite) around one
transaction; a step locks the round row (``SELECT ... FOR UPDATE``) inside it to serialise
state changes across gunicorn workers (PostgreSQL).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import RandomSource
from trapdoor.crypto.signing import public_key_hex
from trapdoor.ps.kgc_gateway import KgcGateway, KgcInfo
from trapdoor.ps.storage import JobSetups, ModelStore
from trapdoor.service.db import session_scope

__all__ = ["PsState"]


@dataclass
class PsState:
    """The PS's shared state (see the module docstring); the façade builds one."""

    sessions: sessionmaker[Session]
    gateway: KgcGateway
    #: Signs closed sets, receipts and release requests; the job terms name its public key.
    signing_key: Ed25519PrivateKey
    #: The audience of the participant tokens the PS accepts; the server the terms name.
    subject_id: str
    kgc: KgcInfo
    clock: Callable[[], float]
    #: Draws the blinds ``R`` (``random.SystemRandom()`` in production).
    rng: RandomSource
    models: ModelStore
    setups: JobSetups
    release_retry_seconds: float
    release_lease_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: Called (without arguments) when a round is ready for release; the app wakes its
    #: background worker with it.
    on_release_pending: Callable[[], None] | None = None

    @property
    def verify_key_hex(self) -> str:
        """The PS's Ed25519 public key (closed sets, receipts and release requests)."""
        return public_key_hex(self.signing_key)

    def now(self, now: float | None = None) -> float:
        """``now`` if the caller gave one (the operator, a tick), else the clock."""
        return self.clock() if now is None else now

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One state change: the lock, then a session committed on success."""
        with self.lock, session_scope(self.sessions) as session:
            yield session

    def release_pending(self) -> None:
        """A round is ready for its release: wake whoever releases it."""
        if self.on_release_pending is not None:
            self.on_release_pending()
