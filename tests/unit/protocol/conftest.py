"""Fixtures of the protocol tests: one signed job of each aggregation mode per module."""

from __future__ import annotations

import random

import pytest
from masked_support import PARAMS_512_SEED, MaskedWorld, Upload
from protocol_support import THREE, Params, World

from trapdoor.crypto.bcp import generate_params


@pytest.fixture(scope="module")
def world(small_params: Params) -> World:
    """A bcp job signed for PS, under the session's small parameters."""
    return World(small_params[0])


@pytest.fixture(scope="session")
def params_512() -> Params:
    """512-bit parameters: the smallest that carry a 256-bit seed (masked jobs)."""
    return generate_params(512, random.Random(PARAMS_512_SEED))


@pytest.fixture(scope="module")
def masked_world(params_512: Params) -> MaskedWorld:
    """A masked job signed for PS."""
    return MaskedWorld(*params_512)


@pytest.fixture(scope="module")
def round0(masked_world: MaskedWorld) -> list[Upload]:
    """Round 0's honest masked uploads of three participants."""
    return [masked_world.upload(s) for s in THREE]
