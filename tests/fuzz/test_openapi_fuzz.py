"""Fuzz every operation of the three services from their own ``/openapi.json`` (issue 6).

For the KGC, the parameter server and the participant node, schemathesis loads the
document the app generates from its URL map and its views' typed bodies
(``trapdoor.service.web``, ``trapdoor.service.openapi``) through the WSGI loader, and
generates positive and negative requests for every operation; each is sent without and
with valid credentials (admin token, participant or server tokens). Positive bodies are
generated from the real request schemas, so they reach the services' checks of meaning
(an unknown model kind, a subject that does not exist), not only of shape: one test
counts how many get past the shape checks. A URL in a generated body is pointed at a
closed port, so nothing is ever called out of this machine.
A second pass fuzzes each route of ``app.url_map`` directly with Hypothesis: hostile
JSON (deep nesting, lone surrogates, huge integers, wrong types, known field names),
raw bytes under several content types, hostile path values and methods.

Every answer must be: not a 5xx (502/503 only where a peer is unreachable), JSON, and
for an error exactly ``{"error", "message"}``; a rejected request stores nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fuzz_support import (
    Target,
    build_kgc,
    build_node,
    build_param_server,
    check_response,
    target,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from trapdoor.service.console import is_console_endpoint

pytestmark = pytest.mark.slow

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
DIRECT_SETTINGS = settings(SETTINGS, max_examples=25)

BUILDERS: dict[str, Callable[[Path], Target]] = {
    "kgc": build_kgc,
    "param_server": build_param_server,
    "node": build_node,
}
# Operations whose success legitimately writes (a 2xx may store, a refusal may not).
UPSTREAM_OK = {("node", "/v1/enrol"), ("node", "/v1/jobs")}
# Where the node is told to call out: a generated URL goes to a closed port instead.
URL_FIELDS = ("kgc_url", "ps_url")
OFFLINE_URL = "http://127.0.0.1:1"
# Per service, operations whose positive cases must mostly get past the shape checks, as
# (method, path, credentials); and the error codes that refuse a body for its shape.
MEANINGFUL = {
    "kgc": [("POST", "/v1/enrolments", "admin"), ("POST", "/v1/tokens", "none")],
    "param_server": [("POST", "/v1/jobs", "admin")],
    "node": [("POST", "/v1/enrol", "admin")],
}
SHAPE_REFUSALS = frozenset(
    {
        "bad-definition",
        "bad-field",
        "malformed-json",
        "missing-field",
        "too-large",
        "unsupported-media-type",
    }
)
POSITIVE_EXAMPLES = 30


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def app_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    with target(BUILDERS[request.param], tmp_path_factory.mktemp(request.param)) as built:
        yield built


def _send_checked(
    tgt: Target, path_template: str, send: Callable[[], tuple[int, str | None, bytes]]
) -> None:
    before = tgt.counts()
    status, content_type, body = send()
    check_response(status, content_type, body, upstream_ok=(tgt.name, path_template) in UPSTREAM_OK)
    if status >= 400:
        assert tgt.counts() == before, f"rejected request changed the database ({status})"


# --------------------------------------------------------------------------- schemathesis


def test_openapi_document_lists_every_route(app_target: Target) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app_target.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {(op.method.upper(), op.path) for op in operations}
    routed = set()
    for rule in app_target.app.url_map.iter_rules():
        if rule.endpoint == "static" or is_console_endpoint(rule.endpoint):
            continue
        path = re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule.rule)
        routed |= {(m, path) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    # schemathesis leaves out the schema's own location; the direct fuzz below covers it.
    assert documented == routed - {("GET", "/openapi.json")}


def _offline(case: Any) -> None:
    """Point a generated body's well-formed URLs at a closed port (hostile ones stay)."""
    if isinstance(case.body, dict):
        for name in URL_FIELDS:
            value = case.body.get(name)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                case.body[name] = OFFLINE_URL


def _caller(case: Any, headers: dict[str, str]) -> Callable[[], tuple[int, str | None, bytes]]:
    """Send ``case`` with ``headers``: status, content type and body."""

    def send() -> tuple[int, str | None, bytes]:
        response = case.call(headers=headers)
        content_type = (response.headers.get("content-type") or [None])[0]
        return response.status_code, content_type, response.content

    return send


