"""Data models of MAO and the validation rules for what enters the registry.

Every registry value is validated when written and again when read back from etcd (another
member may have written it with another client), so the rules live here, on the models.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mao_celery.exceptions import InvalidInput, describe_validation_error
from mao_celery.text import redact_url

# design.md §3: names become directory names under importdir, so nothing else passes.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

# Docker's reference grammar (distribution/reference, regexp.go).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?)"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::{_TAG})?(?:@{_DIGEST})?"
)
IMAGE_NAME_MAX = 255
NETWORK_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
# A node id becomes part of etcd keys (members, notifications): a host-name-like word.
NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# Run ids are uuid4 hex (enqueue.start_run) or a Celery task id without dashes (scheduled runs);
# they become Redis keys and container labels.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

M = TypeVar("M", bound=BaseModel)

# Limits of a tool's container (settings.py bounds the node's defaults and maxima with them too).
MAX_WAIT_S = threading.TIMEOUT_MAX / 8
"""Longest run timeout or visibility timeout, in seconds (about 36 years): the worker waits on
them with Python's timeouts (`threading.TIMEOUT_MAX`, about 292 years) and adds a few of them
together (a tool lock lives visibility timeout + run timeout + 5 min), so a sum stays below."""
DOCKER_MIN_MEMORY_BYTES = 16 << 20
"""Smallest memory limit we accept, in bytes (Docker's own minimum is 6 MiB; a tool needs more)."""
DOCKER_MAX_MEMORY_BYTES = (1 << 63) - 1
"""Docker keeps the memory limit as a signed 64-bit number of bytes."""
DOCKER_MIN_CPUS = 0.01
"""Docker's smallest CPU limit (`--cpus`); its largest is the number of CPUs of the host."""
MAX_CPUS = 4096.0
"""Largest CPU limit a registry entry may ask for (a node refuses more than it has)."""
_SIZE_RE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

GIT_URL_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
_TOKEN_AS_USER_SCHEMES = frozenset({"https", "http"})
_SCP_LIKE_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^:].*")
_SAFE_CHARS_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces or control characters


def validate_name(value: str) -> str:
    """Check a tool or dataset name: `[a-z0-9][a-z0-9._-]{0,63}` (design.md §3).

    Raises:
        ValueError: the name does not match; the message says why.
    """
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-64 of a-z 0-9 . _ - , starting with a letter or digit"
        )
    return value


def validate_network(value: str) -> str:
    """Check a Docker network mode a tool may ask for: `none`, `bridge`, `host` or a network name.

    Whether a node grants it is the node's choice (`MAO_TOOL_NETWORKS_ALLOWED`), not the model's.

    Raises:
        ValueError: not a Docker network name (`[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}`), e.g.
            `container:x`, which would share another container's network.
    """
    if not NETWORK_RE.fullmatch(value):
        raise ValueError(f"invalid network {value!r}: expected e.g. 'none' or 'bridge'")
    return value


def validate_image(value: str) -> str:
    """Check an image reference against Docker's reference grammar (name[:tag][@digest]).

    Raises:
        ValueError: not a valid reference, or its name is longer than 255 characters.
    """
    match = IMAGE_RE.fullmatch(value)
    if match is None or len(match["name"]) > IMAGE_NAME_MAX:
        raise ValueError(f"invalid image reference {value!r}: expected e.g. 'mao-demo:latest'")
    return value


