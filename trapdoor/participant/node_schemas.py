"""The request and answer bodies of the participant node's operator API (docs/PROTOCOL.md).

Typed from what :mod:`trapdoor.participant.node_api` reads and
:class:`trapdoor.participant.node.ParticipantNode` returns; the views declare them with
:func:`trapdoor.service.web.documented`, and the node's ``/openapi.json`` is generated
from them.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict

from trapdoor.service.openapi import Constraint, open_object
from trapdoor.service.schemas import Count, Float64Base64, SignedReceipt, SubjectId

__all__ = [
    "EnrolRequest",
    "JoinRequest",
    "LatestModel",
    "NodeJob",
    "NodeJobStatus",
    "NodeRound",
    "NodeStatus",
]

#: Where the node calls out to: an ``http://`` or ``https://`` URL.
ServiceUrl = Annotated[str, Constraint(pattern="^https?://")]


class EnrolRequest(TypedDict):
    """``POST /v1/enrol``: the KGC and the enrolment the operator was given."""

    kgc_url: ServiceUrl
    subject_id: SubjectId
    code: str


class JoinRequest(TypedDict):
    """``POST /v1/jobs``: a job at a parameter server; rounds not to take part in."""

    ps_url: ServiceUrl
    job_id: str
    skip_rounds: NotRequired[list[Count]]
    #: pins the PS's subject id (else its ``/v1/info`` names it)
    ps_subject_id: NotRequired[Annotated[str, Constraint(min_length=1, max_length=128)]]


class NodeIdentity(TypedDict):
    """Whether the node is enrolled, and as whom at which KGC."""

    enrolled: bool
    subject_id: str | None
    kgc_url: str | None


class DataSummary(TypedDict):
    """The node's local data (``trapdoor.participant.node.LocalData.summary``)."""

    source: str
    num_train: Count
    num_test: Count
    num_features: Count


class NodeJob(TypedDict):
    """A joined (or refused) job: where, its status, the next round, the last error."""

    job_id: str
    ps_url: str
    ps_subject_id: str | None
    #: ``joined``, ``refused``, ``finished``, ``failed``, ...
    status: str
    next_round: Count
    holds_model: bool
    skip_rounds: list[Count]
    error: str | None
    #: the job definition's model spec (null for a refused job)
    model: dict[str, Any] | None
    #: whether this node reports its evaluation of each released model to the PS
    share_metrics: bool


class NodeStatus(TypedDict):
    """``GET /v1/status``: identity, local data and joined jobs."""

    identity: NodeIdentity
    data: DataSummary
    jobs: list[NodeJob]


@open_object
class NodeRound(TypedDict):
    """One round as the node saw it; its metrics (loss, clip report, timings, bytes,
    notes) are further fields, named by what recorded them."""

    round: Count
    status: str
    contributed: bool
    test_accuracy: float | None
    test_loss: float | None
    #: the PS's signed receipt of this node's upload, once it has one
    receipt: SignedReceipt | None


class NodeJobStatus(NodeJob):
    """``GET /v1/jobs/<job_id>``: the job and each round's metrics."""

    rounds: list[NodeRound]


class LatestModel(TypedDict):
    """``GET /v1/jobs/<job_id>/model``: the latest released model this node holds."""

    job_id: str
    round: Count
    weights: Float64Base64
