"""The local cluster keeps what it creates owner-only (no service is started here)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from trapdoor.demo.cluster import LocalCluster, wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_workdir_logs_and_children_files_are_owner_only(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    child_file = workdir / "made-by-child"
    with LocalCluster(workdir) as cluster:
        assert _mode(workdir) == 0o700
        proc = cluster.spawn(
            "toy",
            ["-c", f"open({str(child_file)!r}, 'w').write('x'); print('listening on nothing')"],
            {},
        )
        assert proc.popen.wait(60) == 0
        assert _mode(proc.log) == 0o600
        assert "listening on nothing" in proc.log_text()
        assert _mode(child_file) == 0o600  # the child ran with umask 077
    assert workdir.exists()  # a given workdir is kept


def test_a_temporary_workdir_is_private_and_removed() -> None:
    cluster = LocalCluster()
    workdir = cluster.workdir
    assert _mode(workdir) == 0o700
    cluster.stop()
    assert not workdir.exists()


def test_wait_until_returns_the_first_truthy_value_or_names_what_timed_out() -> None:
    values = iter([None, 0, "", {"status": "released"}])
    assert wait_until("the release", lambda: next(values), 5, poll=0.001) == {"status": "released"}
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_until("the impossible", lambda: False, 0.05, poll=0.01)
