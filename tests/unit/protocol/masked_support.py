"""A KGC-signed *masked* job (:class:`MaskedWorld`) and its uploads, for the protocol tests.

Seeds are 256 bits, so these jobs live under BCP parameters with a 512-bit ``N`` (the
session's 256-bit ``small_params`` cannot carry a seed): the ``params_512`` fixture.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from protocol_support import PARTICIPANTS, PS

from trapdoor.crypto.bcp import MasterKey, PublicParams
from trapdoor.crypto.blocks import generate_job_key
from trapdoor.crypto.masking import (
    RingVector,
    derive_mask,
    encode_ring,
    encrypt_seed,
    mask_vector,
    seed_to_int,
    vector_to_bytes,
)
from trapdoor.crypto.signing import b64encode, generate_signing_key, public_key_hex, sign_json
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.job import (
    JobTerms,
    MaskedLayout,
    initial_state_sha256,
    masked_layout,
    requested_terms,
    sign_job_terms,
    verify_job_terms,
)
from trapdoor.protocol.release_request import (
    MaskedReleaseCheck,
    UndecodedRelease,
    check_masked_release_request,
    masked_release_request_header,
)
from trapdoor.protocol.upload import (
    build_masked_upload_statement,
    mask_context,
    seed_sha256,
    seed_to_obj,
)

PARAMS_512_SEED = 512_2024
JOB = "job-m"
LENGTH = 6
FRAC = 20
MODEL_BOUND = 32.0
CLIP = 16.0
ROUNDS = 3
#: W_0, with two values that exercise the rounding: 3·2^-21 is 1.5 units (rounds to 2),
#: and -1.25 and -0.125 are negative (two's complement).
W0 = np.array([0.5, -1.25, 0.0, 3.0, -0.125, 3 * 2.0**-21])
#: encode(W_0) in Z_{2^32} at 20 fractional bits, by hand.
W0_RING32 = [2**19, 2**32 - 5 * 2**18, 0, 3 * 2**20, 2**32 - 2**17, 2]


def default_layout(length: int = LENGTH) -> MaskedLayout:
    return masked_layout(
        length=length,
        frac_bits=FRAC,
        model_bound=MODEL_BOUND,
        clip_bound=CLIP,
        participants=len(PARTICIPANTS),
        rounds=ROUNDS,
    )


@dataclass
class Upload:
    """One contributor's upload of one round: what it keeps and what it sends."""

    subject: str
    update: npt.NDArray[np.float64]  # w·Δ
    seed: bytes
    mask: RingVector
    y: RingVector
    y_bytes: bytes
    seed_obj: dict[str, str]
    statement: dict[str, Any]

    @property
    def sent(self) -> dict[str, Any]:
        """What the PS forwards to the KGC for this upload."""
        return {"statement": copy.deepcopy(self.statement), "seed": dict(self.seed_obj)}


