"""``trapdoor.flower`` without Ray or services: the mod's pass-through and refusals, and
the strategy's refusals (server-side evaluation, parameters sent to the server)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from trapdoor.flower import TrapdoorFedAvg, trapdoor_mod
from trapdoor.flower.client import ERROR_CODE
from trapdoor.flower.messages import (
    HELLO,
    JOB_ID,
    PS_URL,
    REPLY,
    ROUND,
    arrays_of,
    layout_of,
    record_of,
)
from trapdoor.flower.server import TrapdoorStrategyError


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the process's task identity, which its runtimes set."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 7)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _context(node_config: dict[str, Any] | None = None) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=node_config or {},
        state=RecordDict(),
        run_config={},
    )


def _message(kind: str, config: dict[str, Any]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord(config)})
    return Message(content=content, dst_node_id=7, message_type=kind)


def test_records_and_vectors_round_trip() -> None:
    arrays = {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.arange(2.0)}
    record = record_of(arrays)
    back = arrays_of(record)
    assert list(back) == list(arrays)
    np.testing.assert_array_equal(back["fc.weight"], arrays["fc.weight"])
    assert layout_of(record).num_parameters == 8


def test_messages_without_trapdoor_config_pass_through_unchanged() -> None:
    message = _message(MessageType.TRAIN, {"lr": 0.1})
    seen: list[Message] = []

    def call_next(m: Message, c: Context) -> Message:
        seen.append(m)
        return Message(content=RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=m)

    reply = trapdoor_mod(message, _context(), call_next)
    assert seen == [message] and not reply.has_error()


@pytest.mark.parametrize("config", [{HELLO: True}, {JOB_ID: "j", PS_URL: "http://x", ROUND: 0}])
def test_a_node_without_an_identity_answers_an_error_and_never_calls_the_app(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAPDOOR_FLOWER_PASSPHRASE", "p")
    monkeypatch.delenv("TRAPDOOR_FLOWER_IDENTITY_DIR", raising=False)

    def call_next(m: Message, c: Context) -> Message:
        raise AssertionError("the app must not run")

    reply = trapdoor_mod(_message(MessageType.TRAIN, config), _context(), call_next)
    assert reply.has_error() and reply.error.code == ERROR_CODE
    assert "no Trapdoor identity" in str(reply.error.reason)


def test_a_missing_passphrase_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAPDOOR_FLOWER_PASSPHRASE", raising=False)
    reply = trapdoor_mod(
        _message(MessageType.TRAIN, {HELLO: True}),
        _context({"trapdoor-identity": "/nonexistent.json"}),
        lambda m, c: m,
    )
    assert reply.has_error() and "TRAPDOOR_FLOWER_PASSPHRASE" in str(reply.error.reason)


def _strategy() -> TrapdoorFedAvg:
    return TrapdoorFedAvg(ps_url="http://127.0.0.1:9", ps_admin_token="t", sleep=lambda s: None)


def test_server_side_evaluation_is_refused_by_design() -> None:
    with pytest.raises(TrapdoorStrategyError, match="never has the model"):
        _strategy().start(
            grid=None,  # type: ignore[arg-type]
            initial_arrays=ArrayRecord(),
            evaluate_fn=lambda r, a: None,
        )


def test_a_reply_with_parameters_is_refused_by_the_server() -> None:
    strategy = _strategy()
    leaked = Message(
        content=RecordDict(
            {
                "arrays": record_of({"w": np.ones(3)}),
                REPLY: ConfigRecord({"receipt": "{}"}),
            }
        ),
        reply_to=_message(MessageType.TRAIN, {}),
    )
    with pytest.raises(TrapdoorStrategyError, match="sent parameters"):
        strategy.aggregate_train(1, [leaked])


def test_the_coordinates_replace_the_arrays() -> None:
    strategy = _strategy()
    config = strategy._coordinates(ConfigRecord({"lr": 0.1}), 3)
    assert config[ROUND] == 2 and config[JOB_ID] == strategy.job_id and config["lr"] == 0.1


def test_a_round_nobody_took_part_in_fails_at_once() -> None:
    refused = _message(MessageType.TRAIN, {}).create_error_reply(Error(code=7100, reason="x"))
    with pytest.raises(TrapdoorStrategyError, match="no node took part in round 0"):
        _strategy().aggregate_train(1, [refused])
