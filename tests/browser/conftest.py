"""Browser fixtures for the consoles' tests: Playwright driving Debian's Chromium.

``make test`` installs Chromium first (``make browsers``, scripts/install-chromium.sh);
a run without it fails here with that instruction rather than skipping, so a missing
browser never passes unnoticed. Screenshots go to ``TRAPDOOR_SCREENSHOTS`` when set
(``make screenshots`` refreshes the ones docs/OPERATIONS.md shows) and to the test's
temporary folder otherwise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from trapdoor.demo.cluster import LocalCluster
from trapdoor.demo.job import (
    build_model,
    follow_rounds,
    job_definition,
    wait_nodes,
    wait_shared_metrics,
)
from trapdoor.ml.training import TrainingConfig
from trapdoor.participant.node import dataset_partitions

CHROMIUM_ENV = "TRAPDOOR_CHROMIUM"
SCREENSHOTS_ENV = "TRAPDOOR_SCREENSHOTS"


def chromium_path() -> str:
    """Debian's Chromium (or ``TRAPDOOR_CHROMIUM``); fails with how to install it."""
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is not installed: run `make browsers` (make test does)")
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page; console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    # a blocked inline script or style (CSP) shows up here as a console error
    assert not problems, f"browser console errors: {problems}"


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Page, str], Path]:
    """Save a full-page PNG named ``<name>.png`` and return its path."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def take(shown: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        shown.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path

    return take


def log_in(shown: Page, base_url: str, token: str) -> None:
    """Open the console's login page, enter ``token`` and land on its first page."""
    shown.goto(f"{base_url}/console/login")
    shown.fill("#token", token)
    shown.click("form button[type=submit]")
    shown.wait_for_load_state()
    assert "/console/login" not in shown.url, "the login was refused"


@dataclass
class ConsoleJob:
    """A finished job on a real local deployment, for the consoles to show."""

    cluster: LocalCluster
    job_id: str
    subjects: list[str]
    rounds: int


CONSOLE_JOB_ROUNDS = 3
CONSOLE_JOB_NODES = 3


@pytest.fixture(scope="session")
def console_job() -> Iterator[ConsoleJob]:
    """KGC, PS and three nodes as real processes (1024-bit demo parameters, digits), and a
    masked job with shared metrics run through all its rounds: every round released and
    opened, every contributor's evaluation reported. One deployment for all consoles."""
    seed = 11
    with LocalCluster() as cluster:
        subjects = cluster.start_all(CONSOLE_JOB_NODES, bits=1024, dataset="digits")
        _, parts = dataset_partitions("digits", CONSOLE_JOB_NODES, "iid", 0)
        model = build_model("mlp", "digits")
        job_id = "console-demo-job"
        definition = job_definition(
            job_id,
            model,
            model.init_parameters(np.random.default_rng(seed)),
            TrainingConfig(learning_rate=0.1, local_epochs=1, batch_size=32),
            seed=seed,
            samples={s: len(p) for s, p in zip(subjects, parts, strict=True)},
            quorum=CONSOLE_JOB_NODES,
            rounds=CONSOLE_JOB_ROUNDS,
            aggregation="masked",
            share_metrics=True,
        )
        ps_ops = cluster.ps_operator()
        ps_ops.post_json("/v1/jobs", definition)
        node_ops = [cluster.node_operator(i) for i in range(CONSOLE_JOB_NODES)]
        for ops in node_ops:
            ops.post_json(
                "/v1/jobs",
                {
                    "ps_url": cluster.ps_url,
                    "job_id": job_id,
                    "ps_subject_id": cluster.param_server_subject,
                },
            )
        everyone = [list(range(CONSOLE_JOB_NODES))] * CONSOLE_JOB_ROUNDS
        released = follow_rounds(
            ps_ops, job_id, everyone, 300, participants=CONSOLE_JOB_NODES, quiet=True
        )
        views = wait_nodes(node_ops, job_id, everyone, 300)
        wait_shared_metrics(ps_ops, job_id, released, views, subjects)
        yield ConsoleJob(cluster, job_id, subjects, CONSOLE_JOB_ROUNDS)
