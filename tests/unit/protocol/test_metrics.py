"""Shared evaluation metrics (trapdoor.protocol.metrics): the signed report and its average.

A report verifies only for its job, round, run and signer, under the signer's certified
key; its values are bounded the same way when built and when checked; the average is
weighted by examples and a metric only some reporters give is averaged over those.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_support import World, refused, resigned

from trapdoor.protocol.metrics import (
    MAX_METRICS,
    METRICS_PURPOSE,
    MetricsReport,
    aggregate_metrics,
    build_metrics_report,
    check_metric_values,
    verify_metrics_report,
)


def _report(world: World, subject: str = "sub-a", **kw: object) -> dict[str, object]:
    values: dict[str, object] = {"loss": 0.5, "num_examples": 20, "metrics": {"accuracy": 0.75}}
    values.update(kw)
    return build_metrics_report(
        world.keys[subject],
        world.terms,
        round_number=int(values.pop("round_number", 1)),  # type: ignore[call-overload]
        run=int(values.pop("run", 0)),  # type: ignore[call-overload]
        subject_id=subject,
        **values,  # type: ignore[arg-type]
    )


def test_a_report_verifies_for_its_round_run_and_signer_only(world: World) -> None:
    signed = _report(world)
    body = verify_metrics_report(signed, world.terms, round_number=1, subject_id="sub-a")
    assert body.purpose == METRICS_PURPOSE
    assert (body.loss, body.num_examples, dict(body.metrics)) == (0.5, 20, {"accuracy": 0.75})
    assert body.to_json() == signed["metrics_report"]
    refused(
        "metrics_report-mismatch",
        lambda: verify_metrics_report(signed, world.terms, round_number=2),
    )
    refused(
        "metrics_report-mismatch",
        lambda: verify_metrics_report(signed, world.terms, round_number=1, run=1),
    )
    refused(
        "metrics_report-mismatch",
        lambda: verify_metrics_report(signed, world.terms, round_number=1, subject_id="sub-b"),
    )
    forged = resigned("metrics_report", signed["metrics_report"], world.keys["sub-b"])  # type: ignore[arg-type]
    refused(
        "bad-metrics_report-signature",
        lambda: verify_metrics_report(forged, world.terms, round_number=1),
    )
    claimed = {**signed["metrics_report"], "loss": 0.0}  # type: ignore[dict-item]
    refused(
        "bad-metrics_report-signature",
        lambda: verify_metrics_report(
            {"metrics_report": claimed, "signature": signed["signature"]},
            world.terms,
            round_number=1,
        ),
    )


@pytest.mark.parametrize(
    ("loss", "examples", "metrics", "match"),
    [
        (float("nan"), 1, {}, "loss"),
        (float("inf"), 1, {}, "loss"),
        ("0.5", 1, {}, "loss"),
        (True, 1, {}, "loss"),
        (0.5, 0, {}, "num_examples"),
        (0.5, 1.0, {}, "num_examples"),
        (0.5, False, {}, "num_examples"),
        (0.5, 2**53 + 1, {}, "num_examples"),
        (0.5, 1, [], "metrics"),
        (0.5, 1, {"a b": 1.0}, "name"),
        (0.5, 1, {"": 1.0}, "name"),
        (0.5, 1, {"x" * 65: 1.0}, "name"),
        (0.5, 1, {"auc": float("nan")}, "finite"),
        (0.5, 1, {"auc": None}, "finite"),
        (0.5, 1, {f"m{i}": 0.0 for i in range(MAX_METRICS + 1)}, "at most"),
    ],
)
def test_values_a_report_cannot_carry(
    loss: object, examples: object, metrics: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        check_metric_values(loss, examples, metrics)


def test_a_signed_report_with_a_bad_value_is_refused_when_parsed(world: World) -> None:
    body = {**_report(world)["metrics_report"], "num_examples": 0}  # type: ignore[dict-item]
    signed = resigned("metrics_report", body, world.keys["sub-a"])
    refused(
        "bad-metrics_report", lambda: verify_metrics_report(signed, world.terms, round_number=1)
    )
    with pytest.raises(Exception, match="num_examples"):
        MetricsReport.from_json(body)


_VALUE = st.floats(-1e6, 1e6, allow_nan=False)
_REPORT = st.tuples(
    _VALUE,
    st.integers(1, 10_000),
    st.dictionaries(st.sampled_from(["accuracy", "auc", "f1"]), _VALUE, max_size=3),
)


@given(st.lists(_REPORT, max_size=6))
def test_the_average_is_weighted_by_examples(reports: list[tuple[float, int, dict]]) -> None:  # type: ignore[type-arg]
    summary = aggregate_metrics(reports)
    assert summary["reporters"] == len(reports)
    assert summary["num_examples"] == sum(n for _, n, _ in reports)
    if not reports:
        assert summary["loss"] is None and summary["metrics"] == {}
        return
    total = summary["num_examples"]
    assert math.isclose(
        summary["loss"], sum(loss * n for loss, n, _ in reports) / total, abs_tol=1e-6
    )
    for name, value in summary["metrics"].items():
        given_by = [(m[name], n) for _, n, m in reports if name in m]
        covered = sum(n for _, n in given_by)
        assert summary["coverage"][name] == covered
        assert math.isclose(value, sum(v * n for v, n in given_by) / covered, abs_tol=1e-6)
        # A weighted mean lies between the smallest and largest value averaged.
        assert min(v for v, _ in given_by) - 1e-6 <= value <= max(v for v, _ in given_by) + 1e-6
    assert set(summary["metrics"]) == {name for _, _, m in reports for name in m}
