"""What ``pip install trapdoor-fl`` gets: a wheel that creates its own databases, and a lean core.

The wheel test builds the wheel from a copy of the sources (so no ``build/`` folder lands in
the checkout), installs it into a scratch folder and, from an unrelated working directory,
creates and upgrades the three services' SQLite databases with the installed code alone:
that proves the Alembic histories ship inside the package. The dependency test keeps the
participant node's install free of the plotting, data-set and benchmark packages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
# What the build reads: the project's metadata, its readme and the package.
BUILD_INPUTS = ("pyproject.toml", "README.md", "trapdoor")
# Extras a node must not pull in, by distribution name and by import name.
HEAVY_DISTRIBUTIONS = {"matplotlib", "mlxtend", "scikit-learn", "phe"}
HEAVY_MODULES = {"matplotlib", "mlxtend", "sklearn", "phe", "torch"}
# The service's name for ``migrate`` -> the module holding its SQLAlchemy metadata.
SERVICES = {
    "kgc": "trapdoor.kgc.models",
    "param_server": "trapdoor.ps.models",
    "participant": "trapdoor.participant.node_models",
}

# Runs with only the installed wheel on the path: creates each database twice over and
# reports, as JSON, where the code came from and what each migration left behind.
MIGRATE_PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    from pathlib import Path

    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    import trapdoor
    from trapdoor.service.db import make_engine, migrate, migrations_dir

    def snapshot(url):
        engine = make_engine(url)
        with engine.connect() as conn:
            schema = [list(r) for r in conn.execute(sa.text(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"))]
            tables = sa.inspect(conn).get_table_names()
            versions = {
                t: [r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {t}"))]
                for t in tables if t.startswith("alembic_version")
            }
        engine.dispose()
        return {"schema": schema, "tables": tables, "versions": versions}

    report = {"trapdoor": trapdoor.__file__, "services": {}}
    for service, models in json.loads(sys.argv[1]).items():
        url = f"sqlite:///{Path(service + '.db').resolve()}"
        migrate(service, url)
        first = snapshot(url)
        migrate(service, url)
        report["services"][service] = {
            "migrations": str(migrations_dir(service)),
            "head": ScriptDirectory(str(migrations_dir(service))).get_current_head(),
            "declared": sorted(importlib.import_module(models).metadata.tables),
            "first": first,
            "second": snapshot(url),
        }
    print(json.dumps(report))
    """
)

# Imports the services' entry points in a fresh interpreter and lists what came with them.
IMPORT_PROBE = textwrap.dedent(
    """
    import importlib, json, sys

    for name in ("trapdoor.participant.node", "trapdoor.kgc.app", "trapdoor.ps.app"):
        importlib.import_module(name)
    print(json.dumps(sorted(sys.modules)))
    """
)


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _requirement_name(requirement: str) -> str:
    """The normalised distribution name a PEP 508 requirement string starts with."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, f"unparsable requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(source copy, wheel, site folder)``: the wheel built without network and installed
    without dependencies into a folder of its own."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    for name in BUILD_INPUTS:
        origin = CHECKOUT / name
        if origin.is_dir():
            shutil.copytree(
                origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), "."],
        source,
    )
    (wheel,) = (root / "dist").glob("trapdoor_fl-*.whl")
    site = root / "site"
    _run(
        [*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], root
    )
    return source, wheel, site


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(
    installed_wheel: tuple[Path, Path, Path],
) -> None:
    source, wheel, _site = installed_wheel
    expected = {
        p.relative_to(source).as_posix() for p in (source / "trapdoor").rglob("*") if p.is_file()
    }
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            n for n in archive.namelist() if n.startswith("trapdoor/") and not n.endswith("/")
        }
    assert expected - shipped == set(), "files missing from the wheel (package-data?)"
    assert any(n.endswith(".mako") for n in shipped)


@pytest.mark.slow
def test_the_installed_wheel_creates_and_upgrades_its_databases_from_any_folder(
    installed_wheel: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _source, _wheel, site = installed_wheel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    out = _run([sys.executable, "-c", MIGRATE_PROBE, json.dumps(SERVICES)], elsewhere, env)
    report: dict[str, Any] = json.loads(out)

    assert Path(report["trapdoor"]).is_relative_to(site), "the checkout was imported, not the wheel"
    assert set(report["services"]) == set(SERVICES)
    for service, found in report["services"].items():
        assert Path(found["migrations"]).is_relative_to(site), service
        first, second = found["first"], found["second"]
        assert found["declared"], f"{service}: its models declare no table"
        assert set(found["declared"]) <= set(first["tables"]), f"{service}: tables missing"
        (version_table,) = first["versions"]
        assert first["versions"][version_table] == [found["head"]], f"{service}: not at head"
        assert second == first, f"{service}: a second upgrade changed the database"


def test_the_core_install_leaves_plotting_data_sets_and_benchmarks_to_extras() -> None:
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {_requirement_name(r) for r in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }
    assert core & HEAVY_DISTRIBUTIONS == set()
    assert {"scikit-learn", "mlxtend", "matplotlib"} <= extras["demo"]
    assert "phe" in extras["bench"]


def test_the_services_import_none_of_the_extras(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    loaded = set(json.loads(_run([sys.executable, "-c", IMPORT_PROBE], tmp_path, env)))
    assert {"trapdoor.participant.node", "trapdoor.kgc.app", "trapdoor.ps.app"} <= loaded
    assert {m for m in loaded if m.split(".")[0] in HEAVY_MODULES} == set()
