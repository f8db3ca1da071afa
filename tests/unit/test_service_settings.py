"""One settings class per service, each read from its own ``TRAPDOOR_<SERVICE>_*`` prefix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import trapdoor.kgc.app
import trapdoor.participant.node_api
import trapdoor.ps.app
from trapdoor.kgc.app import config_from_env as kgc_config_from_env
from trapdoor.kgc.settings import KgcSettings
from trapdoor.participant.settings import NodeSettings
from trapdoor.ps.app import config_from_env as ps_config_from_env
from trapdoor.ps.settings import PsSettings
from trapdoor.service.settings import ServiceSettings, SettingsError

SETTINGS = (KgcSettings, PsSettings, NodeSettings)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "RELIABILITY.md"


def test_settings_are_read_with_the_service_prefix_and_typed(tmp_path: Path) -> None:
    settings = KgcSettings.from_env(
        {
            "TRAPDOOR_KGC_DATABASE_URL": "postgresql+psycopg://kgc@db/kgc",
            "TRAPDOOR_KGC_ADMIN_TOKEN": "kgc-admin",
            "TRAPDOOR_KGC_PASSPHRASE_FILE": str(tmp_path / "pass"),
            "TRAPDOOR_KGC_DEMO": "Yes",
            "TRAPDOOR_KGC_PORT": "9700",
            "TRAPDOOR_KGC_RELEASE_WORKERS": "3",
            "DATABASE_URL": "sqlite:///no-prefix.db",
        }
    )
    assert settings.database_url == "postgresql+psycopg://kgc@db/kgc"
    assert settings.admin_token == "kgc-admin"
    assert settings.passphrase is None and settings.passphrase_file == tmp_path / "pass"
    assert settings.demo is True and settings.port == 9700 and settings.release_workers == 3
    ps = PsSettings.from_env({"TRAPDOOR_PS_BACKGROUND": "off", "TRAPDOOR_PS_KGC_URL": "http://k"})
    assert ps.background is False and ps.kgc_url == "http://k"


def test_unset_or_empty_variables_keep_the_defaults() -> None:
    assert KgcSettings.from_env({}) == KgcSettings()
    empty = {NodeSettings.variable(f.name): "" for f in dataclasses.fields(NodeSettings)}
    assert NodeSettings.from_env(empty) == NodeSettings()
    assert (KgcSettings().port, PsSettings().port, NodeSettings().port) == (8700, 8600, 8800)


@pytest.mark.parametrize(
    ("settings", "variable", "value", "message"),
    [
        (KgcSettings, "TRAPDOOR_KGC_PORT", "http", "must be an integer, not 'http'"),
        (KgcSettings, "TRAPDOOR_KGC_RELEASE_WORKERS", "0", "must be >= 1, not 0"),
        (KgcSettings, "TRAPDOOR_KGC_DEMO", "sometimes", "must be one of 1/0, true/false"),
        (PsSettings, "TRAPDOOR_PS_PORT", "65536", "must be between 0 and 65535, not 65536"),
        (PsSettings, "TRAPDOOR_PS_MAX_CONTENT_LENGTH", "1.5", "must be an integer"),
        (NodeSettings, "TRAPDOOR_NODE_PORT", "-1", "must be between 0 and 65535"),
    ],
)
def test_a_bad_value_names_its_variable(
    settings: type[ServiceSettings], variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings.from_env({variable: value})
    assert str(info.value).startswith(f"{variable} ")
    assert message in str(info.value)


def test_a_kgc_setting_does_not_leak_into_the_ps_or_the_node() -> None:
    environ = {KgcSettings.variable(f.name): "kgc-only" for f in dataclasses.fields(KgcSettings)}
    environ["TRAPDOOR_ADMIN_TOKEN"] = "the old shared token"  # read by no service now
    assert PsSettings.from_env(environ) == PsSettings()
    assert NodeSettings.from_env(environ) == NodeSettings()
    assert ps_config_from_env(environ)["ADMIN_TOKEN"] is None
    kgc = kgc_config_from_env({"TRAPDOOR_KGC_PASSPHRASE": "p", "TRAPDOOR_ADMIN_TOKEN": "shared"})
    assert kgc["ADMIN_TOKEN"] is None and kgc["PASSPHRASE"] == "p"


def test_secrets_stay_out_of_repr() -> None:
    text = repr(PsSettings(admin_token="ps-admin-secret", passphrase="ps-pass-secret"))
    assert "secret" not in text and "PsSettings(" in text


def test_each_variable_belongs_to_one_service_and_is_documented() -> None:
    variables = [cls.variable(f.name) for cls in SETTINGS for f in dataclasses.fields(cls)]
    assert len(variables) == len(set(variables))
    for cls in SETTINGS:
        assert all(v.startswith(cls.PREFIX) for v in map(cls.variable, cls.__dataclass_fields__))
    documented = set(re.findall(r"TRAPDOOR_(?:KGC|PS|NODE)_[A-Z_]+", DOCS.read_text()))
    assert set(variables) - documented == set(), f"add them to {DOCS.name}"


def test_the_apps_defaults_are_the_settings_defaults() -> None:
    assert trapdoor.kgc.app.DEFAULTS["DATABASE_URL"] == KgcSettings().database_url
    assert trapdoor.ps.app.DEFAULTS["DATABASE_URL"] == PsSettings().database_url
    node_defaults = trapdoor.participant.node_api.DEFAULTS
    assert node_defaults["DATABASE_URL"] == NodeSettings().database_url
    assert trapdoor.ps.app.DEFAULTS["BACKGROUND"] is False  # in-process apps: no ticker
    assert ps_config_from_env({})["BACKGROUND"] is True  # gunicorn workers: the ticker runs


def test_a_setting_of_an_unsupported_type_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd(ServiceSettings):
        PREFIX = "TRAPDOOR_ODD_"
        weights: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="cannot be of type"):
        Odd.from_env({"TRAPDOOR_ODD_WEIGHTS": "1,2"})
