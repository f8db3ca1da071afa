"""The local cluster keeps what it creates owner-only, and passes nodes their data (no service
is started here)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from trapdoor.demo.cluster import ClusterError, LocalCluster, NodeData, wait_until


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


def test_node_data_becomes_the_nodes_data_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path is made absolute: nodes run in the workdir
    argv = NodeData("part.csv", 0.25, split_seed=7, label="-y").argv()
    assert argv == [
        "--data-path",
        str(tmp_path / "part.csv"),
        "--data-label=-y",
        "--data-test-fraction",
        "0.25",
        "--data-split-seed",
        "7",
    ]
    own_test = NodeData(str(tmp_path / "part.npz")).argv()
    assert "--data-test-fraction" not in own_test
    assert own_test[:2] == ["--data-path", str(tmp_path / "part.npz")]


def test_start_nodes_wants_one_data_file_per_node(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        with pytest.raises(ClusterError, match="3 nodes but 2 data files"):
            cluster.start_nodes(3, data=[NodeData("a.csv"), NodeData("b.csv")], wait=False)
        assert cluster.procs == [] and cluster.nodes == []
