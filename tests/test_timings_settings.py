from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ohip_stream import ConfigurationError, EventStream, OAuthClientCredentials, OAuthPassword
from ohip_stream._settings import OhipSettings
from ohip_stream._timings import Timings


def test_defaults_are_oracles_figures() -> None:
    t = Timings()
    assert t.ping_interval == 10
    assert t.rotate_after == 3000
    assert t.complete_gap == 10
    assert t.lockout == 120
    assert t.drop_wait == 4
    assert t.upgrade_budget == (150, 120.0)
    assert t.max_lockouts is None


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"ping_interval": 16}, "ping_interval"),
        ({"lockout": 0}, "lockout"),
        ({"backoff_min": 5, "backoff_max": 1}, "backoff_min"),
        ({"upgrade_budget": (0, 10)}, "upgrade_budget"),
        ({"max_lockouts": 0}, "max_lockouts"),
        ({"liveness_timeout": 5, "ping_interval": 10}, "liveness_timeout"),
        ({"nope": 1}, "nope"),
    ],
)
def test_bad_timings_are_configuration_errors(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Timings(**values)  # type: ignore[arg-type]


def test_values_below_oracles_log_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ohip_stream"):
        Timings(complete_gap=1.0)
    assert "complete_gap=1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ohip_stream"):
        Timings()
    assert caplog.text == ""


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"OHIP_{name}", value)


BASE = {
    "GATEWAY_URL": "https://gw.example.com",
    "APP_KEY": "41ecd082-8997-4c69-af34-2f72b83645ff",
    "CHAIN_CODE": "OHIPCN",
    "CLIENT_ID": "client",
    "CLIENT_SECRET": "s3cr3t-value",
}


def test_client_credentials_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    _env(monkeypatch, **BASE, ENTERPRISE_ID="ENT1", TIMINGS__PING_INTERVAL="5")
    settings = OhipSettings.load()
    assert isinstance(settings.token_provider(), OAuthClientCredentials)
    assert settings.make_timings().ping_interval == 5
    assert "s3cr3t-value" not in repr(settings)
    stream = EventStream.from_env()
    assert stream.timings.ping_interval == 5
    assert "41ecd082" not in repr(stream)


def test_password_grant_from_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    lines = [f"OHIP_{k}={v}" for k, v in BASE.items()]
    lines += ["OHIP_USERNAME=user", "OHIP_PASSWORD=pw-123"]
    (tmp_path / ".env").write_text("\n".join(lines))
    assert isinstance(OhipSettings.load().token_provider(), OAuthPassword)


def test_both_grants_at_once_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    _env(monkeypatch, **BASE, ENTERPRISE_ID="ENT1", USERNAME="u", PASSWORD="p")
    with pytest.raises(ConfigurationError, match="not both"):
        OhipSettings.load().token_provider()


def test_missing_variables_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [*BASE, "ENTERPRISE_ID", "USERNAME", "PASSWORD"]:
        monkeypatch.delenv(f"OHIP_{name}", raising=False)
    with pytest.raises(ConfigurationError, match="OHIP_GATEWAY_URL"):
        EventStream.from_env()


def test_bad_timing_variable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    _env(monkeypatch, **BASE, ENTERPRISE_ID="ENT1", TIMINGS__PING_INTERVAL="abc")
    with pytest.raises(ConfigurationError, match="OHIP_TIMINGS__PING_INTERVAL"):
        OhipSettings.load()


@pytest.mark.parametrize("value", ["x", "{", "10", '{"bogus": 1}'])
def test_a_bad_timings_group_variable_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _env(monkeypatch, **BASE, ENTERPRISE_ID="ENT1", TIMINGS=value)
    with pytest.raises(ConfigurationError, match="OHIP_TIMINGS") as caught:
        OhipSettings.load()
    assert "SettingsError" not in repr(caught.value)


def test_every_timings_field_has_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Values that differ from the defaults, one per field: each must arrive in Timings.
    monkeypatch.chdir(tmp_path)
    chosen: dict[str, object] = {}
    for name, info in Timings.model_fields.items():
        default = info.default
        if name == "upgrade_budget":
            chosen[name], text = (100, 60.0), "[100, 60]"
        elif name.startswith("max_"):
            chosen[name], text = 7, "7"
        elif name == "ping_interval":
            chosen[name], text = 12.0, "12"
        else:
            chosen[name] = float(default) * 2
            text = str(chosen[name])
        monkeypatch.setenv(f"OHIP_TIMINGS__{name.upper()}", text)
    timings = OhipSettings.load(env_file=None).make_timings()
    for name, value in chosen.items():
        assert getattr(timings, name) == value, name


def test_an_unknown_timings_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    _env(monkeypatch, **BASE, TIMINGS__PING_INTERVALL="5")
    with pytest.raises(ConfigurationError, match="OHIP_TIMINGS__PING_INTERVALL"):
        OhipSettings.load(env_file=None)


def test_an_unknown_override_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    _env(monkeypatch, **BASE, ENTERPRISE_ID="ENT1")
    overrides: dict[str, object] = {"chain_code": "OTHER", "bogus_option": True}
    with pytest.raises(ConfigurationError, match="bogus_option"):
        EventStream.from_env(**overrides)
    with pytest.raises(ConfigurationError, match="bogus_option"):
        OhipSettings.load(env_file=None).event_stream(**overrides)


def test_stream_overrides_lists_every_public_keyword_of_event_stream() -> None:
    import inspect

    from ohip_stream._settings import StreamOverrides

    test_hooks = {"clock", "sleep", "rng"}
    keywords = {
        name
        for name, parameter in inspect.signature(EventStream.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    declared = StreamOverrides.__optional_keys__
    assert declared == keywords - test_hooks
    assert not StreamOverrides.__required_keys__