class MaskedWorld:
    """A KGC, a masked job signed for PS, its view, and the participants' keys."""

    def __init__(
        self,
        params: PublicParams,
        master: MasterKey,
        *,
        job_id: str = JOB,
        aggregation: str = "masked",
        layout: MaskedLayout | None = None,
        initial_digest: str | None = None,
        keys: dict[str, Any] | None = None,
        kgc: Any = None,
    ) -> None:
        rng = random.Random(11)
        self.params = params
        self.master = master
        self.job_id = job_id
        self.kgc = kgc or generate_signing_key()
        self.ps = generate_signing_key()
        self.keys = keys or {s: generate_signing_key() for s in PARTICIPANTS}
        self.bcp = {s: params.keygen(rng) for s in PARTICIPANTS}
        self.layout = layout or default_layout()
        self.packing = self.layout.to_json()
        self.definition: dict[str, Any] = {
            "job_id": job_id,
            "model": {"kind": "mlp", "layers": [2, 2]},
            "initial_weights": b64encode(W0.astype("<f8").tobytes()),
            "participants": [{"subject_id": s, "num_samples": 10} for s in PARTICIPANTS],
            "quorum": 3,
            "rounds": ROUNDS,
            "aggregation": aggregation,
            "encoding": {"frac_bits": FRAC, "clip_bound": CLIP, "model_bound": MODEL_BOUND},
        }
        self.weights = {s: 1 / len(PARTICIPANTS) for s in PARTICIPANTS}
        if initial_digest is None:
            initial_digest = initial_state_sha256(self.layout, W0)
        requested = requested_terms(
            job_id=job_id,
            definition=self.definition,
            packing=self.packing,
            weights=self.weights,
            width=1,
            num_plaintexts=self.layout.length,
            initial_ciphertext_sha256=initial_digest,
        )
        self.job_key = generate_job_key(params, 1, rng)
        self.signed, self.signature = sign_job_terms(
            self.kgc,
            requested,
            param_server=PS,
            param_server_key=public_key_hex(self.ps),
            signing_keys={s: public_key_hex(k) for s, k in self.keys.items()},
            job_key=to_obj(self.job_key),
        )
        self.terms: JobTerms = verify_job_terms(
            self.kgc.public_key(), self.signed, self.signature, params
        )
        self.rng = random.Random(13)

    @property
    def n(self) -> int:
        return int(self.params.n)

    def view(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "definition": copy.deepcopy(self.definition),
            "packing": dict(self.packing),
            "weights": dict(self.weights),
            "job_key": to_obj(self.job_key),
            "job_terms": copy.deepcopy(self.signed),
            "job_terms_signature": self.signature,
        }

    def context(self, subject: str, round_number: int = 0, run: int = 0) -> Any:
        return mask_context(
            self.terms, self.layout, round_number=round_number, run=run, signer=subject
        )

    def upload(
        self,
        subject: str,
        round_number: int = 0,
        *,
        run: int = 0,
        seed: bytes | None = None,
        seed_obj: dict[str, str] | None = None,
        key: Any = None,
        terms: JobTerms | None = None,
    ) -> Upload:
        """An honest upload (unless ``seed_obj`` or ``key`` say otherwise)."""
        index = PARTICIPANTS.index(subject)
        delta = np.random.default_rng(100 * index + round_number).uniform(-1.0, 1.0, LENGTH)
        update = self.weights[subject] * delta
        if seed is None:
            seed = hashlib.sha256(f"{self.job_id}/{subject}/{round_number}/{run}".encode()).digest()
        mask = derive_mask(
            seed_to_int(seed), self.n, self.context(subject, round_number, run), self.layout.ring
        )
        y = mask_vector(encode_ring(update, self.layout.ring), mask)
        y_bytes = vector_to_bytes(y, self.layout.ring)
        if seed_obj is None:
            seed_obj = seed_to_obj(encrypt_seed(self.job_key.component(0), seed, self.rng))
        statement = build_masked_upload_statement(
            key or self.keys[subject],
            terms or self.terms,
            round_number=round_number,
            subject_id=subject,
            payload_sha256=hashlib.sha256(y_bytes).hexdigest(),
            seed_sha256=seed_sha256(seed_obj),
            run=run,
        )
        return Upload(subject, update, seed, mask, y, y_bytes, seed_obj, statement)

    def header(
        self,
        uploads: list[Upload] | list[dict[str, Any]],
        /,
        round_number: int = 0,
        *,
        run: int = 0,
        undecodable: list[dict[str, Any]] | None = None,
        ps_key: Any = None,
        **changes: Any,
    ) -> dict[str, Any]:
        """A PS-signed release request for these uploads, with ``changes`` applied."""
        sent = [u.sent if isinstance(u, Upload) else u for u in uploads]
        header = masked_release_request_header(
            job_id=self.job_id,
            round_number=round_number,
            run=run,
            layout=self.layout,
            uploads=sent,
            undecodable=undecodable or [],
        )
        header.update(changes)
        return {**header, "request_signature": sign_json(ps_key or self.ps, header)}

    def check(
        self,
        header: dict[str, Any],
        next_round: int = 0,
        undecoded: UndecodedRelease | None = None,
    ) -> MaskedReleaseCheck:
        return check_masked_release_request(
            header, self.terms, next_round=next_round, undecoded=undecoded
        )


def layout_obj(**changes: Any) -> dict[str, Any]:
    """The default layout's JSON with ``changes``: a layout a PS might serve."""
    obj = default_layout().to_json()
    obj.update(changes)
    return obj
