"""Messages of the ``masked`` aggregation mode (DESIGN §2.2), shared by every party.

A round of a masked job, in one upload and one release:

1. A contributor of round ``t`` (it holds ``W_t``) trains, draws a fresh seed ``s``
   (:func:`trapdoor.crypto.masking.draw_seed`), and uploads one frame of kind ``ring-vector``:
   ``y = encode(w·Δ) + μ mod 2^k`` as its payload, and in its header ``Enc_BCP(s)`` under
   the job key's first component (:func:`seed_to_obj`) and its signed upload statement
   (:func:`build_masked_upload_statement`: job terms, round, run, SHA-256 of ``y`` and of
   the seed ciphertext, the PS as audience).
2. The PS adds the ``y`` into its stored masked model ``Z`` with wrap-around arithmetic,
   and asks the KGC for the release (:func:`masked_release_request_header`, signed whole
   by the PS): the contributors' statements and seed ciphertexts.
3. The KGC checks schedule, quorum and every statement
   (:func:`check_masked_release_request`), decrypts each seed under this job's key only,
   derives each mask (:func:`mask_context`, :func:`trapdoor.crypto.masking.derive_mask`) and seals
   their sum ``D_t = Σ μ_i`` to the contributors (:func:`seal_mask_sum`), naming every
   contributor's ``y`` digest in the binding (:class:`MaskedReleaseBinding`) and signing
   the release statement (:func:`release_statement`).
4. A contributor downloads its bundle and the listed uploads, checks each against its
   digest, and computes ``E_{t+1} = E_t + Σ y_i - D_t`` (:func:`next_model`), refusing a
   model beyond the job's bound ``B_W``.

The KGC never sees a ``y`` or ``Z``; the PS never sees a seed or a mask; no single
contributor's mask leaves the KGC. docs/SECURITY.md §7 gives the argument. Pure: no
Flask, no database.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trapdoor.crypto.bcp import Ciphertext, MasterKey, PublicKey, RandomSource, SecretKey
from trapdoor.crypto.blocks import JobKey
from trapdoor.crypto.encoding import ClipReport, EncodingError, check_json_keys, clip_values
from trapdoor.crypto.masking import (
    MaskContext,
    RingSpec,
    RingVector,
    choose_ring,
    decode_ring,
    derive_mask,
    encode_ring,
    open_seeds,
    ring_sum,
    unmask,
    vector_from_bytes,
    vector_to_bytes,
)
from trapdoor.crypto.sealing import (
    RandomBytes,
    open_bytes,
    seal_bytes,
    unwrap_data_key,
    wrap_data_key,
)
from trapdoor.crypto.signing import SignatureError, canonical_json, sign_json, verify_json
from trapdoor.crypto.wire import RING_FRAME_KIND, decode_frame, from_hex, to_hex
from trapdoor.protocol.messages import (
    JobTerms,
    ProtocolError,
    UndecodedRelease,
    _check_rerun,
    _one_per_contributor,
    _statement_base,
    _verify_participant_signed,
    digest_equal,
    is_json_int,
    json_sha256,
    kgc_key_id,
    release_contributors,
    release_round,
    request_run,
)

__all__ = [
    "MASKED_LAYOUT_KIND",
    "MASKED_RELEASE_PURPOSE",
    "MASKED_UPLOAD_PURPOSE",
    "MaskedLayout",
    "MaskedReleaseBinding",
    "MaskedReleaseCheck",
    "build_masked_upload_statement",
    "check_masked_release_request",
    "encode_update",
    "initial_state",
    "initial_state_sha256",
    "kgc_mask_sum",
    "listed_uploads",
    "mask_context",
    "masked_layout",
    "masked_release_request_header",
    "next_model",
    "open_mask_sum",
    "release_statement",
    "seal_mask_sum",
    "seed_from_obj",
    "seed_sha256",
    "seed_to_obj",
    "verify_masked_upload_statement",
    "verify_release_statement",
]

MASKED_UPLOAD_PURPOSE = "trapdoor/masked-upload/v1"
MASKED_RELEASE_PURPOSE = "trapdoor/masked-release/v1"
MASKED_LAYOUT_KIND = "ring"
#: Released models are kept as float64 by participants and re-encoded each round, which is
#: exact only while every fixed-point value is below 2^53 in magnitude; keep a bit spare.
EXACT_FLOAT_BITS = 52
_LAYOUT_KEYS = frozenset({"kind", "bits", "frac_bits", "length", "model_bound", "clip_bound"})


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class MaskedLayout:
    """What a masked job's vectors are: the ring, fixed point, length and bounds.

    ``model_bound`` is ``B_W``: every contributor checks ``|W_t| <= B_W`` each round and
    stops otherwise, which with ``clip_bound`` is what the ring size was chosen for
    (:func:`trapdoor.crypto.masking.choose_ring`). Served as the job's ``packing`` and signed into
    the terms by its digest.
    """

    ring: RingSpec
    length: int
    model_bound: float
    clip_bound: float

    @property
    def payload_bytes(self) -> int:
        """Bytes of one ``y`` (and of ``Z``, and of the sealed ``D``)."""
        return self.length * self.ring.byte_width

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": MASKED_LAYOUT_KIND,
            "bits": self.ring.bits,
            "frac_bits": self.ring.frac_bits,
            "length": self.length,
            "model_bound": self.model_bound,
            "clip_bound": self.clip_bound,
        }

    @classmethod
    def from_json(cls, obj: object) -> MaskedLayout:
        """Inverse of :meth:`to_json`; strict (exact keys and types)."""
        if not isinstance(obj, dict):
            raise EncodingError("a masked layout is an object")
        check_json_keys(obj, _LAYOUT_KEYS, "masked layout")
        if obj["kind"] != MASKED_LAYOUT_KIND:
            raise EncodingError(f"a masked layout has kind {MASKED_LAYOUT_KIND!r}")
        for name in ("bits", "frac_bits", "length"):
            if not is_json_int(obj[name]):
                raise EncodingError(f"{name} must be a JSON integer")
        for name in ("model_bound", "clip_bound"):
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EncodingError(f"{name} must be a number")
            if not (math.isfinite(value) and value > 0):
                raise EncodingError(f"{name} must be finite and > 0")
        if obj["length"] < 1:
            raise EncodingError("length must be at least 1")
        layout = cls(
            ring=RingSpec(bits=obj["bits"], frac_bits=obj["frac_bits"]),
            length=int(obj["length"]),
            model_bound=float(obj["model_bound"]),
            clip_bound=float(obj["clip_bound"]),
        )
        layout.check_fits(participants=1, rounds=1)
        return layout

    def check_fits(self, *, participants: int, rounds: int) -> None:
        """Refuse a layout whose ring is smaller than its bounds need for ``participants``
        and ``rounds`` (:func:`trapdoor.crypto.masking.choose_ring`), or that float64 cannot hold.

        A participant calls it with the signed terms' counts: a PS that serves a ring too
        small for the bounds would let an in-range sum wrap and decode to a wrong model
        that still passes the bound check.
        """
        needed = masked_layout(
            length=self.length,
            frac_bits=self.ring.frac_bits,
            model_bound=self.model_bound,
            clip_bound=self.clip_bound,
            participants=participants,
            rounds=rounds,
        )
        if needed.ring.bits > self.ring.bits:
            raise EncodingError(
                f"a {self.ring.bits}-bit ring cannot hold these bounds: "
                f"{needed.ring.bits} bits are needed"
            )


def masked_layout(
    *,
    length: int,
    frac_bits: int,
    model_bound: float,
    clip_bound: float,
    participants: int,
    rounds: int,
) -> MaskedLayout:
    """The layout of a new masked job: the smallest ring its bounds can never wrap in.

    Raises :class:`EncodingError` when even 64 bits do not fit, or when a model value
    could not round-trip exactly through float64 (participants keep models as float64).
    """
    if not is_json_int(length) or length < 1:
        raise EncodingError("length must be an integer >= 1")
    ring = choose_ring(
        model_bound=model_bound,
        clip_bound=clip_bound,
        frac_bits=frac_bits,
        participants=participants,
        rounds=rounds,
    )
    if (model_bound + clip_bound) * 2.0**frac_bits >= 2.0**EXACT_FLOAT_BITS:
        raise EncodingError(
            f"(model_bound + clip_bound)·2^frac_bits must stay below 2^{EXACT_FLOAT_BITS} "
            "so that models round-trip exactly through float64"
        )
    return MaskedLayout(ring, int(length), float(model_bound), float(clip_bound))


def encode_update(
    update: npt.ArrayLike, layout: MaskedLayout, weight: float
) -> tuple[RingVector, ClipReport]:
    """``encode(w·clip(Δ))``: what a contributor masks. ``0 < w <= 1``, so one term stays
    within ``±clip_bound``, the headroom the ring was chosen for."""
    if isinstance(weight, bool) or not (math.isfinite(weight) and 0 < weight <= 1):
        raise EncodingError("the weight must be in (0, 1]")
    clipped, report = clip_values(update, layout.clip_bound)
    if clipped.shape != (layout.length,):
        raise EncodingError(f"the update must have {layout.length} values, got {clipped.shape}")
    return encode_ring(clipped * float(weight), layout.ring), report


def initial_state(layout: MaskedLayout, initial_weights: npt.ArrayLike) -> RingVector:
    """``Z_0 = E_0 = encode(W_0)``: ``W_0`` is public, so the first masked model is bare."""
    weights = np.asarray(initial_weights, dtype=np.float64)
    if weights.shape != (layout.length,):
        raise EncodingError(f"W_0 must have {layout.length} values, got {weights.shape}")
    if float(np.abs(weights).max(initial=0.0)) > layout.model_bound:
        raise EncodingError(f"W_0 exceeds the model bound ±{layout.model_bound}")
    return encode_ring(weights, layout.ring)


def initial_state_sha256(layout: MaskedLayout, initial_weights: npt.ArrayLike) -> str:
    """Digest of ``Z_0``'s bytes (signed into the terms as ``initial_ciphertext_sha256``)."""
    data = vector_to_bytes(initial_state(layout, initial_weights), layout.ring)
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- seeds


