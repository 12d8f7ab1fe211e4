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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

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


MAX_GIT_URL_LEN = 2048
"""The longest git URL accepted (git hosts accept far shorter); the bound keeps validating and
redacting a hostile registry value cheap."""


def _refused(url: str, why: str) -> ValueError:
    """The error refusing git URL `url` for reason `why`, showing it through `redact_url`."""
    return ValueError(f"invalid git URL {redact_url(url)!r}: {why}")


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
    if len(value) > MAX_GIT_URL_LEN:
        raise ValueError(f"invalid git URL: longer than {MAX_GIT_URL_LEN} characters")
    if "::" in value:
        raise _refused(value, "remote helpers ('transport::') are refused")
    if not value or not _SAFE_CHARS_RE.fullmatch(value):
        raise _refused(value, "empty or contains spaces/control characters")
    if any(part.startswith("-") for part in re.split(r"[/:@]", value)):
        raise _refused(value, "a part starting with '-' looks like an option")
    if value.startswith("/"):
        return value
    if _SCP_LIKE_RE.fullmatch(value) and "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError as e:
        raise _refused(value, str(e)) from e
    if parts.scheme not in GIT_URL_SCHEMES:
        raise _refused(
            value,
            "use https://, http://, ssh://, git://, file://, user@host:path or an absolute path",
        )
    if parts.password is not None or (
        parts.scheme in _TOKEN_AS_USER_SCHEMES and "@" in parts.netloc
    ):
        raise _refused(
            value,
            "credentials are refused in registry URLs (every member "
            "reads them); put them in the node's MAO_GIT_CREDENTIALS_FILE (a git-credential-store "
            "file) or use ssh",
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise _refused(
            value,
            "a query or fragment ('?', '#') is refused (tokens in it "
            "would be read by every member); put credentials in MAO_GIT_CREDENTIALS_FILE",
        )
    if parts.scheme == "file":
        if not PurePosixPath(parts.path).is_absolute():
            raise _refused(value, "file:// needs an absolute path")
    elif not parts.hostname:
        raise _refused(value, "no host")
    return value


_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}


def same_remote(a: str, b: str) -> bool:
    """True when git URLs `a` and `b` name the same repository, compared by meaning: scheme and
    host in any case, a default port or none, trailing `/`s, and for network URLs (and scp-like
    `user@host:path`) a trailing `.git`; `file:///x` is the path `/x`. So `https://H/r/` ==
    `https://h:443/r.git`, `file:///x/r.git/` == `/x/r.git`; `ssh://h/r` != `h:r` (home-relative).
    """
    return _remote_key(a) == _remote_key(b)


def _remote_key(url: str) -> tuple[str, ...]:
    """What `same_remote` compares of `url`: (kind, user, host, port, path)."""
    if url.startswith("/"):
        return ("path", "", "", "", url.rstrip("/") or "/")
    if _SCP_LIKE_RE.fullmatch(url) and "://" not in url:
        authority, _, path = url.partition(":")
        user, _, host = authority.rpartition("@")
        return ("scp", user, host.lower(), "", path.rstrip("/").removesuffix(".git"))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("raw", url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return ("path", "", "", "", parts.path.rstrip("/") or "/")
    path = parts.path.rstrip("/").removesuffix(".git")
    shown_port = "" if port in (None, _DEFAULT_PORTS.get(scheme)) else str(port)
    return (scheme, parts.username or "", (parts.hostname or "").lower(), shown_port, path)


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


# Models that `maoctl tool run` and `tool get` never validate (Dataset, Member, Notification) set
# `defer_build`: pydantic builds their validators on first use, not at import (start-up time).
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

    `push` True pushes each run's commit to `data_repo` (a node's `MAO_GIT_PUSH` does it for
    every tool), on `push_branch` (None: the node's branch `mao/<node id>`; a tool may name its
    main branch); never forced (dataplane.py).
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
    push: bool = False
    push_branch: Branch | None = None
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""


class Dataset(_Model):
    """A registered git-hosted dataset; `branch` is the one cloned (None: the remote's HEAD)."""

    model_config = ConfigDict(defer_build=True)

    name: Name
    url: GitUrl
    branch: Branch | None = None
    description: Text = ""
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""


class Member(_Model):
    """A live node of the federation, kept in etcd on a lease refreshed by its heartbeat.

    `last_seen` is its last heartbeat; `workers`: how many of its Celery workers answered a
    ping then (None: not known, e.g. written by an older version); `tools`: the tools it
    schedules (`maoctl tool schedule`), sorted.
    """

    model_config = ConfigDict(defer_build=True)

    node_id: NodeId
    hostname: str
    version: str
    started_at: datetime
    last_seen: datetime
    workers: Annotated[int, Field(ge=0)] | None = None
    tools: list[Name] = []


