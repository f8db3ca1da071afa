"""The KGC's two secrets at rest: the BCP master key and the Ed25519 signing key.

Both are stored only sealed under the operator's passphrase (scrypt + AES-256-GCM,
:func:`trapdoor.crypto.sealing.seal_with_passphrase`). ``init_kgc`` makes them once; ``load_kgc``
opens them at every start. The passphrase comes from ``TRAPDOOR_KGC_PASSPHRASE`` or from
the file named by ``TRAPDOOR_KGC_PASSPHRASE_FILE`` (:func:`passphrase_from_settings`).

Demo parameters (``common/data``, public factors) protect nothing: they are refused
unless the caller says ``demo=True``, and the KGC then reports ``"demo": true``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from trapdoor.crypto.bcp import MasterKey, PublicParams, generate_params
from trapdoor.crypto.demo_params import DEMO_BITS, demo_params_path, load_demo_master_key
from trapdoor.crypto.sealing import SCRYPT_N, SealError, open_with_passphrase, seal_with_passphrase
from trapdoor.crypto.signing import (
    generate_signing_key,
    private_key_from_bytes,
    private_key_to_bytes,
)
from trapdoor.crypto.wire import dumps, from_hex, loads
from trapdoor.kgc.models import SealedSecret
from trapdoor.kgc.settings import KgcSettings
from trapdoor.service.db import make_engine, migrate, session_scope

__all__ = [
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "AlreadyInitialisedError",
    "DemoParamsRefusedError",
    "KeystoreError",
    "KgcKeys",
    "NotInitialisedError",
    "WrongPassphraseError",
    "init_kgc",
    "is_demo_params",
    "load_kgc",
    "passphrase_from_env",
    "passphrase_from_settings",
]

PASSPHRASE_ENV = KgcSettings.variable("passphrase")
PASSPHRASE_FILE_ENV = KgcSettings.variable("passphrase_file")
MASTER_KEY = "master_key"
SIGNING_KEY = "signing_key"


class KeystoreError(RuntimeError):
    """The KGC's keys cannot be made or opened; the message says what to do."""


class AlreadyInitialisedError(KeystoreError):
    """``init`` on a database that already holds KGC keys (they are never overwritten)."""


class NotInitialisedError(KeystoreError):
    """No KGC keys in this database yet: run ``init`` first."""


class WrongPassphraseError(KeystoreError):
    """The passphrase does not open the sealed keys (or they were tampered with)."""


class DemoParamsRefusedError(KeystoreError):
    """The stored parameters are the public demo ones and demo mode was not asked for."""


@dataclass(frozen=True)
class KgcKeys:
    """The opened secrets, and whether the parameters are the public demo ones."""

    master_key: MasterKey
    signing_key: Ed25519PrivateKey
    demo: bool

    def __repr__(self) -> str:  # never print a key
        return f"KgcKeys(bits={self.master_key.params.bits}, demo={self.demo})"


def passphrase_from_settings(settings: KgcSettings) -> str:
    """The passphrase of ``TRAPDOOR_KGC_PASSPHRASE`` or of the file in ``..._FILE``.

    A file's trailing newline is dropped. Setting both, or neither, is an error, so a
    stale variable never silently wins.
    """
    direct, path = settings.passphrase or "", settings.passphrase_file
    if direct and path:
        raise KeystoreError(f"set only one of {PASSPHRASE_ENV} and {PASSPHRASE_FILE_ENV}")
    if path:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeystoreError(
                f"cannot read {PASSPHRASE_FILE_ENV} ({type(exc).__name__})"
            ) from None
        direct = text.rstrip("\r\n")
    if not direct:
        raise KeystoreError(
            f"set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}: it seals the KGC's master key"
        )
    return direct


def passphrase_from_env(environ: Mapping[str, str] | None = None) -> str:
    """:func:`passphrase_from_settings` of the KGC's settings in ``environ`` (default: ours)."""
    return passphrase_from_settings(KgcSettings.from_env(environ))


