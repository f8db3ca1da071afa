"""Prometheus metrics of a service: its HTTP traffic, its errors, and what its domain counts.

Every service gets the same three families from its requests (``prometheus_client``,
one registry per app so that tests can build many apps in one process):

- ``trapdoor_http_requests_total{endpoint, method, status}``;
- ``trapdoor_http_request_seconds{endpoint, method}`` (a histogram);
- ``trapdoor_errors_total{code}``: every JSON refusal by its error code (``bad-json``,
  ``not-a-contributor``, ...);
- ``trapdoor_crypto_seconds{operation}`` (a histogram): encryption, decryption,
  aggregation and sealing, reported by the domain through :func:`crypto_timer`.

``endpoint`` is the URL rule (``/v1/jobs/<job_id>/rounds/<int:t>/uploads``), never the
path, so job ids and subject ids do not become label values. A service may also pass
``stats``, a function of its domain read at each scrape (job and round counts, the
database's size, release latency): gauges named ``trapdoor_<name>``, with labels when
its value is a mapping. Protocol steps are counted by their endpoints: uploads are the
201 answers of ``POST .../uploads``, releases those of ``POST .../releases``, and so on
(docs/OPERATIONS.md lists them).

``/metrics`` answers the text exposition format to the service's operator (its admin
bearer token, as Prometheus's ``authorization`` setting sends it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trapdoor.service.openapi import Binary

__all__ = [
    "PROMETHEUS_TEXT",
    "CryptoTimer",
    "ServiceMetrics",
    "Stats",
    "crypto_timer",
    "exposition_response",
    "install_metrics",
]

#: What a service's ``stats`` returns: a number per name, or numbers by one label.
Stats = Callable[[], Mapping[str, float | Mapping[str, float]]]

#: How ``/metrics`` is documented: Prometheus's text exposition format.
PROMETHEUS_TEXT = Binary("text/plain")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class _StatsCollector(Collector):
    """The domain's numbers, read at each scrape (never cached: they are cheap queries)."""

    def __init__(self, stats: Stats, label: str) -> None:
        self.stats = stats
        self.label = label

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in sorted(self.stats().items()):
            metric = f"trapdoor_{name}"
            if isinstance(value, Mapping):
                family = GaugeMetricFamily(metric, f"{name} by {self.label}", labels=[self.label])
                for key, number in sorted(value.items()):
                    family.add_metric([key], float(number))
            else:
                family = GaugeMetricFamily(metric, name, value=float(value))
            yield family


class ServiceMetrics:
    """One service's registry and the request metrics every service shares."""

    def __init__(self, service: str, stats: Stats | None = None) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trapdoor_http_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trapdoor_http_request_seconds",
            "HTTP request latency by endpoint and method",
            ["endpoint", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "trapdoor_errors", "JSON refusals by error code", ["code"], registry=self.registry
        )
        self.crypto = Histogram(
            "trapdoor_crypto_seconds",
            "Seconds spent in cryptographic work by operation (encrypt, decrypt, aggregate, seal)",
            ["operation"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        if stats is not None:
            self.registry.register(_StatsCollector(stats, "status"))

    def observe_crypto(self, operation: str, seconds: float) -> None:
        """Record one cryptographic operation's duration; a domain gets this method as
        its ``on_crypto`` callback (so the domain itself never imports Prometheus)."""
        self.crypto.labels(operation).observe(seconds)

    def observe(self, endpoint: str, method: str, status: int, seconds: float, code: Any) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)
        if status >= 400 and isinstance(code, str):
            self.errors.labels(code).inc()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def install_metrics(app: Flask, service: str, stats: Stats | None = None) -> ServiceMetrics:
    """Record every request of ``app`` (``/metrics`` itself is served by
    :func:`trapdoor.service.web.add_common_routes`)."""
    metrics = ServiceMetrics(service, stats)
    app.extensions["trapdoor_metrics"] = metrics

    @app.before_request
    def _start() -> None:
        g.trapdoor_started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        started = g.pop("trapdoor_started", None)
        if started is None:
            return response
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        code = None
        if response.status_code >= 400 and response.is_json:
            body = response.get_json(silent=True)
            code = body.get("error") if isinstance(body, dict) else None
        metrics.observe(
            rule, request.method, response.status_code, time.perf_counter() - started, code
        )
        return response

    return metrics


#: What a domain calls after a cryptographic operation: ``(operation, seconds)``.
CryptoTimer = Callable[[str, float], None]


def crypto_timer(app: Flask) -> CryptoTimer:
    """The app's ``trapdoor_crypto_seconds`` recorder, for its domain's ``on_crypto``."""
    metrics: ServiceMetrics = app.extensions["trapdoor_metrics"]
    return metrics.observe_crypto


def exposition_response(app: Flask) -> Response:
    """The app's metrics in Prometheus's text format."""
    metrics: ServiceMetrics = app.extensions["trapdoor_metrics"]
    return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
