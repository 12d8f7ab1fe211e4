"""Unit tests of mao_celery.settings: defaults, `MAO_*` variables, config files and precedence."""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery.exceptions import InvalidInput
from mao_celery.models import MAX_WAIT_S
from mao_celery.settings import (
    DEFAULT_IMPORTDIR,
    ETCD_MAX_LEASE_TTL_S,
    load_settings,
)

ORIGINAL_CONFIG_INI = """\
[WORKING_ENVIRONMENT]
importdir = /srv/mao/importdir

[ETCD]
host = 127.0.0.1
port = 2389
"""


@pytest.fixture(autouse=True)
def no_mao_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without any `MAO_*` variable."""
    for name in list(os.environ):
        if name.startswith("MAO_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# defaults and environment


def test_defaults() -> None:
    settings = load_settings()
    assert settings.etcd_endpoints == ["127.0.0.1:2379"]
    assert settings.etcd_prefix == "/mao/"
    assert settings.node_id == socket.gethostname()
    assert settings.importdir == DEFAULT_IMPORTDIR
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.config is None


def test_etcd_endpoints_from_the_environment_are_split_on_commas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAO_ETCD_ENDPOINTS", "a:1, b:2")
    assert load_settings().etcd_endpoints == ["a:1", "b:2"]


@pytest.mark.parametrize("endpoints", ["a", "a:0", "a:99999", ":1", "", " , ", "a:x", "a:-1"])
def test_bad_etcd_endpoints_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, endpoints: str
) -> None:
    monkeypatch.setenv("MAO_ETCD_ENDPOINTS", endpoints)
    with pytest.raises(InvalidInput, match=r"^invalid setting etcd_endpoints: "):
        load_settings()


@pytest.mark.parametrize(
    "endpoints",
    # str.isdigit() holds for these, but they are not a port number a client can dial.
    ["a:\u0661\u0662", "a:\u00b2", "a:\uff11"],
)
def test_non_ascii_digit_ports_are_refused_as_not_host_port(endpoints: str) -> None:
    with pytest.raises(InvalidInput, match=r"^invalid setting etcd_endpoints: .* is not host:port"):
        load_settings(etcd_endpoints=endpoints)


@pytest.mark.parametrize("port", [1, 2379, 65535])
def test_etcd_endpoint_ports_within_range_are_accepted(port: int) -> None:
    assert load_settings(etcd_endpoints=f"h:{port}").etcd_endpoints == [f"h:{port}"]


@pytest.mark.parametrize("prefix", ["/mao", "mao/", "mao", ""])
def test_etcd_prefix_must_start_and_end_with_a_slash(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    monkeypatch.setenv("MAO_ETCD_PREFIX", prefix)
    with pytest.raises(InvalidInput, match=r"^invalid setting etcd_prefix: "):
        load_settings()


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAO_NODE_ID", "from-env")
    assert load_settings(node_id="from-argument").node_id == "from-argument"


# config files


def test_original_config_ini_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAO_CONFIG", str(write(tmp_path / "config.ini", ORIGINAL_CONFIG_INI)))
    settings = load_settings()
    assert settings.importdir == Path("/srv/mao/importdir")
    assert settings.etcd_endpoints == ["127.0.0.1:2389"]


def test_config_ini_etcd_port_defaults_to_2379(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAO_CONFIG", str(write(tmp_path / "config.ini", "[ETCD]\nhost = h\n")))
    assert load_settings().etcd_endpoints == ["h:2379"]


def test_config_ini_etcd_endpoints_win_over_host_and_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ini = ORIGINAL_CONFIG_INI + "endpoints = a:1,b:2\n"
    monkeypatch.setenv("MAO_CONFIG", str(write(tmp_path / "config.ini", ini)))
    assert load_settings().etcd_endpoints == ["a:1", "b:2"]


def test_mao_toml_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = (
        'importdir = "/srv/toml"\n'
        'etcd_endpoints = ["a:1", "b:2"]\n'
        'etcd_prefix = "/mao-test/"\n'
        "run_timeout_s = 60\n"
    )
    monkeypatch.setenv("MAO_CONFIG", str(write(tmp_path / "mao.toml", toml)))
    settings = load_settings()
    assert settings.importdir == Path("/srv/toml")
    assert settings.etcd_endpoints == ["a:1", "b:2"]
    assert settings.etcd_prefix == "/mao-test/"
    assert settings.run_timeout_s == 60.0


def test_config_argument_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "mao.toml", 'node_id = "from-file"\n')
    assert load_settings(config=path).node_id == "from-file"


def test_the_environment_wins_over_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAO_CONFIG", str(write(tmp_path / "config.ini", ORIGINAL_CONFIG_INI)))
    monkeypatch.setenv("MAO_IMPORTDIR", "/srv/env")
    settings = load_settings()
    assert settings.importdir == Path("/srv/env")
    assert settings.etcd_endpoints == ["127.0.0.1:2389"]


def test_a_missing_config_file_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("MAO_CONFIG", str(missing))
    with pytest.raises(
        InvalidInput, match=f"^config file {re.escape(str(missing))} cannot be read"
    ):
        load_settings()


@pytest.mark.parametrize(
    ("file_name", "text", "kind"),
    [
        ("mao.toml", "importdir = [\n", "TOML"),
        ("mao.toml", "importdir\n", "TOML"),
        ("config.ini", "importdir = /srv\n", "INI"),
        ("config.ini", "[ETCD\nhost = h\n", "INI"),
        ("config.ini", "[ETCD]\nhost = a\nhost = b\n", "INI"),
    ],
)
def test_a_malformed_config_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, file_name: str, text: str, kind: str
) -> None:
    path = write(tmp_path / file_name, text)
    monkeypatch.setenv("MAO_CONFIG", str(path))
    with pytest.raises(
        InvalidInput, match=f"^config file {re.escape(str(path))} is not valid {kind}: "
    ):
        load_settings()


def test_an_invalid_value_in_the_file_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAO_CONFIG", str(write(tmp_path / "mao.toml", 'etcd_prefix = "/x"\n')))
    with pytest.raises(InvalidInput, match=r"^invalid setting etcd_prefix: "):
        load_settings()


# visibility timeout


def test_visibility_timeout_is_run_timeout_plus_ten_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().visibility_timeout_s == 3600.0 + 600.0
    monkeypatch.setenv("MAO_RUN_TIMEOUT_S", "120")
    assert load_settings().visibility_timeout_s == 720.0


def test_visibility_timeout_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAO_RUN_TIMEOUT_S", "120")
    monkeypatch.setenv("MAO_BROKER_VISIBILITY_TIMEOUT_S", "50")
    assert load_settings().visibility_timeout_s == 50.0


@pytest.mark.parametrize("url", ["redis://u:S3cret@h:abc/0", "redis://h:99999/0", "redis://h:0/0"])
def test_a_redis_url_with_a_bad_port_is_one_line_without_its_password(url: str) -> None:
    with pytest.raises(InvalidInput, match="the port must be 1-65535") as refused:
        load_settings(redis_url=url)

    assert "S3cret" not in str(refused.value)


@pytest.mark.parametrize("endpoint", ["alice:S3cret@127.0.0.1:2379", "h/x:2379", "a b:1"])
def test_an_etcd_endpoint_with_user_info_or_a_path_is_refused_masked(endpoint: str) -> None:
    with pytest.raises(InvalidInput, match="is not host:port") as refused:
        load_settings(etcd_endpoints=endpoint)

    assert "S3cret" not in str(refused.value)


def test_an_ipv6_etcd_endpoint_is_accepted() -> None:
    assert load_settings(etcd_endpoints="[::1]:2379").etcd_endpoints == ["[::1]:2379"]


# limits of the services the settings end up in


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_timeout_s", "inf"),
        ("run_timeout_s", "nan"),
        ("run_timeout_s", "1e308"),
        ("broker_visibility_timeout_s", "-inf"),
        ("spike_threshold_pct", "inf"),
        ("etcd_timeout_s", "1e9"),
        ("notification_retention_s", "9000000001"),
        ("run_memory_bytes", str(1 << 63)),
        ("run_cpus", "0.001"),
        ("git_timeout_s", "0"),
        ("git_low_speed_time_s", "0"),
    ],
)
def test_values_beyond_a_services_limits_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"MAO_{field.upper()}", value)
    with pytest.raises(InvalidInput, match=rf"^invalid setting {field}: "):
        load_settings()


@given(st.floats(min_value=0, exclude_min=True, max_value=MAX_WAIT_S, allow_nan=False))
def test_every_finite_run_timeout_within_the_limit_fits_pythons_timeouts(value: float) -> None:
    settings = load_settings(run_timeout_s=value)
    # the tool lock lives visibility timeout + run timeout + 5 min: still a valid thread timeout
    assert settings.visibility_timeout_s + settings.run_timeout_s + 300 < threading.TIMEOUT_MAX


def test_the_largest_etcd_lease_is_accepted() -> None:
    assert load_settings(notification_retention_s=ETCD_MAX_LEASE_TTL_S).notification_retention_s


def test_more_cpus_than_the_host_has_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"CPUs asked, this host has \d+: Docker accepts"):
        load_settings(run_cpus=(os.cpu_count() or 1) + 1)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:2379", "https://etcd:2379/"])
def test_an_etcd_endpoint_with_a_scheme_is_refused_with_the_fix(endpoint: str) -> None:
    host_port = endpoint.split("://")[1].rstrip("/")
    with pytest.raises(
        InvalidInput, match=re.escape("drop the scheme") + ".*" + re.escape(host_port)
    ):
        load_settings(etcd_endpoints=endpoint)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_bytes(b"[ETCD]\nhost = caf\xe9\n")
    with pytest.raises(InvalidInput) as refused:
        load_settings(config=path)
    assert str(refused.value) == (
        f"config file {path} is not UTF-8 text (byte 0xe9 at offset 17): save it as UTF-8"
    )


def test_a_member_lease_no_longer_than_the_heartbeat_interval_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must be longer than heartbeat_interval_s"):
        load_settings(heartbeat_interval_s=10, member_ttl_s=10)


def test_a_beat_lock_timeout_within_a_beat_tick_is_refused() -> None:
    with pytest.raises(InvalidInput, match="beat_lock_timeout_s"):
        load_settings(beat_lock_timeout_s=5)