def _fuzz_operation(tgt: Target, operation: Any) -> None:
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @SETTINGS
    @given(case=strategy, auth=st.sampled_from(sorted(tgt.auths)), known=st.booleans())
    def run(case: Any, auth: str, known: bool) -> None:
        if known and case.path_parameters:  # also get past "not found": use real ids
            for name, values in tgt.path_values.items():
                if name in case.path_parameters:
                    case.path_parameters[name] = values[0]
        _offline(case)
        note(f"{operation.method.upper()} {case.formatted_path} as {auth}")
        _send_checked(tgt, operation.path, _caller(case, tgt.auths[auth]))

    run()


def test_schemathesis_every_operation(app_target: Target) -> None:
    """Positive and negative cases of every documented operation, with and without auth."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app_target.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        _fuzz_operation(app_target, operation)


def _positive_answers(tgt: Target, operation: Any, auth: str) -> list[tuple[int, bytes]]:
    """Positive cases of ``operation`` as ``auth``, each checked; their statuses and bodies."""
    answers: list[tuple[int, bytes]] = []

    @settings(SETTINGS, max_examples=POSITIVE_EXAMPLES)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def run(case: Any) -> None:
        _offline(case)
        send = _caller(case, tgt.auths[auth])

        def recorded() -> tuple[int, str | None, bytes]:
            status, content_type, body = send()
            answers.append((status, body))
            return status, content_type, body

        _send_checked(tgt, operation.path, recorded)

    run()
    return answers


def test_generated_bodies_get_past_the_shape_checks(app_target: Target) -> None:
    """Positive cases, generated from the documented request schemas, are refused (if at
    all) for what they mean, not for their shape: the documents describe what the services
    take. With the old untyped bodies (``{"type": "object"}``) none of them got past."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app_target.app)
    for method, path, auth in MEANINGFUL[app_target.name]:
        answers = _positive_answers(app_target, schema[path][method], auth)
        codes = [json.loads(body)["error"] if status >= 400 else None for status, body in answers]
        past = [code for code in codes if code not in SHAPE_REFUSALS]
        print(f"{app_target.name} {method} {path}: {len(past)} of {len(codes)} past the shape")
        assert codes and 2 * len(past) >= len(codes), codes


# --------------------------------------------------------------------------- direct fuzz

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "a\udfffb",
            "💥" * 3,
            "../../etc",
            "%00",
            "x" * 3000,
            "sub-0000000000000000",
            "http://127.0.0.1:1",
            "job-fuzz",
            "NaN",
        ]
    ),
)
HOSTILE_INT = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**63, 10**300, -(10**300)])
)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), HOSTILE_INT, st.floats(allow_nan=True), HOSTILE_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)
PLAUSIBLE: dict[str, list[Any]] = {
    "name": ["org"],
    "role": ["participant", "param_server", "admin"],
    "code": ["c" * 32],
    "signing_key": ["00" * 32, "ab" * 32],
    "bcp_public_key": [{}, {"kind": "bcp-public-key"}],
    "subject_id": ["sub-0000000000000000", "p1"],
    "timestamp": [0, 1_700_000_000],
    "nonce": ["nonce-0123456789"],
    "signature": ["A" * 86],
    "job_id": ["job-fuzz", "job-new"],
    "width": [1, 4],
    "participants": [["p1"], [{"subject_id": "p1", "num_samples": 1}]],
    "quorum": [1],
    "rounds": [1],
    "model": [{"kind": "mlp"}],
    "training": [{}],
    "initial_weights": ["AAAAAAAAAAA"],
    "encoding": [{}],
    "below_quorum_policy": ["fail"],
    "round_deadline_seconds": [1.0],
    "kgc_url": ["http://127.0.0.1:1", "https://127.0.0.1:1/x"],  # refused at once
    "ps_url": ["http://127.0.0.1:1"],
    "skip_rounds": [[0, 1]],
}
FIELD_BODIES = st.fixed_dictionaries(
    {},
    optional={
        name: st.sampled_from(values) | HOSTILE_TEXT | JSON_VALUES
        for name, values in PLAUSIBLE.items()
    },
)
DEEP = b"[" * 100_000 + b"]" * 100_000
RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'"x"',
            b'{"a": NaN}',
            DEEP,
            b'{"a":' * 5000,
            b'{"name": "\xed\xa0\x80", "role": "participant"}',
            b"\xff\xfe{}",
            b"1" * 5000,
            b"TDFV" + b"\x00" * 40,
        ]
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/octet-stream",
        "text/plain",
        "application/json; charset=latin-1",
        "multipart/form-data",
        None,
    ]
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


