"""What the signed protocol messages cost (issue 11): bytes and CPU per party.

``python -m bench.protocol_bench [--params N] [--k K]`` builds the job terms of an MLP with
``N`` parameters (default 109,386, the MNIST MLP) and prints, measured in one run:

- the participant's ``check_job_view`` (KGC signature + digests of what the PS serves,
  including recomputing the trivial ``Enc(W_0)``),
- signing one upload statement, and its size in the upload frame's header,
- the PS's check of one statement, and the KGC's check of a release request with ``K``
  contributors (schedule, quorum, the closed set of ``K`` commitments, ``K`` upload
  statements and ``K`` audits: ``3K + 1`` Ed25519 verifications), and the header's size.

The audit itself (downloads and the recomputation of ``Agg`` and ``F``) is measured by
``bench.round_bench``, against real services.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trapdoor.crypto.blocks import BlockLayout, generate_job_key
from trapdoor.crypto.demo_params import load_demo_master_key
from trapdoor.crypto.encoding import PackingLayout
from trapdoor.crypto.pok import prove_randomness, verify_randomness
from trapdoor.crypto.signing import b64encode, generate_signing_key, public_key_hex
from trapdoor.crypto.wire import to_obj
from trapdoor.protocol.audit import AuditDigests, build_audit_statement, contributors_sha256
from trapdoor.protocol.commitment import (
    build_closed_set,
    build_commitment,
    pok_context,
    verify_closed_set,
)
from trapdoor.protocol.job import (
    check_job_view,
    initial_ciphertext_sha256,
    requested_terms,
    sign_job_terms,
)
from trapdoor.protocol.release_request import check_release_request, release_request_header
from trapdoor.protocol.upload import build_upload_statement, verify_upload_statement


def _median_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=109_386)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    params = load_demo_master_key(2048).params
    kgc = generate_signing_key()
    subjects = [f"sub-{i:016x}" for i in range(args.k)]
    keys = {s: generate_signing_key() for s in subjects}
    weights = np.random.default_rng(0).normal(0, 0.1, args.params)
    definition = {
        "job_id": "bench-job",
        "model": {"kind": "mlp", "layer_sizes": [784, 128, 64, 10]},
        "initial_weights": b64encode(weights.astype("<f8").tobytes()),
        "training": {"learning_rate": 0.1},
        "participants": [{"subject_id": s, "num_samples": 100} for s in subjects],
        "quorum": 3,
        "rounds": 10,
    }
    packing = PackingLayout(modulus=int(params.n), length=args.params).to_json()
    public_weights = {s: 1 / args.k for s in subjects}
    job_key = to_obj(generate_job_key(params, 16, random.Random(1)))
    layout = PackingLayout.from_json(packing)
    requested = requested_terms(
        job_id="bench-job",
        definition=definition,
        packing=packing,
        weights=public_weights,
        width=16,
        num_plaintexts=layout.num_plaintexts,
        initial_ciphertext_sha256=initial_ciphertext_sha256(params, 16, layout, weights),
    )
    ps_key = generate_signing_key()
    signed, signature = sign_job_terms(
        kgc,
        requested,
        param_server="sub-ps",
        param_server_key=public_key_hex(ps_key),
        signing_keys={s: public_key_hex(k) for s, k in keys.items()},
        job_key=job_key,
    )
    view = {
        "job_id": "bench-job",
        "definition": definition,
        "packing": packing,
        "weights": public_weights,
        "job_key": job_key,
        "job_terms": signed,
        "job_terms_signature": signature,
    }
    terms = check_job_view(view, kgc.public_key(), params)
    payloads = {s: hashlib.sha256(s.encode()).hexdigest() for s in subjects}
    closed_set = build_closed_set(
        ps_key,
        terms,
        round_number=0,
        commitments=[
            build_commitment(keys[s], terms, round_number=0, subject_id=s, payload_sha256=d)
            for s, d in payloads.items()
        ],
        closed_at=0,
    )
    closed = verify_closed_set(closed_set, terms, round_number=0)
    blocks = BlockLayout(terms.num_plaintexts, terms.width).num_blocks
    rng = random.Random(3)
    randomness = {s: [params.random_exponent(rng) for _ in range(blocks)] for s in subjects}
    context = pok_context(terms, 0, closed.digest)
    proofs = {s: prove_randomness(params, randomness[s], context, s, rng) for s in subjects}
    n2 = int(params.nsquare)
    current_a = [
        pow(int(params.g), sum(int(randomness[s][b]) for s in subjects), n2) for b in range(blocks)
    ]
    first_a = [pow(int(params.g), int(r), n2) for r in randomness[subjects[0]]]
    statements = [
        build_upload_statement(
            keys[s],
            terms,
            round_number=0,
            subject_id=s,
            payload_sha256=payloads[s],
            closed_set_sha256=closed.digest,
            randomness_proof=proofs[s].to_obj(),
        )
        for s in subjects
    ]
    release_digest = hashlib.sha256(b"F").hexdigest()
    digests = AuditDigests(
        attempt=0,
        closed_set_sha256=closed.digest,
        contributors_sha256=contributors_sha256(subjects),
        base_sha256=terms.initial_ciphertext_sha256,
        aggregate_sha256=hashlib.sha256(b"Agg").hexdigest(),
        release_sha256=release_digest,
        blind_sha256=hashlib.sha256(b"R").hexdigest(),
    )
    audits = [
        build_audit_statement(keys[s], terms, round_number=0, subject_id=s, digests=digests)
        for s in subjects
    ]
    header = release_request_header(
        job_id="bench-job",
        round_number=0,
        attempt=0,
        closed_set=closed_set,
        statements=statements,
        audits=audits,
    )
    digest = payloads[subjects[0]]
    rows = [
        (
            "participant: check_job_view (signature + digests of the served job)",
            _median_ms(lambda: check_job_view(view, kgc.public_key(), params), args.repeat),
        ),
        (
            "participant: sign one upload statement",
            _median_ms(
                lambda: build_upload_statement(
                    keys[subjects[0]],
                    terms,
                    round_number=0,
                    subject_id=subjects[0],
                    payload_sha256=digest,
                    closed_set_sha256=closed.digest,
                    randomness_proof=proofs[subjects[0]].to_obj(),
                ),
                args.repeat,
            ),
        ),
        (
            f"participant: prove knowledge of the randomness ({blocks} blocks)",
            _median_ms(
                lambda: prove_randomness(params, randomness[subjects[0]], context, "s", rng),
                args.repeat,
            ),
        ),
        (
            "PS: verify one randomness proof against the upload's A components",
            _median_ms(
                lambda: verify_randomness(
                    params,
                    proofs[subjects[0]],
                    context,
                    subjects[0],
                    a_components=first_a,
                    blocks=blocks,
                ),
                args.repeat,
            ),
        ),
        (
            "PS: verify one upload statement",
            _median_ms(
                lambda: verify_upload_statement(
                    statements[0],
                    terms,
                    round_number=0,
                    subject_id=subjects[0],
                    payload_sha256=digest,
                    closed_set_sha256=closed.digest,
                ),
                args.repeat,
            ),
        ),
        (
            "participant: sign one audit statement",
            _median_ms(
                lambda: build_audit_statement(
                    keys[subjects[0]],
                    terms,
                    round_number=0,
                    subject_id=subjects[0],
                    digests=digests,
                ),
                args.repeat,
            ),
        ),
        (
            f"KGC: check a release request with K={args.k} contributors",
            _median_ms(
                lambda: check_release_request(
                    header,
                    terms,
                    next_round=0,
                    base_sha256=terms.initial_ciphertext_sha256,
                    payload_sha256=release_digest,
                    previous_a=[1] * blocks,
                    current_a=current_a,
                ),
                args.repeat,
            ),
        ),
    ]
    statement_bytes = len(json.dumps(statements[0], separators=(",", ":")))
    header_bytes = len(json.dumps(header, separators=(",", ":")))
    print(f"Protocol messages, {args.params:,} parameters, 2048-bit N, K={args.k}")
    print(f"{'step':<72} {'median ms':>10}")
    for name, ms in rows:
        print(f"{name:<72} {ms:>10.3f}")
    print(f"{'signed upload statement in the frame header (bytes)':<72} {statement_bytes:>10}")
    print(f"{f'release request header, K={args.k} (bytes)':<72} {header_bytes:>10}")
    print(
        f"{'signed job terms served with the job view (bytes)':<72} {len(json.dumps(signed)):>10}"
    )


if __name__ == "__main__":
    main()