def validate_git_url(value: str) -> str:
    """Check a git URL that will be handed to `git clone`.

    Accepted: `https://`, `http://`, `ssh://`, `git://`, `file://` URLs, scp-like
    `user@host:path`, and absolute paths. Refused: remote helpers such as `ext::` and `fd::`
    (they run commands), anything starting with `-` or holding a part that starts with `-`
    (git would read it as an option), spaces and control characters, and credentials: a password
    in any URL, or any user info in an http(s) URL (a token is given as the user name), since
    every member of the federation reads the registry. Credentials belong in the node's
    `MAO_GIT_CREDENTIALS_FILE`; `ssh://git@host/x` and `git@host:x` name an ssh user, no secret.

    Raises:
        ValueError: the URL is refused; the message says why and shows the URL through
            `text.redact_url`, so never a secret.
    """
    shown = redact_url(value)
    if "::" in value:
        raise ValueError(f"invalid git URL {shown!r}: remote helpers ('transport::') are refused")
    if not value or not _SAFE_CHARS_RE.fullmatch(value):
        raise ValueError(f"invalid git URL {shown!r}: empty or contains spaces/control characters")
    if any(part.startswith("-") for part in re.split(r"[/:@]", value)):
        raise ValueError(
            f"invalid git URL {shown!r}: a part starting with '-' looks like an option"
        )
    if value.startswith("/"):
        return value
    if _SCP_LIKE_RE.fullmatch(value) and "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError as e:
        raise ValueError(f"invalid git URL {shown!r}: {e}") from e
    if parts.scheme not in GIT_URL_SCHEMES:
        raise ValueError(
            f"invalid git URL {shown!r}: use https://, http://, ssh://, git://, file://, "
            "user@host:path or an absolute path"
        )
    if parts.password is not None or (
        parts.scheme in _TOKEN_AS_USER_SCHEMES and "@" in parts.netloc
    ):
        raise ValueError(
            f"invalid git URL {shown!r}: credentials are refused in registry URLs (every member "
            "reads them); put them in the node's MAO_GIT_CREDENTIALS_FILE (a git-credential-store "
            "file) or use ssh"
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(
            f"invalid git URL {shown!r}: a query or fragment ('?', '#') is refused (tokens in it "
            "would be read by every member); put credentials in MAO_GIT_CREDENTIALS_FILE"
        )
    if parts.scheme == "file":
        if not PurePosixPath(parts.path).is_absolute():
            raise ValueError(f"invalid git URL {shown!r}: file:// needs an absolute path")
    elif not parts.hostname:
        raise ValueError(f"invalid git URL {shown!r}: no host")
    return value


def validate_branch(value: str) -> str:
    """Check a git branch name as `git check-ref-format --branch` would, without running git:
    1-255 characters, no control character, space, `~^:?*[\\`, `..`, `@{`, no `/`-component
    starting with `.` or ending with `.lock`, not starting with `-` (an option) nor ending with
    `/` or `.`, and not `@`.

    Raises:
        ValueError: not a valid branch name.
    """
    bad = (
        not 0 < len(value) <= 255
        or value.startswith(("-", "/"))
        or value.endswith(("/", "."))
        or value == "@"
        or ".." in value
        or "@{" in value
        or "//" in value
        or any(ord(c) < 0x20 or c == "\x7f" or c in " ~^:?*[\\" for c in value)
        or any(part.startswith(".") or part.endswith(".lock") for part in value.split("/"))
    )
    if bad:
        raise ValueError(f"invalid branch name {value!r}: expected e.g. 'main' or 'data/v2'")
    return value


def validate_node_id(value: str) -> str:
    """Check a node id: `[A-Za-z0-9][A-Za-z0-9._-]{0,252}`, a host-name-like word (it becomes
    part of etcd keys and is shown in logs).

    Raises:
        ValueError: the id does not match.
    """
    if not NODE_ID_RE.fullmatch(value):
        raise ValueError(f"node id {value!r}: use letters, digits, '.', '_', '-'")
    return value


def validate_run_id(value: str) -> str:
    """Check a run id: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (uuid4 hex in practice).

    Raises:
        ValueError: the id does not match.
    """
    if not RUN_ID_RE.fullmatch(value):
        raise ValueError(f"invalid run id {value!r}: use 1-64 of letters, digits, '.', '_', '-'")
    return value


def parse_memory(value: str) -> int:
    """A memory size as Docker's `--memory` takes it, in bytes: a number of bytes, or with a
    binary unit `k`, `m`, `g`, `t` (e.g. `512m`, `1.5g`, `256MiB`).

    Raises:
        ValueError: not a size, or outside 16 MiB to 2^63-1 bytes.
    """
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid memory size {value!r}: expected e.g. 512m, 2g or a byte count")
    size = int(float(match["number"]) * _SIZE_UNITS[match["unit"].lower()])
    if not DOCKER_MIN_MEMORY_BYTES <= size <= DOCKER_MAX_MEMORY_BYTES:
        raise ValueError(f"memory size {value!r} is outside 16m to 2^63-1 bytes")
    return size


Name = Annotated[str, AfterValidator(validate_name)]
ImageRef = Annotated[str, AfterValidator(validate_image)]
GitUrl = Annotated[str, AfterValidator(validate_git_url)]
Network = Annotated[str, AfterValidator(validate_network)]
NodeId = Annotated[str, AfterValidator(validate_node_id)]
RunId = Annotated[str, AfterValidator(validate_run_id)]
Branch = Annotated[str, AfterValidator(validate_branch)]
Text = Annotated[str, Field(max_length=4096)]
TimeoutS = Annotated[float, Field(gt=0, le=MAX_WAIT_S)]
MemoryBytes = Annotated[int, Field(ge=DOCKER_MIN_MEMORY_BYTES, le=DOCKER_MAX_MEMORY_BYTES)]
Cpus = Annotated[float, Field(ge=DOCKER_MIN_CPUS, le=MAX_CPUS)]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Tool(_Model):
    """A registered data collector: a Docker image run against a data repository.

    `spike_window` (number of earlier values averaged into the baseline) and
    `spike_threshold_pct` (percent) override the node's defaults when set. `network` is the
    Docker network the tool asks for (None: the node's `MAO_TOOL_NETWORK`, default `none`); the
    node runs it only if its `MAO_TOOL_NETWORKS_ALLOWED` lists it. `read_only_rootfs` False lets
    an image that writes outside its data directory and `/tmp` have a writable root file system.
    `branch` is the branch of `data_repo` cloned (None: the remote's HEAD).

    Run limits, each None for the node's default: `timeout_s` (seconds before the container is
    killed; node default `MAO_RUN_TIMEOUT_S`), `memory_bytes` (bytes; `MAO_RUN_MEMORY_BYTES`),
    `cpus` (CPUs; `MAO_RUN_CPUS`). A node runs the tool only within its maxima
    (`MAO_RUN_TIMEOUT_MAX_S`, `MAO_RUN_MEMORY_MAX_BYTES`, `MAO_RUN_CPUS_MAX`).
    """

    name: Name
    author: Annotated[str, Field(min_length=1, max_length=256)]
    image: ImageRef
    data_repo: GitUrl
    branch: Branch | None = None
    code_repo: GitUrl
    artefact: Annotated[str, Field(min_length=1, max_length=256)]
    description: Text = ""
    spike_window: Annotated[int, Field(ge=1, le=1000)] | None = None
    spike_threshold_pct: Annotated[float, Field(gt=0)] | None = None
    network: Network | None = None
    read_only_rootfs: bool = True
    timeout_s: TimeoutS | None = None
    memory_bytes: MemoryBytes | None = None
    cpus: Cpus | None = None
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""


class Dataset(_Model):
    """A registered git-hosted dataset; `branch` is the one cloned (None: the remote's HEAD)."""

    name: Name
    url: GitUrl
    branch: Branch | None = None
    description: Text = ""
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""


class Member(_Model):
    """A live node of the federation, kept in etcd on a lease refreshed by its heartbeat."""

    node_id: NodeId
    hostname: str
    version: str
    started_at: datetime
    last_seen: datetime


class InvalidControlFile(_Model):
    """A `control-<value>.csv` file that could not be read as one finite number."""

    name: str
    reason: str


class SpikeResult(_Model):
    """What spike detection found in a tool's data directory.

    The rule (original MAO): baseline = mean of the `window` values before the latest;
    gain % = (latest / baseline - 1) x 100; spike when |gain| > `threshold_pct`.
    `gain_pct` is None when it is undefined (zero baseline, too few values); `reason`
    then says why. Files are listed in detection order (numeric when every value part is a number,
    else as strings).
    """

    window: int
    threshold_pct: float
    files: list[str] = []
    values: list[float] = []
    invalid: list[InvalidControlFile] = []
    ignored: list[str] = []
    new_files: list[str] = []
    latest: float | None = None
    baseline: float | None = None
    difference: float | None = None
    gain_pct: float | None = None
    spike: bool = False
    reason: str = ""
    compliance_warning: str | None = None


class Notification(_Model):
    """A spike notification, published once per run under `/mao/notifications/`.

    `node` and `run_id` follow the node id and run id rules (`validate_node_id`,
    `validate_run_id`): every member logs them, so an entry with e.g. a newline in them is refused
    on write and skipped on read.
    """

    tool: Name
    node: NodeId
    run_id: RunId
    control_value: float
    baseline: float | None
    gain_pct: float | None
    threshold_pct: float
    detected_at: datetime


class RunStatus(StrEnum):
    """The life of a run. Transitions (the only ones allowed):

    queued -> preparing -> running -> detecting -> publishing -> succeeded;
    any non-terminal state -> failed (a step failed), interrupted (the node stopped it) or
    cancelled (`maoctl run cancel`, or a Celery revoke of one of its tasks; `RunReport.cancelled`
    says by whom and when). A cancelled record is never overwritten (`runs.RunStore.save`).
    """

    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    DETECTING = "detecting"
    PUBLISHING = "publishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for succeeded, failed, interrupted and cancelled."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.CANCELLED}
)