def seed_to_obj(ciphertext: Ciphertext) -> dict[str, str]:
    """``Enc(s)`` on the wire: only ``A`` and ``B``; the key is always the job key's first
    component, so a ciphertext cannot name another."""
    return {"A": to_hex(int(ciphertext.A)), "B": to_hex(int(ciphertext.B))}


def seed_from_obj(obj: object, job_key: JobKey) -> Ciphertext:
    """Parse a seed ciphertext under the job key; ``A`` and ``B`` must be in ``Z*_{N^2}``
    and spelled canonically (:func:`seed_to_obj`)."""
    if not isinstance(obj, dict) or set(obj) != {"A", "B"}:
        raise ProtocolError("bad-seed", 'a seed ciphertext is {"A", "B"} (hex)')
    try:
        seed = Ciphertext(
            job_key.component(0), from_hex(obj["A"], what="A"), from_hex(obj["B"], what="B")
        )
    except ValueError as exc:
        raise ProtocolError("bad-seed", f"seed ciphertext: {exc}") from None
    if seed_to_obj(seed) != obj:
        # one spelling per ciphertext, so that its digest (what statements sign, and what
        # replay and duplicate checks compare) names exactly one seed
        raise ProtocolError("bad-seed", "A and B must be lowercase hex without 0x or zeros")
    return seed


