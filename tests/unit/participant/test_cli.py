"""``trapdoor node serve`` options that reach the node's configuration."""

from __future__ import annotations

import pytest

from participant.cli import _parser


def test_min_quorum_is_an_option_of_node_serve() -> None:
    args = _parser().parse_args(["node", "serve", "--min-quorum", "2"])
    assert args.min_quorum == 2
    assert _parser().parse_args(["node", "serve"]).min_quorum is None  # the default, 3


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_min_quorum_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["node", "serve", "--min-quorum", value])