@cache
def _demo_moduli() -> frozenset[int]:
    moduli = set()
    for bits in DEMO_BITS:
        try:
            obj = json.loads(demo_params_path(bits).read_text())
            moduli.add(int(from_hex(obj["n"])))
        except (OSError, ValueError, KeyError):
            continue
    return frozenset(moduli)


def is_demo_params(params: PublicParams) -> bool:
    """Whether ``params`` are one of the shipped demo sets (whose factors are public)."""
    return int(params.n) in _demo_moduli()


def init_kgc(
    db_url: str,
    passphrase: str,
    *,
    bits: int = 2048,
    demo: bool = False,
    progress: Callable[[int], None] | None = None,
    cost: int = SCRYPT_N,
    clock: Callable[[], float] = time.time,
) -> KgcKeys:
    """Migrate the database, make fresh keys, seal and store them; return them opened.

    Fresh parameters are generated from the system CSPRNG (tens of seconds at 2048 bits);
    ``demo=True`` loads the shipped demo parameters of ``bits`` instead (instant, insecure).
    ``cost`` is scrypt's ``N`` (lower it only in tests). Refuses an initialised database.
    """
    if not passphrase:
        raise KeystoreError("an empty passphrase seals nothing")
    migrate("kgc", db_url)
    engine = make_engine(db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    try:
        with sessions() as session:
            if session.scalar(select(SealedSecret.name).limit(1)) is not None:
                raise AlreadyInitialisedError(
                    "this database already holds KGC keys; they are never overwritten"
                )
        if demo:
            master_key = load_demo_master_key(bits)
        else:
            _, master_key = generate_params(bits, secrets.SystemRandom(), progress)
        signing_key = generate_signing_key()
        now = clock()
        sealed = {
            MASTER_KEY: seal_with_passphrase(dumps(master_key).encode(), passphrase, cost=cost),
            SIGNING_KEY: seal_with_passphrase(
                private_key_to_bytes(signing_key), passphrase, cost=cost
            ),
        }
        with session_scope(sessions) as session:
            for name, obj in sealed.items():
                session.add(SealedSecret(name=name, sealed=json.dumps(obj), created_at=now))
    finally:
        engine.dispose()
    return KgcKeys(master_key, signing_key, is_demo_params(master_key.params))


def load_kgc(db_url: str, passphrase: str, *, demo: bool = False) -> KgcKeys:
    """Open the sealed keys; refuse demo parameters unless ``demo`` is set.

    Raises :class:`NotInitialisedError`, :class:`WrongPassphraseError` or
    :class:`DemoParamsRefusedError` with a message an operator can act on.
    """
    engine = make_engine(db_url)
    try:
        if not inspect(engine).has_table(SealedSecret.__tablename__):
            raise NotInitialisedError("no KGC schema in this database: run `kgc init` first")
        with Session(engine) as session:
            rows = {row.name: row.sealed for row in session.scalars(select(SealedSecret))}
    finally:
        engine.dispose()
    if MASTER_KEY not in rows or SIGNING_KEY not in rows:
        raise NotInitialisedError("no KGC keys in this database: run `kgc init` first")
    try:
        master_raw = open_with_passphrase(json.loads(rows[MASTER_KEY]), passphrase)
        signing_raw = open_with_passphrase(json.loads(rows[SIGNING_KEY]), passphrase)
    except (SealError, ValueError):
        raise WrongPassphraseError(
            "the passphrase does not open the sealed KGC keys (wrong passphrase or tampered data)"
        ) from None
    master_key = loads(master_raw)
    if not isinstance(master_key, MasterKey):
        raise KeystoreError("the sealed master key is not a bcp-master-key")
    keys = KgcKeys(
        master_key, private_key_from_bytes(signing_raw), is_demo_params(master_key.params)
    )
    if keys.demo and not demo:
        raise DemoParamsRefusedError(
            "this KGC holds the public DEMO parameters, which protect nothing; "
            "start it with --demo (TRAPDOOR_KGC_DEMO=1) only for a demo"
        )
    return keys
