"""Fuzz every operation of the three services from their own ``/openapi.json`` (issue 6).

For the KGC, the parameter server and the participant node, schemathesis loads the
document the app generates from its URL map (``trapdoor.service.web``) through the WSGI
loader, and generates positive and negative requests for every operation; each is
sent without and with valid credentials (admin token, participant or server tokens).
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
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule.rule)
        routed |= {(m, path) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    # schemathesis leaves out the schema's own location; the direct fuzz below covers it.
    assert documented == routed - {("GET", "/openapi.json")}


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
        note(f"{operation.method.upper()} {case.formatted_path} as {auth}")

        def send() -> tuple[int, str | None, bytes]:
            response = case.call(headers=tgt.auths[auth])
            content_type = (response.headers.get("content-type") or [None])[0]
            return response.status_code, content_type, response.content

        _send_checked(tgt, operation.path, send)

    run()


def test_schemathesis_every_operation(app_target: Target) -> None:
    """Positive and negative cases of every documented operation, with and without auth."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app_target.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        _fuzz_operation(app_target, operation)


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
        (r for r in tgt.app.url_map.iter_rules() if r.endpoint != "static"), key=lambda r: r.rule
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
