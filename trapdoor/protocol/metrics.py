"""Shared evaluation metrics: a contributor's signed report and their weighted average.

After round ``t`` is released, each contributor scores ``W_{t+1}`` on its own test rows
(its app's ``evaluate``: loss, example count, and metrics it defines). A job whose
definition says ``"share_metrics": true`` (signed by the KGC with the rest of the
definition, so every participant knows before joining) has each contributor send that
score to the PS, which shows the average over reporters weighted by their example
counts. The disclosure is small but real (one participant's loss and metrics on its own
test data, to the PS), which is why it is opt-in per job and off by default.

A report is a participant-signed statement (:class:`MetricsReport`) like an audit, so the
PS can show who said what and cannot invent a participant's score. Its own fields are
bounded here: at most :data:`MAX_METRICS` metrics with short names and finite values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trapdoor.protocol._statement import ParticipantStatement, verify_participant_signed
from trapdoor.protocol.common import ProtocolError, is_json_int
from trapdoor.protocol.job import JobTerms

__all__ = [
    "MAX_METRICS",
    "METRICS_PURPOSE",
    "MetricsReport",
    "aggregate_metrics",
    "build_metrics_report",
    "check_metric_values",
    "verify_metrics_report",
]

METRICS_PURPOSE = "trapdoor/metrics/v1"
#: At most this many named metrics per report (beside the loss).
MAX_METRICS = 32
#: The most examples one report may claim (weights stay exact in float64).
MAX_EXAMPLES = 2**53
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_metric_values(
    loss: object, num_examples: object, metrics: object
) -> tuple[float, int, dict[str, float]]:
    """``(loss, num_examples, metrics)`` as a report carries them; ValueError naming the part
    at fault (a NaN, a bool, a name with spaces, too many metrics, no examples)."""
    if not isinstance(loss, int | float) or not _is_number(loss):
        raise ValueError("the loss must be a finite number")
    if not isinstance(num_examples, int) or not is_json_int(num_examples):
        raise ValueError(f"num_examples must be an integer in [1, {MAX_EXAMPLES}]")
    if not 1 <= num_examples <= MAX_EXAMPLES:
        raise ValueError(f"num_examples must be an integer in [1, {MAX_EXAMPLES}]")
    if not isinstance(metrics, Mapping):
        raise ValueError("metrics must be an object of name -> number")
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"at most {MAX_METRICS} metrics per report, got {len(metrics)}")
    checked: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"metric name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                "(starting with a letter or '_')"
            )
        if not _is_number(value):
            raise ValueError(f"metric {name!r} must be a finite number, got {value!r}")
        checked[name] = float(value)
    return float(loss), num_examples, checked


@dataclass(frozen=True)
class MetricsReport(ParticipantStatement):
    """A contributor's signed score of the model released at the end of ``round``."""

    FIELD: ClassVar[str] = "metrics_report"
    PURPOSE: ClassVar[str] = METRICS_PURPOSE
    OBJECTS: ClassVar[tuple[str, ...]] = ("metrics",)

    loss: float
    num_examples: int
    metrics: Mapping[str, float]

    @classmethod
    def from_json(cls, obj: object) -> Self:
        report = super().from_json(obj)
        try:
            check_metric_values(report.loss, report.num_examples, report.metrics)
        except ValueError as exc:
            raise ProtocolError("bad-metrics_report", str(exc)) from None
        return report


def build_metrics_report(
    signing_key: Ed25519PrivateKey,
    terms: JobTerms,
    *,
    round_number: int,
    subject_id: str,
    loss: float,
    num_examples: int,
    metrics: Mapping[str, float],
    run: int = 0,
) -> dict[str, Any]:
    """A contributor's signed score (wire form) of the model that ``run`` of round
    ``round_number`` released; ValueError for values a PS would refuse."""
    loss, num_examples, checked = check_metric_values(loss, num_examples, metrics)
    report = MetricsReport.for_round(
        terms,
        round_number,
        subject_id,
        run,
        loss=loss,
        num_examples=num_examples,
        metrics=checked,
    )
    return report.sign(signing_key).to_json()


def verify_metrics_report(
    signed: object,
    terms: JobTerms,
    *,
    round_number: int,
    run: int = 0,
    subject_id: str | None = None,
) -> MetricsReport:
    """Check a signed metrics report for this job, round and run; its body."""
    return verify_participant_signed(
        signed, MetricsReport, terms, round_number=round_number, subject_id=subject_id, run=run
    )


def aggregate_metrics(
    reports: Iterable[tuple[float, int, Mapping[str, float]]],
) -> dict[str, Any]:
    """The example-weighted average of ``(loss, num_examples, metrics)`` reports.

    ``{"reporters", "num_examples", "loss", "metrics"}``; a metric only some reporters gave
    is averaged over those (its own example count beside it in ``"coverage"``). Empty
    input gives ``reporters: 0`` and no averages.
    """
    reporters = 0
    total = 0
    loss_sum = 0.0
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for loss, num_examples, metrics in reports:
        reporters += 1
        total += num_examples
        loss_sum += loss * num_examples
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + value * num_examples
            counts[name] = counts.get(name, 0) + num_examples
    if reporters == 0:
        return {"reporters": 0, "num_examples": 0, "loss": None, "metrics": {}, "coverage": {}}
    return {
        "reporters": reporters,
        "num_examples": total,
        "loss": loss_sum / total,
        "metrics": {name: sums[name] / counts[name] for name in sorted(sums)},
        "coverage": {name: counts[name] for name in sorted(counts)},
    }
