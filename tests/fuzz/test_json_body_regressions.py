"""Regressions found by the fuzz tests (issue 6): hostile JSON bodies were 500s.

``trapdoor.service.web.json_body`` let a ``RecursionError`` (JSON nested ~100k deep) and a
``UnicodeEncodeError`` (a lone surrogate such as ``"\\ud800"``, valid JSON that is not
UTF-8 text, reaching SQLite or ``str.encode``) escape as 500 ``internal``. Both are now
400 ``malformed-json``, and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzz_support import Target, build_kgc, build_param_server, target

# Deep enough to blow the parser's recursion limit, small enough (60 kB) to be parsed at
# all: every JSON control endpoint refuses bodies over 64 KiB before reading them.
DEEP = b"[" * 30_000 + b"]" * 30_000


@pytest.fixture(scope="module", params=["kgc", "param_server"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    builder = {"kgc": build_kgc, "param_server": build_param_server}[request.param]
    with target(builder, tmp_path_factory.mktemp(request.param)) as built:
        yield built


def _post(world: Target, path: str, body: bytes) -> None:
    before = world.counts()
    headers = {**world.auths["admin"], "Content-Type": "application/json"}
    response = world.client.post(path, data=body, headers=headers)
    assert response.status_code == 400, response.get_data()[:200]
    assert response.get_json() == {
        "error": "malformed-json",
        "message": "request body is not valid JSON",
    }
    assert world.counts() == before


@pytest.mark.parametrize(
    "body",
    [DEEP, b'{"a":' * 5000 + b"1" + b"}" * 5000],
    ids=["deep-list", "deep-object"],
)
def test_deeply_nested_json_is_400(world: Target, body: bytes) -> None:
    path = "/v1/enrolments" if world.name == "kgc" else "/v1/jobs"
    _post(world, path, body)


def test_an_oversized_control_message_is_413_before_it_is_parsed(world: Target) -> None:
    """Issue 11: a 60 MiB body once cost the KGC ~460 MiB; now the length alone refuses it."""
    path = "/v1/enrolments" if world.name == "kgc" else "/v1/jobs/j/rounds/0/close"
    before = world.counts()
    body = b"[" * 100_000 + b"]" * 100_000
    headers = {**world.auths["admin"], "Content-Type": "application/json"}
    response = world.client.post(path, data=body, headers=headers)
    assert response.status_code == 413
    assert response.get_json()["error"] == "too-large"
    assert world.counts() == before


def test_lone_surrogate_in_a_stored_field_is_400(world: Target) -> None:
    if world.name == "kgc":  # was a UnicodeEncodeError from SQLite: 500
        _post(world, "/v1/enrolments", b'{"name": "\\ud800", "role": "participant"}')
        _post(
            world,
            "/v1/tokens",
            b'{"subject_id": "\\udfff", "timestamp": 1, '
            b'"nonce": "nonce-0123456789", "signature": "x"}',
        )
    else:
        _post(world, "/v1/jobs", b'{"job_id": "j", "model": {"\\ud800": 1}}')


def test_surrogate_pairs_are_still_accepted(world: Target) -> None:
    """A proper escaped pair (an emoji) is valid UTF-8 text and is not refused."""
    if world.name != "kgc":
        pytest.skip("checked on the KGC's enrolment")
    response = world.client.post(
        "/v1/enrolments",
        data=b'{"name": "org \\ud83d\\udca5", "role": "participant"}',
        headers={**world.auths["admin"], "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.get_json()