def seed_sha256(obj: Mapping[str, Any]) -> str:
    """What a statement names: SHA-256 of the canonical JSON of ``{"A", "B"}``."""
    return json_sha256(dict(obj))


def mask_context(
    terms: JobTerms, layout: MaskedLayout, *, round_number: int, run: int, signer: str
) -> MaskContext:
    """The HKDF info of one contributor's mask in one round and run (attempt is 0)."""
    return MaskContext(
        job_id=terms.job_id,
        job_terms_sha256=terms.digest,
        round=round_number,
        run=run,
        attempt=0,
        signer=signer,
        length=layout.length,
        ring_bits=layout.ring.bits,
    )


# --------------------------------------------------------------------------- uploads


def build_masked_upload_statement(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    payload_sha256: str,
    seed_sha256: str,
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed statement: this ``y`` and this seed are its upload.

    The KGC decrypts a seed only for a contributor whose statement names it, and the
    contributors sum exactly the ``y`` the statements name (the KGC lists them in the
    release), so the PS can neither swap an upload nor shift the model.
    """
    body = {
        **_statement_base(terms, MASKED_UPLOAD_PURPOSE, round_number, subject_id, run),
        "payload_sha256": payload_sha256,
        "seed_sha256": seed_sha256,
    }
    return {"statement": body, "signature": sign_json(signing_key, body)}


def verify_masked_upload_statement(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    run: int,
    subject_id: str | None = None,
    payload_sha256: str | None = None,
    seed_sha256: str | None = None,
) -> dict[str, Any]:
    """Check a masked upload statement against the terms (and the given digests)."""
    body = _verify_participant_signed(
        signed,
        "statement",
        terms,
        MASKED_UPLOAD_PURPOSE,
        round_number=round_number,
        subject_id=subject_id,
        digests=("payload_sha256", "seed_sha256"),
        run=run,
    )
    if payload_sha256 is not None and not digest_equal(body["payload_sha256"], payload_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another payload")
    if seed_sha256 is not None and not digest_equal(body["seed_sha256"], seed_sha256):
        raise ProtocolError("statement-mismatch", "the statement names another seed")
    return body


# --------------------------------------------------------------------------- release request


def masked_release_request_header(
    *,
    job_id: str,
    round_number: int,
    run: int,
    layout: MaskedLayout,
    uploads: Sequence[Mapping[str, Any]],
    undecodable: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What a PS sends the KGC (as JSON, signed whole as ``request_signature``).

    ``uploads`` are ``{"statement": signed statement, "seed": seed object}``, one per
    contributor, sorted by subject id; ``undecodable`` as for the bcp mode. ``layout``
    tells the KGC the ring and length (the terms sign its digest as ``packing_sha256``).
    """
    ordered = sorted(
        ({"statement": dict(u["statement"]), "seed": dict(u["seed"])} for u in uploads),
        key=lambda u: str(u["statement"]["statement"]["subject_id"]),
    )
    return {
        "job_id": job_id,
        "aggregation": "masked",
        "round": int(round_number),
        "run": int(run),
        "layout": layout.to_json(),
        "contributors": [str(u["statement"]["statement"]["subject_id"]) for u in ordered],
        "uploads": ordered,
        "undecodable": [dict(u) for u in undecodable],
    }


@dataclass(frozen=True)
class MaskedReleaseCheck:
    """A masked release request that passed every check."""

    round: int
    run: int
    layout: MaskedLayout
    contributors: tuple[str, ...]
    #: subject id -> SHA-256 of its ``y``, as its statement signs it
    payloads: Mapping[str, str]
    #: subject id -> its seed ciphertext under the job key
    seeds: Mapping[str, Ciphertext]


def check_masked_release_request(
    header: Mapping[str, Any],
    terms: JobTerms,
    *,
    next_round: int,
    undecoded: UndecodedRelease | None = None,
) -> MaskedReleaseCheck:
    """The KGC's checks before it decrypts any seed (the PS signature is checked first).

    Schedule (round ``t`` only for ``0 <= t < rounds``, exactly the next one), run (0, or
    1 only to re-run the newest release's set with every contributor's report, as in the
    bcp mode), contributors (distinct participants, at least the quorum), and per
    contributor one statement for this round and run naming exactly the seed ciphertext
    sent with it. Seeds must be distinct: one ciphertext cannot count twice.
    """
    if header.get("aggregation") != "masked":
        raise ProtocolError("bad-field", "this job's releases are masked")
    round_number = release_round(header, terms, next_round=next_round)
    run = request_run(header)
    layout_obj = header.get("layout")
    if terms.aggregation != "masked" or json_sha256(layout_obj) != terms.packing_sha256:
        raise ProtocolError("job-mismatch", "the layout is not the one the terms sign")
    try:
        layout = MaskedLayout.from_json(layout_obj)
    except EncodingError as exc:
        raise ProtocolError("job-mismatch", f"layout: {exc}") from None
    contributors = release_contributors(header, terms)
    _check_rerun(header, terms, round_number, run, contributors, undecoded)
    uploads = header.get("uploads")
    if not isinstance(uploads, list) or not all(isinstance(u, dict) for u in uploads):
        raise ProtocolError("bad-field", "uploads must be a list of objects")

    def verify(upload: dict[str, Any]) -> dict[str, Any]:
        seed_obj = upload.get("seed")
        if not isinstance(seed_obj, dict):
            raise ProtocolError("bad-seed", "every upload carries its seed ciphertext")
        return verify_masked_upload_statement(
            upload.get("statement"),
            terms,
            round_number=round_number,
            run=run,
            seed_sha256=seed_sha256(seed_obj),
        )

    statements = _one_per_contributor(uploads, contributors, "statement", verify)
    seeds: dict[str, Ciphertext] = {}
    for upload in uploads:
        subject = str(upload["statement"]["statement"]["subject_id"])
        seeds[subject] = seed_from_obj(upload["seed"], terms.job_key)
    if len({(int(c.A), int(c.B)) for c in seeds.values()}) != len(seeds):
        raise ProtocolError("duplicate-seed", "two contributors sent the same seed ciphertext")
    payloads = {s: str(statements[s]["payload_sha256"]) for s in sorted(statements)}
    return MaskedReleaseCheck(
        round_number, run, layout, tuple(sorted(contributors)), payloads, seeds
    )


# --------------------------------------------------------------------------- the KGC's part


def kgc_mask_sum(master: MasterKey, terms: JobTerms, check: MaskedReleaseCheck) -> RingVector:
    """``D_t = Σ μ_i``: every seed decrypted under the job key, never branched on.

    :func:`trapdoor.crypto.masking.open_seed` ignores whatever key a ciphertext names, and the
    full-width value goes straight into HKDF (:func:`trapdoor.crypto.masking.mask_key`), so a
    tampered seed gives an unrelated mask and no signal about the honest one.
    """
    job_key_0: PublicKey = terms.job_key.component(0)
    n = int(terms.job_key.params.n)
    layout = check.layout
    values = open_seeds(master, job_key_0, [check.seeds[s] for s in check.contributors])
    masks = []
    for subject, value in zip(check.contributors, values, strict=True):
        context = mask_context(
            terms, layout, round_number=check.round, run=check.run, signer=subject
        )
        masks.append(derive_mask(value, n, context, layout.ring))
    return ring_sum(masks, layout.ring, layout.length)


@dataclass(frozen=True)
class MaskedReleaseBinding:
    """What a sealed mask sum is bound to (AES-GCM associated data), and what it lists.

    ``uploads`` maps each contributor to the SHA-256 of the ``y`` its statement signed:
    the contributors sum exactly those, so the PS cannot add or swap anything in ``Z``.
    """

    job_id: str
    job_terms_sha256: str
    round: int
    run: int
    uploads: Mapping[str, str]

    def fields(self) -> dict[str, Any]:
        return {
            "aggregation": "masked",
            "job_id": self.job_id,
            "job_terms_sha256": self.job_terms_sha256,
            "round": self.round,
            "run": self.run,
            "uploads": dict(sorted(self.uploads.items())),
        }

    def context(self) -> bytes:
        return b"trapdoor-masked-release/v1|" + canonical_json(self.fields())

    @property
    def contributors(self) -> list[str]:
        return sorted(self.uploads)

    @classmethod
    def from_fields(cls, bundle: Mapping[str, Any]) -> MaskedReleaseBinding:
        """The binding a bundle names (``ValueError`` on a malformed field)."""
        uploads = bundle.get("uploads")
        if (
            bundle.get("aggregation") != "masked"
            or not isinstance(uploads, dict)
            or not uploads
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in uploads.items())
            or not is_json_int(bundle.get("round"))
            or not is_json_int(bundle.get("run"))
            or not isinstance(bundle.get("job_id"), str)
            or not isinstance(bundle.get("job_terms_sha256"), str)
        ):
            raise ValueError("the bundle lacks its masked-release binding")
        return cls(
            job_id=str(bundle["job_id"]),
            job_terms_sha256=str(bundle["job_terms_sha256"]),
            round=int(bundle["round"]),
            run=int(bundle["run"]),
            uploads=dict(uploads),
        )


