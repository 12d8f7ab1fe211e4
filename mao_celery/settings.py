"""Node configuration: the one place that reads `MAO_*` variables and the optional config file.

Precedence: arguments > environment (`MAO_*`) > config file named by `MAO_CONFIG` > defaults.
The config file is either TOML (`mao.toml`: keys named like the fields below, e.g. `importdir`,
`etcd_endpoints = ["127.0.0.1:2379"]`) or the original MAO's `config.ini` shape:
`[WORKING_ENVIRONMENT] importdir`, `[ETCD] host`, `port` (and, ours, `endpoints`).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mao_celery.exceptions import InvalidInput, describe_validation_error
from mao_celery.models import (
    DOCKER_MIN_CPUS,
    MemoryBytes,
    TimeoutS,
    validate_network,
    validate_node_id,
)
from mao_celery.text import redact_url

DEFAULT_IMPORTDIR = Path.home() / ".local" / "share" / "mao" / "importdir"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
# A host name, IPv4 address or bracketed IPv6 address: no user info ("@") nor path.
ETCD_HOST_RE = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
BEAT_MAX_LOOP_INTERVAL_S = 5
"""Seconds between two beat ticks at most: the beat lock's timeout must be longer."""
SINCE_DURATION_RE = re.compile(r"(?P<count>[0-9]{1,9})(?P<unit>[smhd])")
SINCE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# MAO_TOOL_USER: numeric uid:gid (names would need the image's /etc/passwd).
TOOL_USER_RE = re.compile(r"(?P<uid>[0-9]{1,10}):(?P<gid>[0-9]{1,10})")

# Limits of the services the settings end up in (`TimeoutS`, `MemoryBytes` and the Docker
# limits: models.py).
ETCD_MAX_LEASE_TTL_S = 9_000_000_000
"""etcd's largest lease TTL in seconds (`lease.MaxLeaseTTL`); a longer one is refused by etcd."""


def _read_config_file(path: Path) -> dict[str, Any]:
    """Read `path` (TOML, or INI in the original MAO's shape) into field values.

    Raises:
        InvalidInput: the file is missing or cannot be parsed.
    """
    import configparser  # here, not at the top: most nodes have no config file (start-up time)
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"config file {path} cannot be read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}): save it as UTF-8"
        ) from e
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"config file {path} is not valid TOML: {e}") from e
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as e:
        raise InvalidInput(f"config file {path} is not valid INI: {e}") from e
    values: dict[str, Any] = {}
    if parser.has_option("WORKING_ENVIRONMENT", "importdir"):
        values["importdir"] = parser.get("WORKING_ENVIRONMENT", "importdir")
    if parser.has_option("ETCD", "endpoints"):
        values["etcd_endpoints"] = parser.get("ETCD", "endpoints")
    elif parser.has_option("ETCD", "host"):
        port = parser.get("ETCD", "port", fallback="2379")
        values["etcd_endpoints"] = f"{parser.get('ETCD', 'host')}:{port}"
    return values


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by `MAO_CONFIG` (or the `config` argument)."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _read_config_file(Path(self._path)) if self._path else {}


@dataclass(frozen=True)
class RunLimits:
    """The limits of one tool container: seconds before it is killed, bytes of memory, CPUs
    (None: no CPU limit)."""

    timeout_s: float
    memory_bytes: int
    cpus: float | None


