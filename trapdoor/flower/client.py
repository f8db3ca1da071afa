"""The client side: a Flower mod that trains inside the Trapdoor protocol.

``ClientApp(mods=[trapdoor_mod])`` is all a Flower app adds (Flower's own
``secaggplus_mod`` is added the same way). The mod runs around the app's unchanged
``train`` and ``evaluate`` functions:

- ``train`` for protocol round ``t``: it obtains ``W_t`` (round 0: the job's signed
  initial weights; later: the release of round ``t - 1``, which the KGC sealed to this
  node only if it contributed to that round), gives it to the app as the message's
  ``arrays``, and masks the app's ``new - W_t`` with a fresh seed sealed under the job's
  key (:meth:`~trapdoor.participant.client.ParticipantClient.prepare_masked_update`,
  the same code as a Trapdoor node's). It uploads the result to the PS and answers
  Flower with the app's metrics and the PS-signed receipt, never with parameters;
- ``evaluate`` after round ``t``: it opens the round's release and lets the app evaluate
  it; the reply keeps only metrics;
- a ``train`` message with ``trapdoor.hello`` in its config (before the job exists): it
  says which KGC subject this node is, without calling the app. (A ``train`` message,
  because Flower runs mods only around a function the app registered, and every
  quickstart app registers ``train``.)

Which identity a node uses: ``node_config["trapdoor-identity"]`` (a sealed identity
file, :mod:`trapdoor.flower.identities`), else ``run_config["trapdoor-identity-dir"]``
joined with the node's ``partition-id`` (a simulation); the passphrase comes from the
``TRAPDOOR_FLOWER_PASSPHRASE`` environment variable (``TRAPDOOR_FLOWER_IDENTITY_DIR``
stands in for the run config's folder under ``run_simulation``, which takes no run
config). The node's own copy of the model it opened stays in its ``Context.state``
(``trapdoor.model``), on the node.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict

from trapdoor.crypto.blocks import BlockLayout, EncryptedVector
from trapdoor.flower.identities import PASSPHRASE_ENV, participant_for
from trapdoor.flower.messages import (
    HELLO,
    JOB_ID,
    NUM_EXAMPLES,
    PHASE,
    PS_SUBJECT,
    PS_URL,
    REPLY,
    ROUND,
    SUBJECT_ID,
    arrays_of,
    record_of,
)
from trapdoor.ml.arrays import ArrayLayout
from trapdoor.participant.client import ClientError, JobView, ParticipantClient, PreparedUpload
from trapdoor.protocol.job import DEFAULT_MIN_QUORUM
from trapdoor.service.http import ServiceError

__all__ = ["TrapdoorModError", "trapdoor_mod"]

log = logging.getLogger(__name__)

#: ``Context.state`` keys: the model this node holds and which version it is.
_MODEL = "trapdoor.model"
_HELD = "trapdoor.held"
#: A bcp round's committed ciphertext, between the commit and the upload and audit.
_PENDING = "trapdoor.pending"
#: The identity folder when the run config names none.
IDENTITY_DIR_ENV = "TRAPDOOR_FLOWER_IDENTITY_DIR"
#: The smallest job quorum this node accepts, when its node config says none.
MIN_QUORUM_ENV = "TRAPDOOR_FLOWER_MIN_QUORUM"
#: Flower error codes of the mod's refusals (Flower's own are below 100).
ERROR_CODE = 7100

Vector = npt.NDArray[np.float64]
CallNext = Callable[[Message, Context], Message]


class TrapdoorModError(RuntimeError):
    """The mod cannot take part in this round (the reason goes back to the server)."""


def _identity_path(context: Context) -> Path:
    node = context.node_config
    if "trapdoor-identity" in node:
        return Path(str(node["trapdoor-identity"]))
    folder = context.run_config.get("trapdoor-identity-dir") or os.environ.get(IDENTITY_DIR_ENV)
    if folder is None or "partition-id" not in node:
        raise TrapdoorModError(
            "this node has no Trapdoor identity: set node_config 'trapdoor-identity' "
            "(a sealed identity file) or run_config 'trapdoor-identity-dir'"
        )
    return Path(str(folder)) / f"{int(node['partition-id'])}.json"


def _participant(context: Context) -> ParticipantClient:
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        raise TrapdoorModError(f"set {PASSPHRASE_ENV}: it opens this node's identity")
    min_quorum = int(
        context.node_config.get("trapdoor-min-quorum")
        or os.environ.get(MIN_QUORUM_ENV)
        or DEFAULT_MIN_QUORUM
    )
    return participant_for(_identity_path(context), passphrase, min_quorum=min_quorum)


class _Held:
    """The model version this node holds for a job, in its ``Context.state``."""

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def get(self, job_id: str) -> tuple[int, Vector] | None:
        held = self.state.get(_HELD)
        if not isinstance(held, ConfigRecord) or held.get("job-id") != job_id:
            return None
        record = self.state[_MODEL]
        assert isinstance(record, ArrayRecord)
        return int(held["version"]), record["w"].numpy()  # type: ignore[arg-type]

    def put(self, job_id: str, version: int, weights: Vector) -> None:
        self.state[_MODEL] = record_of({"w": np.asarray(weights, dtype=np.float64)})
        self.state[_HELD] = ConfigRecord({"job-id": job_id, "version": version})


class _Pending:
    """A bcp round's committed upload, kept in ``Context.state`` between its messages
    (a simulation may run the next one in another worker process)."""

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def put(self, job: JobView, prepared: PreparedUpload) -> None:
        self.state[_PENDING] = ConfigRecord(
            {
                "job-id": job.job_id,
                "round": prepared.round,
                "run": prepared.run,
                "payload-sha256": prepared.payload_sha256,
                "vector": prepared.vector.to_bytes(),
                "randomness": [str(r) for r in prepared.randomness],
                "metrics": json.dumps(prepared.metrics),
            }
        )

    def get(self, job: JobView, t: int) -> PreparedUpload:
        pending = self.state.get(_PENDING)
        if (
            not isinstance(pending, ConfigRecord)
            or pending.get("job-id") != job.job_id
            or pending.get("round") != t
        ):
            raise TrapdoorModError(f"this node committed nothing in round {t} of {job.job_id}")
        vector = EncryptedVector.from_bytes(
            job.job_key,
            BlockLayout(job.terms.num_plaintexts, job.terms.width),
            pending["vector"],  # type: ignore[arg-type]
        )
        return PreparedUpload(
            t,
            vector,
            str(pending["payload-sha256"]),
            json.loads(str(pending["metrics"])),
            [int(r) for r in pending["randomness"]],  # type: ignore[union-attr]
            int(pending["run"]),  # type: ignore[arg-type]
        )


class _Answered:
    """The app's answer as a :class:`~trapdoor.participant.app.NumPyApp`, so the update is
    checked and masked by the client's own code."""

    def __init__(self, new: Vector, num_examples: int, metrics: dict[str, float]) -> None:
        self.answer = (new, num_examples, metrics)

    def fit(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[Vector, int, dict[str, float]]:
        return self.answer

    def evaluate(
        self, parameters: Vector, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        raise NotImplementedError


def _round_config(message: Message) -> ConfigRecord | None:
    config = message.content.get("config") if message.has_content() else None
    if isinstance(config, ConfigRecord) and JOB_ID in config:
        return config
    return None


def _job(participant: ParticipantClient, config: ConfigRecord) -> tuple[JobView, ArrayLayout]:
    subject = config.get(PS_SUBJECT)
    job = participant.fetch_job(
        str(config[PS_URL]), str(config[JOB_ID]), ps_subject_id=str(subject) if subject else None
    )
    if not isinstance(job.model, ArrayLayout):
        raise TrapdoorModError(f"job {job.job_id} is not a Flower (arrays) job")
    return job, job.model


def _model(participant: ParticipantClient, job: JobView, held: _Held, version: int) -> Vector:
    """``W_version``: the signed initial weights, the one we hold, or the release of round
    ``version - 1`` opened from the one before (contributors of that round only)."""
    if version == 0:
        return np.asarray(job.initial_weights, dtype=np.float64)
    have = held.get(job.job_id)
    if have is not None and have[0] == version:
        return have[1]
    if have is None or have[0] != version - 1:
        raise TrapdoorModError(
            f"this node holds no model of round {version - 1} of {job.job_id}: it did not "
            "contribute to it, so the KGC sealed that release to others only"
        )
    weights = participant.download_model(job.ps_url, job.job_id, version - 1, have[1])
    held.put(job.job_id, version, weights)
    return weights


def _metrics(reply: Message) -> tuple[int, dict[str, float]]:
    metrics = reply.content.get("metrics")
    if metrics is None or NUM_EXAMPLES not in metrics:
        raise TrapdoorModError(f"the app's train reply has no metrics with {NUM_EXAMPLES!r}")
    scalars = {
        k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != NUM_EXAMPLES
    }
    return int(metrics[NUM_EXAMPLES]), scalars  # type: ignore[arg-type]


def _train(
    message: Message, context: Context, call_next: CallNext, config: ConfigRecord
) -> Message:
    participant = _participant(context)
    job, layout = _job(participant, config)
    t = int(config[ROUND])  # type: ignore[arg-type]
    held = _Held(context)
    current = _model(participant, job, held, t)
    held.put(job.job_id, t, current)
    message.content["arrays"] = record_of(layout.split(current))
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    new = layout.flatten(arrays_of(reply.content["arrays"]))  # type: ignore[arg-type]
    num_examples, metrics = _metrics(reply)
    answered = _Answered(new, num_examples, metrics)
    said: dict[str, Any]
    if job.aggregation == "masked":
        masked = participant.prepare_masked_update(job, t, current, app=answered)
        said = {"receipt": json.dumps(participant.upload_masked(job, masked), sort_keys=True)}
    else:  # bcp: commit now; the upload and the audit come as their own messages
        prepared = participant.prepare_update(job, t, current, app=answered)
        participant.commit(job, prepared)
        _Pending(context).put(job, prepared)
        said = {"committed": prepared.payload_sha256}
    content = RecordDict({"metrics": reply.content["metrics"], REPLY: ConfigRecord(said)})
    return Message(content=content, reply_to=message)


def _phase(message: Message, context: Context, config: ConfigRecord) -> Message:
    """A bcp round's upload (the commitment set has closed) or audit (the PS aggregated):
    the mod's own steps, the app is not called."""
    participant = _participant(context)
    job, _ = _job(participant, config)
    t = int(config[ROUND])  # type: ignore[arg-type]
    prepared = _Pending(context).get(job, t)
    said: dict[str, Any]
    if config[PHASE] == "upload":
        closed = participant.closed_set(job, t, prepared.run)
        said = {"receipt": json.dumps(participant.upload(job, prepared, closed), sort_keys=True)}
    elif config[PHASE] == "audit":
        digests = participant.audit(job, t, own=prepared.vector)
        said = {"audited": digests.aggregate_sha256}
    else:
        raise TrapdoorModError(f"unknown phase {config[PHASE]!r}")
    return Message(content=RecordDict({REPLY: ConfigRecord(said)}), reply_to=message)


def _evaluate(
    message: Message, context: Context, call_next: CallNext, config: ConfigRecord
) -> Message:
    participant = _participant(context)
    job, layout = _job(participant, config)
    t = int(config[ROUND])  # type: ignore[arg-type]
    released = _model(participant, job, _Held(context), t + 1)
    message.content["arrays"] = record_of(layout.split(released))
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    # Evaluation answers metrics only: whatever arrays the app added stay here.
    content = RecordDict({k: v for k, v in reply.content.items() if not isinstance(v, ArrayRecord)})
    return Message(content=content, reply_to=message)


def _hello(message: Message, context: Context) -> Message:
    participant = _participant(context)
    answer = ConfigRecord({SUBJECT_ID: participant.identity.subject_id})
    examples = context.node_config.get("trapdoor-num-examples")
    if examples is not None:
        answer[NUM_EXAMPLES] = int(examples)
    return Message(content=RecordDict({REPLY: answer}), reply_to=message)


def trapdoor_mod(message: Message, context: Context, call_next: CallNext) -> Message:
    """The Flower mod (``ClientApp(mods=[trapdoor_mod])``); messages without Trapdoor's
    config pass through unchanged."""
    try:
        kind = message.metadata.message_type
        config = message.content.get("config") if message.has_content() else None
        if kind == MessageType.TRAIN and isinstance(config, ConfigRecord) and HELLO in config:
            return _hello(message, context)
        round_config = _round_config(message)
        if round_config is None:
            return call_next(message, context)
        if kind == MessageType.TRAIN and PHASE in round_config:
            return _phase(message, context, round_config)
        if kind == MessageType.TRAIN:
            return _train(message, context, call_next, round_config)
        if kind == MessageType.EVALUATE:
            return _evaluate(message, context, call_next, round_config)
        return call_next(message, context)
    except (TrapdoorModError, ClientError, ServiceError, ValueError) as exc:
        reason = f"trapdoor: {type(exc).__name__}: {exc}"
        log.warning("%s", reason)
        return message.create_error_reply(Error(code=ERROR_CODE, reason=reason))
