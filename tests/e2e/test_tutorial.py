"""docs/TUTORIAL.md, run as written: real services as real processes, in an empty folder.

The tutorial's blocks become one bash script, in order: a ``bash`` block as it is, a
``python`` block fed to the project's Python, and a ``python`` block that starts with
``# file: NAME`` written to ``NAME``. Only the ports change (free ones instead of the
defaults, through the variables the tutorial reads), so the run cannot meet another
service on this machine. Every service the script starts is stopped afterwards, whatever
happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

pytest.importorskip("torch")
pytest.importorskip("sklearn")

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "TUTORIAL.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_FILE = re.compile(r"\A# file: (\S+)\n")


def tutorial_script(markdown: str) -> str:
    """The tutorial's runnable blocks as one bash script (a heredoc per Python block)."""
    parts = ["set -euo pipefail"]
    for language, body in _BLOCK.findall(markdown):
        if language == "bash":
            parts.append(body)
        elif language == "python":
            target = _FILE.match(body)
            command = f"cat > {target.group(1)}" if target else '"$TUTORIAL_PYTHON" -'
            parts.append(f"{command} <<'TUTORIAL_PY'\n{body}TUTORIAL_PY")
    return "\n".join(parts) + "\n"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_the_script_holds_every_block_in_order() -> None:
    markdown = TUTORIAL.read_text()
    script = tutorial_script(markdown)
    blocks = _BLOCK.findall(markdown)
    assert {language for language, _ in blocks} == {"python", "bash"}
    assert "cat > tumour.py <<'TUTORIAL_PY'" in script
    closings = script.count("\nTUTORIAL_PY\n")
    assert closings == sum(1 for language, _ in blocks if language == "python")


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    kgc, ps, node = _free_ports(3)
    # Nodes listen on NODE_PORT + 1..3: pick a base whose next three ports are free.
    node_base = node
    for _ in range(50):
        probe = [socket.socket() for _ in range(3)]
        try:
            for i, s in enumerate(probe, start=1):
                s.bind(("127.0.0.1", node_base + i))
            break
        except OSError:
            node_base = _free_ports(1)[0]
        finally:
            for s in probe:
                s.close()
    script = tmp_path / "tutorial.sh"
    script.write_text(tutorial_script(TUTORIAL.read_text()))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TUTORIAL_PYTHON": sys.executable,
        "KGC_PORT": str(kgc),
        "PS_PORT": str(ps),
        "NODE_PORT": str(node_base),
        "PYTHONUNBUFFERED": "1",
    }
    for name in list(env):  # the tutorial sets its own; nothing of the caller's leaks in
        if name.startswith(("TRAPDOOR_KGC_", "TRAPDOOR_PS_", "TRAPDOOR_NODE_")):
            del env[name]
    process = subprocess.Popen(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the tutorial did not finish in 15 minutes:\n{output[-6000:]}")
    finally:
        _stop_services(tmp_path)
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(tmp_path.glob("*.log"))
    )
    assert process.returncode == 0, f"{output[-8000:]}\n{logs}"
    assert "round 3: encrypted" in output
    assert (tmp_path / "tumour.pt").stat().st_size > 0
    print(output)


def _stop_services(folder: Path) -> None:
    pids = folder / "services.pid"
    if not pids.exists():
        return
    for line in pids.read_text().split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(line), signal.SIGTERM)