class InvalidControlFile(_Model):
    """A `control-<value>.csv` file that could not be read as one finite number."""

    name: str
    reason: str


class ControlMarker(_Model):
    """The newest control file of a data directory before a run, to tell the files the run wrote
    (the rule: `spike.detect_spike`). `files`: how many regular control files there were;
    `newest`: the newest one's name in detection order and `newest_mtime_ns` its modification
    time (nanoseconds since the epoch); both None when there was none."""

    files: int = 0
    newest: str | None = None
    newest_mtime_ns: int | None = None


class SpikeResult(_Model):
    """What spike detection found in a tool's data directory.

    The rule (original MAO): baseline = mean of the `window` values before the latest;
    gain % = (latest / baseline - 1) x 100; spike when |gain| > `threshold_pct`.
    `gain_pct` is None when it is undefined (zero baseline, too few values); `reason`
    then says why. Names are listed in detection order (numeric when every value part is a
    number, else as strings), oldest first, and only the few that matter (spike.py):

    - `files`, `values`: the valid control files used, at most `window` + 1 (the newest);
    - `invalid`: the control files read and skipped on the way (at most `spike.INVALID_READS_MAX`);
    - `ignored`, `new_files`: the newest `spike.LISTED_MAX` entries that are not regular files,
      and of the new control files (the run's `ControlMarker` tells which are new);
    - `control_files`: how many `control-*.csv` entries of any kind the directory holds,
      `new_file_count`: how many of them are new. Both None in records of older versions,
      which listed every name instead.
    """

    window: int
    threshold_pct: float
    files: list[str] = []
    values: list[float] = []
    invalid: list[InvalidControlFile] = []
    ignored: list[str] = []
    new_files: list[str] = []
    control_files: int | None = None
    new_file_count: int | None = None
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

    model_config = ConfigDict(defer_build=True)

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
    `celery@host`), the worker machine (`host`: its `MAO_WORKER_HOST`; "" in records written
    before it was recorded), the pool process's pid, the task's id and name, and when (UTC).
    Recovery (recovery.py) resumes the step when that process is no longer alive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: str
    host: str = ""
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
    newest step (see `held_step`), `takers` every take of a step, oldest first (retries and
    resumes included); `host` the worker machine the run is bound to. `host_lost_at` is when the
    recovery found the run's step process dead and no live worker on its host (None: not
    waiting for its host). `data_commit` is the commit (40 hex) of the data directory
    the tool ran on, and `git_tries` one line per failed try of git talking to the data
    repository's host ("try N: git's message"), both recorded by the prepare step. `cancelled`
    is who cancelled the run and when (status `cancelled`), else None. `image_digest` is the id
    of the image the container ran (`sha256:...`, recorded by the run step); `run_commit` the
    commit (40 hex) holding what the run wrote (detect step; None: it changed nothing);
    `pushed_to` the branch of the data repository the commit was pushed to and `push_error` why
    the push failed (publish step; a failed push does not fail the run, the next push carries
    the commit).
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
    control_marker: ControlMarker = ControlMarker()
    """The newest control file before the container ran (prepare step). Records of older
    versions listed every name (`control_files_before`, dropped when read): their runs take
    every control file as new."""
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
    image_digest: str | None = None
    run_commit: str | None = None
    pushed_to: str | None = None
    push_error: str | None = None
    taken_by: StepTaker | None = None
    takers: list[StepTaker] = []
    host_lost_at: datetime | None = None
    cancelled: Cancellation | None = None

    @property
    def host(self) -> str | None:
        """The worker machine (`MAO_WORKER_HOST`) whose host queue runs this run's steps: the
        one that took its newest step (all steps of a run are taken on one machine), or None
        before its first step."""
        return (self.taken_by.host or None) if self.taken_by is not None else None

    @model_validator(mode="before")
    @classmethod
    def _drop_control_files_before(cls, data: Any) -> Any:
        """Read a record of an older version, which listed every control file name."""
        if isinstance(data, dict) and "control_files_before" in data:
            return {k: v for k, v in data.items() if k != "control_files_before"}
        return data

    @property
    def held_step(self) -> StepTaker | None:
        """The worker process doing a step of this unfinished run now (it took the step and has
        not recorded it done), or None."""
        taker = self.taken_by
        if taker is None or self.status.terminal or taker.step in self.steps_done:
            return None
        return taker

    @property
    def resumed_step(self) -> bool:
        """Whether the newest step was taken before by another task of this run (a resumed
        step; a Celery retry keeps its task's id and is not one): the container step then
        adopts the run's container and never creates a second one (recovery.py resumes it only
        while that container exists)."""
        taker = self.taken_by
        if taker is None:
            return False
        return any(t.step == taker.step and t.task_id != taker.task_id for t in self.takers)

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
