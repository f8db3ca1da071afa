"""Session-wide fixtures shared by the whole test suite.

Parameter generation is deterministic (fixed seeds) and done once per session: about half a
second at 1024 bits, a few milliseconds at 256. Never generate 2048-bit parameters in a test;
load the shipped demo ones (``common.demo_params``) instead.
"""

from __future__ import annotations

import random

import pytest

from common.bcp import MasterKey, PublicParams, generate_params

PARAMS_1024_SEED = 1024_2024
SMALL_PARAMS_SEED = 256_2024
SMALL_PARAMS_BITS = 256
RNG_SEED = 20240611


@pytest.fixture(scope="session")
def params_1024() -> tuple[PublicParams, MasterKey]:
    """1024-bit ``(PublicParams, MasterKey)``, generated once per session."""
    return generate_params(1024, random.Random(PARAMS_1024_SEED))


@pytest.fixture(scope="session")
def small_params() -> tuple[PublicParams, MasterKey]:
    """Small (256-bit) ``(PublicParams, MasterKey)`` for fast property tests. Insecure."""
    return generate_params(SMALL_PARAMS_BITS, random.Random(SMALL_PARAMS_SEED))


@pytest.fixture
def rng() -> random.Random:
    """A fresh deterministic random generator for each test."""
    return random.Random(RNG_SEED)