class Cancellation(BaseModel):
    """Who cancelled a run and when (UTC): `by` is e.g. `maoctl (user@host)` or `celery revoke
    of mao.run_container (task ID, terminated)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str
    at: datetime = Field(default_factory=utcnow)


class StepTaker(BaseModel):
    """The worker process that took a step of a run: the Celery worker's host name (e.g.
    `celery@host`), the pool process's pid, the task's id and name, and when (UTC). Recovery
    (recovery.py) resumes the step when that process is no longer alive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: str
    pid: int
    task_id: str
    step: str
    taken_at: datetime = Field(default_factory=utcnow)


class RunReport(BaseModel):
    """One run's state, handed from task to task along the chain; its final form is the report.

    Times are UTC. `timeout_s` is the container's wall-clock limit in seconds, `memory_bytes`
    its memory limit in bytes and `cpus` its CPU limit (None: none); they and the spike settings
    are the tool's, or the node's defaults, as they were when the run was prepared. `user`
    (numeric `uid:gid`) and `network` (Docker network) are what the container ran as and on,
    recorded by the run step ("" before it). `taken_by` is the worker process that took the
    newest step (see `held_step`). `data_commit` is the commit (40 hex) of the data directory
    the tool ran on, and `git_tries` one line per failed try of git talking to the data
    repository's host ("try N: git's message"), both recorded by the prepare step. `cancelled`
    is who cancelled the run and when (status `cancelled`), else None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    run_id: str
    tool: Name
    node: str
    status: RunStatus = RunStatus.QUEUED
    queued_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    image: str = ""
    data_dir: str = ""
    timeout_s: float = 3600.0
    memory_bytes: int | None = None
    cpus: float | None = None
    spike_window: int = 2
    spike_threshold_pct: float = 20.0
    control_files_before: list[str] = []
    steps_done: list[str] = []
    user: str = ""
    network: str = ""
    container_name: str = ""
    exit_code: int | None = None
    log_tail: str = ""
    spike: SpikeResult | None = None
    notification_key: str | None = None
    error: str | None = None
    data_commit: str | None = None
    git_tries: list[str] = []
    taken_by: StepTaker | None = None
    cancelled: Cancellation | None = None

    @property
    def held_step(self) -> StepTaker | None:
        """The worker process doing a step of this unfinished run now (it took the step and has
        not recorded it done), or None."""
        taker = self.taken_by
        if taker is None or self.status.terminal or taker.step in self.steps_done:
            return None
        return taker

    def updated(self, **changes: Any) -> RunReport:
        """A new report: this one with `changes` (field=value), validated like any report.

        Raises:
            pydantic.ValidationError: a change is not a valid value of its field.
        """
        return RunReport.model_validate(self.model_dump() | changes)

    def ended(self, status: RunStatus, reason: str) -> RunReport:
        """A copy of this report ended with `status` (failed or interrupted) for `reason`."""
        return self.updated(status=status, error=reason, finished_at=utcnow())

    def failed(self, reason: str) -> RunReport:
        """A copy of this report marked failed for `reason` (one line)."""
        return self.ended(RunStatus.FAILED, reason)

    def cancel(self, by: str) -> RunReport:
        """A copy of this report cancelled now by `by` (who asked: a user, a Celery revoke)."""
        stop = Cancellation(by=by)
        return self.updated(
            status=RunStatus.CANCELLED,
            error=f"cancelled by {by}",
            finished_at=stop.at,
            cancelled=stop,
        )


def build(model: type[M], **fields: Any) -> M:
    """Build and validate `model(**fields)`.

    Raises:
        InvalidInput: the first field that failed, and why; nothing was written anywhere.
    """
    try:
        return model(**fields)
    except ValidationError as e:
        raise InvalidInput(describe_validation_error(e)) from e