def release_statement(
    binding: MaskedReleaseBinding, sealed_mask: Any, wrapped_keys: Mapping[str, Any], kgc_id: str
) -> dict[str, Any]:
    """What the KGC signs about a masked release: binding, sealed sum, each wrapped key.

    Wrapped keys are named by digest, so a contributor that receives only its own can
    still check the KGC's signature: a PS cannot forge a bundle (its own data key wrapped
    to a contributor) and so cannot choose anyone's model.
    """
    return {
        "purpose": MASKED_RELEASE_PURPOSE,
        "kgc_key_id": kgc_id,
        **binding.fields(),
        "sealed_mask_sha256": json_sha256(sealed_mask),
        "wrapped_keys_sha256": {s: json_sha256(w) for s, w in sorted(wrapped_keys.items())},
    }


def seal_mask_sum(
    kgc_key: Ed25519PrivateKey,
    master: MasterKey,
    mask_sum: RingVector,
    layout: MaskedLayout,
    contributors: Mapping[str, PublicKey],
    *,
    binding: MaskedReleaseBinding,
    rng: RandomSource,
    random_bytes: RandomBytes,
) -> dict[str, Any]:
    """The bundle: ``D_t`` under a fresh AES-256-GCM key wrapped for each contributor.

    ``release_signature`` signs :func:`release_statement`; the bundle carries the
    digests of every wrapped key so that each contributor can check it.
    """
    if sorted(contributors) != binding.contributors:
        raise ValueError("the wrapped keys must be exactly the listed contributors")
    context = binding.context()
    data_key = random_bytes(32)
    sealed = seal_bytes(
        data_key, vector_to_bytes(mask_sum, layout.ring), context, random_bytes=random_bytes
    )
    wrapped = {
        subject: wrap_data_key(
            key, data_key, context, rng, random_bytes=random_bytes, encrypt=master.encrypt_for
        )
        for subject, key in sorted(contributors.items())
    }
    statement = release_statement(binding, sealed, wrapped, kgc_key_id(kgc_key))
    return {
        **binding.fields(),
        "sealed_mask": sealed,
        "wrapped_keys": wrapped,
        "wrapped_keys_sha256": statement["wrapped_keys_sha256"],
        "release_signature": sign_json(kgc_key, statement),
    }


