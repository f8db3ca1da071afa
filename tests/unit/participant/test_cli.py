"""``trapdoor node serve`` options that reach the node's configuration."""

from __future__ import annotations

import pytest

from trapdoor.cli import _parser


def test_min_quorum_is_an_option_of_node_serve() -> None:
    args = _parser().parse_args(["node", "serve", "--min-quorum", "2"])
    assert args.min_quorum == 2
    assert _parser().parse_args(["node", "serve"]).min_quorum is None  # the default, 3


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_min_quorum_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["node", "serve", "--min-quorum", value])


def test_each_service_has_its_own_default_port() -> None:
    """KGC, parameter server and node can all run on one machine with their defaults."""
    from trapdoor.kgc.cli import _parser as kgc_parser
    from trapdoor.ps.cli import _parser as ps_parser

    ports = {
        "kgc": kgc_parser().parse_args(["serve"]).port,
        "ps": ps_parser().parse_args(["serve"]).port,
        "node": _parser().parse_args(["node", "serve"]).port,
    }
    assert len(set(ports.values())) == 3, ports
