"""What the Trapdoor strategy and mod put in Flower messages, and arrays <-> vectors.

A ``train`` or ``evaluate`` message from :class:`~trapdoor.flower.server.TrapdoorFedAvg`
carries an empty ``arrays`` record and, in its ``config`` record, where the round's job
is (:data:`JOB_ID`, :data:`PS_URL`, :data:`PS_SUBJECT`) and which protocol round it is
(:data:`ROUND`, Flower's server round minus one). A ``train`` message with
:data:`HELLO` in its config asks a node who it is at the KGC. A train reply carries
``metrics`` and a :data:`REPLY` config record with the PS-signed receipt, and no
``arrays``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from trapdoor.ml.arrays import ArrayLayout

__all__ = [
    "HELLO",
    "JOB_ID",
    "NUM_EXAMPLES",
    "PHASE",
    "PS_SUBJECT",
    "PS_URL",
    "REPLY",
    "ROUND",
    "SUBJECT_ID",
    "arrays_of",
    "layout_of",
    "record_of",
]

JOB_ID = "trapdoor.job-id"
PS_URL = "trapdoor.ps-url"
PS_SUBJECT = "trapdoor.ps-subject-id"
ROUND = "trapdoor.round"
HELLO = "trapdoor.hello"
#: A bcp round's later steps, sent as ``train`` messages the mod answers itself:
#: ``"upload"`` (after the commitment set closed) and ``"audit"`` (after aggregation).
PHASE = "trapdoor.phase"
#: The config record of a mod's reply: the receipt (train) or who the node is (hello).
REPLY = "trapdoor"
SUBJECT_ID = "subject-id"
#: Flower's own key for the example count that FedAvg weights by.
NUM_EXAMPLES = "num-examples"


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays by name, in order (numpy copies)."""
    return {name: array.numpy() for name, array in record.items()}


def record_of(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` of these named arrays, in order."""
    return ArrayRecord(
        array_dict={
            name: Array.from_numpy_ndarray(np.ascontiguousarray(a)) for name, a in arrays.items()
        }
    )


def layout_of(record: ArrayRecord) -> ArrayLayout:
    """The job layout (:mod:`trapdoor.ml.arrays`) of a Flower model's arrays."""
    return ArrayLayout.of(arrays_of(record))