@st.composite
def _requests(
    draw: st.DrawFn, tgt: Target, rule: Any
) -> tuple[str, str, str, dict[str, str], bytes]:
    allowed = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    method = draw(st.sampled_from(allowed) | st.sampled_from(METHODS))
    values: dict[str, str] = {}
    for arg in sorted(rule.arguments):
        known = [str(v) for v in tgt.path_values.get(arg, [])]
        raw = draw(st.sampled_from(known) | HOSTILE_TEXT if known else HOSTILE_TEXT)
        if type(rule._converters[arg]).__name__ == "IntegerConverter":
            raw = str(draw(st.sampled_from(known) | HOSTILE_INT.map(str) | HOSTILE_TEXT))
        values[arg] = quote(raw.encode("utf-8", "surrogatepass"), safe="") or "x"
    path = rule.rule
    for arg, value in values.items():
        path = path.replace(f"<int:{arg}>", value).replace(f"<{arg}>", value)
    body_kind = draw(st.sampled_from(["fields", "json", "raw", "none"]))
    if body_kind == "fields":
        body, content_type = _json_bytes(draw(FIELD_BODIES)), "application/json"
    elif body_kind == "json":
        body, content_type = _json_bytes(draw(JSON_VALUES)), draw(CONTENT_TYPES)
    elif body_kind == "raw":
        body, content_type = draw(RAW_BODIES), draw(CONTENT_TYPES)
    else:
        body, content_type = b"", None
    headers = dict(tgt.auths[draw(st.sampled_from(sorted(tgt.auths)))])
    if content_type:
        headers["Content-Type"] = content_type
    template = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
    return method, path, template, headers, body


def _rules(tgt: Target) -> list[Any]:
    return sorted(
        (
            r
            for r in tgt.app.url_map.iter_rules()
            if r.endpoint != "static" and not is_console_endpoint(r.endpoint)
        ),
        key=lambda r: r.rule,
    )


def _fuzz_rule(tgt: Target, rule: Any) -> None:
    @DIRECT_SETTINGS
    @given(req=_requests(tgt, rule))
    def run(req: tuple[str, str, str, dict[str, str], bytes]) -> None:
        method, path, template, headers, body = req
        note(f"{method} {path} {headers} {body[:200]!r}")

        def send() -> tuple[int, str | None, bytes]:
            response = tgt.client.open(path, method=method, headers=headers, data=body)
            return response.status_code, response.content_type, response.get_data()

        _send_checked(tgt, template, send)

    run()


def test_hypothesis_every_route_hostile_bodies(app_target: Target) -> None:
    """Hostile JSON, bytes, paths and methods against every route of the URL map."""
    for rule in _rules(app_target):
        _fuzz_rule(app_target, rule)


def _corpus(tgt: Target) -> list[bytes]:
    """Fixed hostile JSON bodies: too deep, and a lone surrogate in each known field."""
    plausible = {name: values[0] for name, values in PLAUSIBLE.items()}
    plausible.update({k: str(v[0]) for k, v in tgt.path_values.items() if k in plausible})
    bodies = [DEEP, b'{"a":' * 5000 + b"1" + b"}" * 5000]
    for name in PLAUSIBLE:
        bodies.append(_json_bytes({**plausible, name: "\ud800"}))
        bodies.append(_json_bytes({**plausible, name: {"\udfff": 1}}))
    return bodies


def test_hostile_corpus_every_json_route(app_target: Target) -> None:
    """Every POST route, under every credential, against a fixed corpus of hostile JSON."""
    corpus = _corpus(app_target)
    for rule in _rules(app_target):
        if "POST" not in (rule.methods or set()):
            continue
        path = rule.rule
        for arg in rule.arguments:
            value = str(app_target.path_values[arg][0])
            path = path.replace(f"<int:{arg}>", value).replace(f"<{arg}>", value)
        for auth in app_target.auths.values():
            for body in corpus:
                headers = {**auth, "Content-Type": "application/json"}

                def send(
                    path: str = path, headers: dict[str, str] = headers, body: bytes = body
                ) -> tuple[int, str | None, bytes]:
                    response = app_target.client.post(path, headers=headers, data=body)
                    return response.status_code, response.content_type, response.get_data()

                _send_checked(app_target, rule.rule, send)