# --------------------------------------------------------------------------- a contributor's part


def verify_release_statement(
    kgc_verify_key: Ed25519PublicKey,
    bundle: Mapping[str, Any],
    *,
    subject_id: str,
) -> MaskedReleaseBinding:
    """Check a contributor's view of a masked bundle against the KGC's signature.

    The view carries the binding fields, ``sealed_mask``, this contributor's
    ``wrapped_key`` and every wrapped key's digest; the digest of ours must be the one
    the KGC signed. Raises :class:`ProtocolError` ``bad-release``.
    """
    try:
        binding = MaskedReleaseBinding.from_fields(bundle)
    except ValueError as exc:
        raise ProtocolError("bad-release", str(exc)) from None
    digests = bundle.get("wrapped_keys_sha256")
    if not isinstance(digests, dict) or sorted(digests) != binding.contributors:
        raise ProtocolError("bad-release", "the bundle must name every contributor's wrapped key")
    if not digest_equal(digests.get(subject_id), json_sha256(bundle.get("wrapped_key"))):
        raise ProtocolError("bad-release", "our wrapped key is not the one the KGC signed")
    statement = {
        "purpose": MASKED_RELEASE_PURPOSE,
        "kgc_key_id": kgc_key_id(kgc_verify_key),
        **binding.fields(),
        "sealed_mask_sha256": json_sha256(bundle.get("sealed_mask")),
        "wrapped_keys_sha256": dict(sorted(digests.items())),
    }
    try:
        verify_json(kgc_verify_key, statement, bundle.get("release_signature"))
    except SignatureError:
        raise ProtocolError("bad-release", "the release is not signed by the pinned KGC") from None
    return binding