class Settings(BaseSettings):
    """Everything a node is configured with. Times are in seconds, sizes in bytes."""

    model_config = SettingsConfigDict(
        env_prefix="MAO_", extra="ignore", frozen=True, allow_inf_nan=False
    )

    config: Path | None = None
    etcd_endpoints: Annotated[list[str], NoDecode] = ["127.0.0.1:2379"]
    etcd_prefix: str = "/mao/"
    etcd_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    # etcd authentication and TLS (README "Joining a federation"); TLS is on when a CA or a
    # client certificate is set (no CA: the system's roots).
    etcd_user: str | None = Field(default=None, min_length=1)
    etcd_password: SecretStr | None = None
    etcd_password_file: Path | None = None
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    importdir: Path = DEFAULT_IMPORTDIR
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253)
    spike_window: int = Field(default=2, ge=1, le=1000)
    spike_threshold_pct: float = Field(default=20.0, gt=0)
    run_timeout_s: TimeoutS = 3600.0
    run_memory_bytes: MemoryBytes = 1 << 30
    run_cpus: float | None = Field(default=None, ge=DOCKER_MIN_CPUS)
    run_timeout_max_s: TimeoutS | None = None
    run_memory_max_bytes: MemoryBytes | None = None
    run_cpus_max: float | None = Field(default=None, ge=DOCKER_MIN_CPUS)
    tool_user: str = "10001:10001"
    tool_network: str = "none"
    tool_networks_allowed: Annotated[list[str], NoDecode] = ["none"]
    git_credentials_file: Path | None = None
    git_timeout_s: float = Field(default=300.0, gt=0, le=24 * 3600)
    git_low_speed_limit_bps: int = Field(default=1000, ge=1, le=1 << 40)
    git_low_speed_time_s: int = Field(default=30, ge=1, le=3600)
    git_push: bool = False  # push every tool's run commits (dataplane.push_branch)
    run_history: int = Field(default=50, ge=1, le=100_000)
    notification_retention_s: int = Field(default=30 * 24 * 3600, ge=60, le=ETCD_MAX_LEASE_TTL_S)
    broker_visibility_timeout_s: TimeoutS | None = None
    heartbeat_interval_s: float = Field(default=10.0, gt=0, le=3600)
    member_ttl_s: int = Field(default=30, ge=2, le=ETCD_MAX_LEASE_TTL_S)
    beat_lock_timeout_s: int = Field(default=30, gt=BEAT_MAX_LOOP_INTERVAL_S, le=3600)
    scheduled_retry_backoff_s: float = Field(default=2.0, gt=0, le=3600)
    # The worker machine: its host queue and importdir (ARCHITECTURE.md, "One run, one machine").
    worker_host: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    host_lost_after_s: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    # Container steps waited on at once by the machine's container worker (threads; worker.sh):
    # 100 long tools leave room for short ones; 0: no container worker, the worker's own pool
    # processes take them (one each).
    container_slots: int = Field(default=128, ge=0, le=1000)
    # Notifications (periodic.py) and alerts to people (alerts.py).
    listener_since: str = "now"
    notify_urls: Annotated[list[str], NoDecode] = []
    notify_command: str | None = None

    @field_validator("etcd_endpoints", "tool_networks_allowed", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("etcd_endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one etcd endpoint (host:port) is needed")
        for endpoint in value:
            scheme, has_scheme, rest = endpoint.partition("://")
            if has_scheme and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
                raise ValueError(
                    f"etcd endpoint {redact_url(endpoint)!r} has a scheme: drop the scheme "
                    f"({scheme}://), e.g. {redact_url(rest.rstrip('/'))}"
                )
            host, sep, port = endpoint.rpartition(":")
            if not (
                sep
                and ETCD_HOST_RE.fullmatch(host)
                and port.isascii()
                and port.isdigit()
                and 0 < int(port) < 65536
            ):
                raise ValueError(f"etcd endpoint {redact_url(endpoint)!r} is not host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(f"{redact_url(value)!r} is not a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix" and not re.fullmatch(r"/?|/\d+", parts.path):
            raise ValueError(f"{redact_url(value)!r}: the path must be a database number, e.g. /0")
        try:
            port = parts.port  # urlsplit checks the port only when it is read
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{redact_url(value)!r}: the port must be 1-65535")
        return value

    @field_validator("notify_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    @field_validator("notify_urls")
    @classmethod
    def _check_notify_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", url):
                raise ValueError(f"notify URL {mask_notify_url(url)!r} is not an apprise URL")
        return value

    @field_validator("notify_command")
    @classmethod
    def _check_notify_command(cls, value: str | None) -> str | None:
        if value is not None:
            notify_argv(value)
        return value

    @field_validator("listener_since")
    @classmethod
    def _check_since(cls, value: str) -> str:
        since_start(value, datetime.now(UTC))
        return value

    @field_validator("run_cpus", "run_cpus_max")
    @classmethod
    def _check_cpus(cls, value: float | None) -> float | None:
        available = os.cpu_count() or 1
        if value is not None and value > available:
            raise ValueError(
                f"{value:g} CPUs asked, this host has {available}: Docker accepts "
                f"{DOCKER_MIN_CPUS}-{available}"
            )
        return value

    @field_validator("tool_user")
    @classmethod
    def _check_tool_user(cls, value: str) -> str:
        match = TOOL_USER_RE.fullmatch(value)
        if match is None or int(match["uid"]) == 0 or int(match["gid"]) == 0:
            raise ValueError(
                f"tool user {value!r}: use a non-root numeric uid:gid, e.g. 10001:10001"
            )
        return value

    @field_validator("tool_network", "tool_networks_allowed")
    @classmethod
    def _check_networks(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            return validate_network(value)
        return [validate_network(network) for network in value]

    @property
    def tool_uid_gid(self) -> tuple[int, int]:
        """The uid and gid tool containers run as, and that owns their data directories."""
        uid, gid = self.tool_user.split(":")
        return int(uid), int(gid)

    @field_validator("node_id", "worker_host")
    @classmethod
    def _check_node_id(cls, value: str) -> str:
        return validate_node_id(value)

    @field_validator("etcd_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/"):
            raise ValueError(f"etcd prefix {value!r} must start and end with '/'")
        return value

    @model_validator(mode="after")
    def _check_member_ttl(self) -> Settings:
        if self.member_ttl_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"member_ttl_s {self.member_ttl_s} must be longer than heartbeat_interval_s "
                f"{self.heartbeat_interval_s:g}, or a live node drops out of the members"
            )
        return self

    @model_validator(mode="after")
    def _check_etcd_security(self) -> Settings:
        if self.etcd_password is not None and self.etcd_password_file is not None:
            raise ValueError("set etcd_password or etcd_password_file, not both")
        has_password = self.etcd_password is not None or self.etcd_password_file is not None
        if has_password != (self.etcd_user is not None):
            raise ValueError(
                "etcd_user needs etcd_password (or etcd_password_file), and a password a user"
            )
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise ValueError("etcd_cert and etcd_key go together (the client certificate)")
        return self

    @property
    def etcd_tls(self) -> bool:
        """Whether etcd is reached over TLS: a CA or a client certificate is set."""
        return self.etcd_ca is not None or self.etcd_cert is not None

    def etcd_password_value(self) -> str | None:
        """The etcd password: `MAO_ETCD_PASSWORD`, else the first line of
        `MAO_ETCD_PASSWORD_FILE` (read at each call, so a new password needs no restart), else
        None.

        Raises:
            InvalidInput: the password file cannot be read; the message names the setting.
        """
        if self.etcd_password is not None:
            return self.etcd_password.get_secret_value()
        if self.etcd_password_file is None:
            return None
        try:
            text = self.etcd_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInput(
                f"MAO_ETCD_PASSWORD_FILE {self.etcd_password_file} cannot be read: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from e
        lines = text.splitlines()
        return lines[0] if lines else ""

    @model_validator(mode="after")
    def _check_maxima(self) -> Settings:
        pairs = (
            ("run_timeout_s", self.run_timeout_s, "run_timeout_max_s", self.run_timeout_max_s),
            (
                "run_memory_bytes",
                self.run_memory_bytes,
                "run_memory_max_bytes",
                self.run_memory_max_bytes,
            ),
            ("run_cpus", self.run_cpus, "run_cpus_max", self.run_cpus_max),
        )
        for name, value, max_name, maximum in pairs:
            if value is not None and maximum is not None and value > maximum:
                raise ValueError(
                    f"{name} {value:g} is above {max_name} {maximum:g}: the default must be "
                    "within the maximum"
                )
        return self

    @property
    def timeout_max_s(self) -> float:
        """The longest run timeout a tool may ask for on this node, in seconds
        (`MAO_RUN_TIMEOUT_MAX_S`; unset: the default `MAO_RUN_TIMEOUT_S`)."""
        return self.run_timeout_max_s or self.run_timeout_s

    @property
    def memory_max_bytes(self) -> int:
        """The largest memory limit a tool may ask for on this node, in bytes
        (`MAO_RUN_MEMORY_MAX_BYTES`; unset: the default `MAO_RUN_MEMORY_BYTES`)."""
        return self.run_memory_max_bytes or self.run_memory_bytes

    @property
    def cpus_max(self) -> float:
        """The most CPUs a tool may ask for on this node (`MAO_RUN_CPUS_MAX`; unset: the default
        `MAO_RUN_CPUS`, or when that is unset too, the host's CPUs)."""
        return self.run_cpus_max or self.run_cpus or float(os.cpu_count() or 1)

    @property
    def cpus_default(self) -> float | None:
        """The CPU limit of a tool that asks for none: `MAO_RUN_CPUS`, else `MAO_RUN_CPUS_MAX`
        when only that is set (a maximum applies to every tool), else None (no limit)."""
        return self.run_cpus or self.run_cpus_max

    @property
    def visibility_timeout_s(self) -> float:
        """The broker's visibility timeout, in seconds: longer than the longest container run a
        tool may ask for (`timeout_max_s`, + 10 min)."""
        return self.broker_visibility_timeout_s or self.timeout_max_s + 600.0

    def run_limits(
        self, timeout_s: float | None, memory_bytes: int | None, cpus: float | None
    ) -> RunLimits:
        """The limits a tool's container gets on this node: each one the tool asks for (None:
        the node's default), checked against the node's maximum.

        Raises:
            InvalidInput: a limit asked for is above this node's maximum; the message names the
                limit, the maximum and its setting.
        """
        asked = (
            ("timeout", timeout_s, self.timeout_max_s, " s", "MAO_RUN_TIMEOUT_MAX_S"),
            ("memory", memory_bytes, self.memory_max_bytes, " bytes", "MAO_RUN_MEMORY_MAX_BYTES"),
            ("cpus", cpus, self.cpus_max, " CPUs", "MAO_RUN_CPUS_MAX"),
        )
        for what, value, maximum, unit, setting in asked:
            if value is not None and value > maximum:
                raise InvalidInput(
                    f"{what} {value:g}{unit} is above this node's maximum {maximum:g}{unit} "
                    f"({setting}): ask for less, or raise {setting} on the node"
                )
        return RunLimits(
            timeout_s=timeout_s or self.run_timeout_s,
            memory_bytes=memory_bytes or self.run_memory_bytes,
            cpus=cpus or self.cpus_default,
        )

    def effective_values(self) -> dict[str, Any]:
        """The settings as JSON data with the derived values filled in (the visibility timeout,
        the maxima, the CPU default), passwords in URLs and the etcd password masked."""
        values = self.model_dump(mode="json")
        values["redis_url"] = redact_url(values["redis_url"])
        values["notify_urls"] = [mask_notify_url(url) for url in self.notify_urls]
        values["broker_visibility_timeout_s"] = self.visibility_timeout_s
        values["run_timeout_max_s"] = self.timeout_max_s
        values["run_memory_max_bytes"] = self.memory_max_bytes
        values["run_cpus_max"] = self.cpus_max
        values["run_cpus"] = self.cpus_default
        return values

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = init_settings().get("config") or os.environ.get("MAO_CONFIG")
        return init_settings, env_settings, _ConfigFileSource(settings_cls, path)


def mask_notify_url(url: str) -> str:
    """An apprise URL as shown to people: its scheme only (tokens and passwords sit anywhere
    in such URLs), e.g. `slack://...`."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://..." if sep else "..."


def notify_argv(command: str) -> list[str]:
    """`MAO_NOTIFY_COMMAND` split into argv as a POSIX shell would (no shell runs it).

    Raises:
        ValueError: the command is empty or its quotes do not close.
    """
    argv = shlex.split(command)
    if not argv:
        raise ValueError("the notify command is empty")
    return argv


def since_start(value: str, now: datetime) -> datetime | None:
    """Where a new node's listener starts (`MAO_LISTENER_SINCE`), at time `now` (aware): "now"
    gives `now`; "all" gives None (every notification retained); a duration `<N>s|m|h|d` gives
    that long before `now`; an ISO 8601 date or time (naive: UTC) gives that time.

    Raises:
        ValueError: `value` is none of these.
    """
    if value in ("now", "all"):
        return now if value == "now" else None
    match = SINCE_DURATION_RE.fullmatch(value)
    if match:
        return now - timedelta(seconds=int(match["count"]) * SINCE_UNITS_S[match["unit"]])
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"listener start {value!r} is not now, all, a duration (e.g. 2h, 7d) or an ISO "
            "date (e.g. 2025-01-31)"
        ) from None
    return since if since.tzinfo else since.replace(tzinfo=UTC)


def load_settings(**overrides: Any) -> Settings:
    """Build the node's settings from arguments, environment and config file.

    Raises:
        InvalidInput: a value is invalid or the config file cannot be read; the message names it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise InvalidInput(f"invalid setting {describe_validation_error(e)}") from e