def open_mask_sum(
    secret_key: SecretKey,
    binding: MaskedReleaseBinding,
    sealed_mask: Any,
    wrapped_key: Any,
    layout: MaskedLayout,
) -> RingVector:
    """Unwrap the data key with our own key and open ``D_t`` (``SealError`` otherwise)."""
    context = binding.context()
    data_key = unwrap_data_key(secret_key, wrapped_key, context)
    return vector_from_bytes(open_bytes(data_key, sealed_mask, context), layout.ring, layout.length)


def listed_uploads(
    binding: MaskedReleaseBinding,
    layout: MaskedLayout,
    fetch_upload: Callable[[str], bytes],
) -> list[RingVector]:
    """Every upload the release lists, fetched (``fetch_upload(subject)`` gives the frame
    the PS serves) and checked against the digest the KGC signed; ProtocolError
    ``upload-mismatch`` otherwise. What a contributor sums instead of trusting ``Z``."""
    vectors = []
    for subject, digest in sorted(binding.uploads.items()):
        try:
            frame = decode_frame(fetch_upload(subject), kind=RING_FRAME_KIND)
            if not digest_equal(frame.header.get("sha256"), digest):
                raise ValueError("not the upload the release lists")
            vectors.append(vector_from_bytes(frame.payload, layout.ring, layout.length))
        except ValueError as exc:
            raise ProtocolError("upload-mismatch", f"upload of {subject}: {exc}") from None
    return vectors


def next_model(
    layout: MaskedLayout,
    current: npt.ArrayLike,
    uploads: Sequence[RingVector],
    mask_sum: RingVector,
) -> npt.NDArray[np.float64]:
    """``W_{t+1} = decode(encode(W_t) + Σ y_i - D_t)``, refused beyond ``±B_W``.

    ``current`` is the contributor's own ``W_t`` (float64, exactly representable by the
    layout's check). Raises :class:`EncodingError` when the result leaves the bound: a
    garbage upload or a tampered seed makes the round's sum meaningless, and a model
    beyond ``B_W`` could already have wrapped the ring.
    """
    encoded = encode_ring(np.asarray(current, dtype=np.float64), layout.ring)
    total = ring_sum([encoded, *uploads], layout.ring, layout.length)
    model = decode_ring(unmask(total, mask_sum), layout.ring)
    largest = float(np.abs(model).max(initial=0.0))
    if not largest <= layout.model_bound:
        raise EncodingError(
            f"the released model reaches {largest:.6g}, beyond the job's bound "
            f"±{layout.model_bound}: a contribution was not a valid masked update"
        )
    return model
