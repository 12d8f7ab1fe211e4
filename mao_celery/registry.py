"""The federation-wide registry on etcd (design.md §3): tools, datasets, members, notifications.

All keys sit under the configured prefix (default `/mao/`). Creates are etcd transactions that
write only if the key is absent. Listings are range reads in pages of at most `PAGE_KEYS` keys,
each continuing after the last key of the one before and all at the revision of the first, so a
listing of any size stays below gRPC's 4 MiB message limit and is one consistent snapshot; a page
refused as too large (very large values) is read again at half the size. Every value read back is
validated with its model, since another member may have written it with another client.
"""

from __future__ import annotations

import os

# gRPC's C core logs a failed TLS handshake on stderr in several lines of its own, read when grpc
# is first imported; the error raised here says the same in one line. A GRPC_VERBOSITY the user
# sets still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import pyetcd
from pydantic import BaseModel, ValidationError
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_errors
from pyetcd.client import EtcdTokenCallCredentials
from pyetcd.utils import prefix_range_end
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from mao_celery.exceptions import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    MaoError,
    NotFound,
    ServiceUnavailable,
    describe_validation_error,
)
from mao_celery.models import Dataset, Member, Notification, Tool
from mao_celery.settings import Settings

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_TRANSIENT = (
    etcd_errors.ConnectionFailedError,
    etcd_errors.ConnectionTimeoutError,
    etcd_errors.NoServerAvailableError,
)


# gRPC codes etcd answers a request with when it is too large: a value over its request size
# limit (INVALID_ARGUMENT "request is too large"), a message over gRPC's limit
# (RESOURCE_EXHAUSTED), a lease TTL over its maximum (OUT_OF_RANGE "too large lease TTL").
_TOO_LARGE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
_TOO_LARGE_RE = re.compile(r"too large|larger than max", re.IGNORECASE)
PAGE_KEYS = 500
"""Keys per range read of a listing: 500 values of 1 KB are 0.5 MB, far below gRPC's 4 MiB
message limit; a page refused as too large is read again with half as many keys."""
PROBE_TIMEOUT_S = 2.0
NOTIFICATION_STAMP = "%Y%m%dT%H%M%S.%fZ"
"""The UTC time at the start of a notification's key (its run's start), so keys sort by time."""
"""Seconds each member gets to answer the status request that tells "no quorum" from
"unreachable" after a failed call."""


class EtcdUnavailable(ServiceUnavailable):
    """etcd cannot serve the request: no member answers, or too few to form a quorum.

    The message is one of the two forms every command and the worker show:
    "etcd unreachable (no member answers) at ENDPOINTS" or
    "etcd cluster has no quorum (K of N members answer) at ENDPOINTS".

    Args:
        endpoints: the endpoints tried, comma-separated.
        answering: how many of them answered a status request.
        total: how many endpoints there are.
    """

    def __init__(self, endpoints: str, answering: int, total: int) -> None:
        if answering == 0:
            summary = "etcd unreachable (no member answers)"
        else:
            summary = f"etcd cluster has no quorum ({answering} of {total} members answer)"
        MaoError.__init__(self, f"{summary} at {endpoints}")
        self.service = "etcd"
        self.endpoint = endpoints
        self.answering = answering
        self.total = total


@dataclass(frozen=True)
class MemberProbe:
    """What one etcd member answered to a status request (Maintenance.Status, which a member
    serves without quorum): whether it answered and whether it knows a leader; `detail`: gRPC's
    reason when it did not answer."""

    endpoint: str
    answers: bool
    has_leader: bool
    detail: str = ""


def etcd_endpoint(
    endpoint: str, tls: grpc.ChannelCredentials | None, time_retry_s: float = 5.0
) -> pyetcd.Endpoint:
    """pyetcd's endpoint for `host:port`: over TLS with the channel credentials `tls`, else in
    plain text; after a failure it is tried again after `time_retry_s` seconds."""
    host, _, port = endpoint.rpartition(":")
    return pyetcd.Endpoint(
        host.strip("[]"), int(port), secure=tls is not None, creds=tls, time_retry=time_retry_s
    )


def probe_members(
    endpoints: Sequence[str],
    timeout_s: float = PROBE_TIMEOUT_S,
    tls: grpc.ChannelCredentials | None = None,
) -> list[MemberProbe]:
    """Ask each endpoint for its status, each within `timeout_s` seconds (one at a time), over
    TLS when `tls` (channel credentials) is given."""
    found: list[MemberProbe] = []
    for endpoint in endpoints:
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[etcd_endpoint(endpoint, tls)], timeout=timeout_s
        )
        try:
            status = client.maintenancestub.Status(etcdrpc.StatusRequest(), timeout_s)
            found.append(MemberProbe(endpoint, True, bool(status.leader)))
        except grpc.RpcError as e:
            found.append(MemberProbe(endpoint, False, False, grpc_detail(e)))
        finally:
            client.close()
    return found


def classify_failure(
    endpoints: Sequence[str], probes: Sequence[MemberProbe], detail: str
) -> ServiceUnavailable:
    """The error of a call that etcd did not serve, from what its members answered since.

    No member answers: unreachable. Some answer but fewer than a majority of `endpoints`, or
    none knows a leader: no quorum. Otherwise etcd answers but refused the call: `detail`
    (e.g. "mvcc: database space exceeded").
    """
    shown = ",".join(endpoints)
    answering = sum(probe.answers for probe in probes)
    if answering == 0:
        return EtcdUnavailable(shown, 0, len(endpoints))
    majority = len(endpoints) // 2 + 1
    if answering < majority or not any(probe.has_leader for probe in probes):
        return EtcdUnavailable(shown, answering, len(endpoints))
    return ServiceUnavailable("etcd", shown, detail)


class RequestTooLarge(InvalidInput):
    """A request, or its answer, over etcd's or gRPC's size limit (exit 1: sending it again
    cannot help). The message says "etcd refused the request: request too large (DETAIL) at
    ENDPOINTS; make the value or the setting smaller"."""


def too_large(endpoints: Sequence[str], detail: str) -> RequestTooLarge:
    """The error of a request etcd refused as too large (exit 1: sending it again cannot help)."""
    return RequestTooLarge(
        f"etcd refused the request: request too large ({detail}) at {','.join(endpoints)}; "
        "make the value or the setting smaller"
    )


def continue_after(key: bytes) -> bytes:
    """The first key of the next page of a range read whose last key was `key`: the smallest
    key greater than `key` (`key` + NUL), so that no key is read twice nor skipped."""
    return key + b"\0"


def smaller_page(keys: int) -> int | None:
    """The number of keys to read again after a page of `keys` keys was too large: half (at
    least 1); None when a single key was already too large."""
    return keys // 2 if keys > 1 else None


@dataclass(frozen=True)
class InvalidEntry:
    """A registry value that does not pass its model's validation (key, one-line reason)."""

    key: str
    reason: str


def _parse(model: type[M], key: str, raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidInput(
            f"registry entry {key} is invalid ({describe_validation_error(e)})"
        ) from e


class EtcdAccessDenied(ServiceUnavailable):
    """etcd did not let the client in: authentication failed (wrong user or password, none
    given where etcd requires one, or one given where etcd has authentication off) or the TLS
    handshake failed (CA, client certificate). Exit 3, like an unreachable etcd: the message is
    "etcd authentication failed ..." or "etcd TLS handshake failed ...", with etcd's or gRPC's
    reason and the settings to check."""

    def __init__(self, what: str, endpoints: str, detail: str, hint: str) -> None:
        MaoError.__init__(self, f"etcd {what} failed at {endpoints}: {detail}; {hint}")
        self.service = "etcd"
        self.endpoint = endpoints


class Forbidden(InvalidInput):
    """etcd refused a request because the user's role does not allow it ("permission denied");
    exit 1: the same request cannot succeed until an administrator grants the permission
    (scripts/etcd-roles.sh)."""


# What etcd and gRPC say when the client is not let in.
_AUTH_RE = re.compile(
    r"authentication failed|invalid auth token|user name is empty|authentication is not enabled"
    r"|user name not found|invalid password",
    re.IGNORECASE,
)
# gRPC's "Unwrap failed (TSI_DATA_CORRUPTED)": the server closed TLS 1.3 after the handshake,
# as etcd does when it requires a client certificate and none (or one it does not trust) came.
_TLS_RE = re.compile(r"ssl|tls|handshake|certificate|TSI_", re.IGNORECASE)
_AUTH_HINT = "check MAO_ETCD_USER and MAO_ETCD_PASSWORD (or MAO_ETCD_PASSWORD_FILE)"
_TLS_HINT = (
    "check MAO_ETCD_CA, and MAO_ETCD_CERT/MAO_ETCD_KEY: a client certificate the server's CA "
    "signed, if it requires one"
)


def access_denied(
    endpoints: Sequence[str], user: str | None, detail: str
) -> EtcdAccessDenied | None:
    """The error for a failed call whose gRPC `detail` says the client was not let in
    (authentication as `user`, or TLS), else None."""
    shown = ",".join(endpoints)
    if _AUTH_RE.search(detail):
        what = f"authentication as user {user!r}" if user else "authentication (no user set)"
        return EtcdAccessDenied(what, shown, detail, _AUTH_HINT)
    if _TLS_RE.search(detail):
        return EtcdAccessDenied("TLS handshake", shown, detail, _TLS_HINT)
    return None


def grpc_detail(error: BaseException) -> str:
    """The gRPC detail behind `error` (pyetcd raises its own errors from the gRPC one), else the
    error's class name."""
    cause = error if isinstance(error, grpc.RpcError) else error.__context__
    if isinstance(cause, grpc.RpcError) and hasattr(cause, "details"):
        return str(cause.details())
    return type(error).__name__


def _read_pem(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"{setting} {path} cannot be read: {e.strerror}") from e


def tls_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """gRPC channel credentials from `MAO_ETCD_CA` (none: the system's roots), `MAO_ETCD_CERT`
    and `MAO_ETCD_KEY`; None when TLS is off (neither a CA nor a certificate is set).

    Raises:
        InvalidInput: a file cannot be read; the message names its setting.
    """
    if not settings.etcd_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(settings.etcd_ca, "MAO_ETCD_CA"),
        private_key=_read_pem(settings.etcd_key, "MAO_ETCD_KEY"),
        certificate_chain=_read_pem(settings.etcd_cert, "MAO_ETCD_CERT"),
    )


class Etcd:
    """An etcd v3 client over one or more endpoints, with MAO's error handling.

    A call that fails on one endpoint is retried on the next (pyetcd's failover picks another
    endpoint after a failure; tenacity retries), once per endpoint; then `call` says why (see
    there): unreachable, no quorum, not let in, forbidden, refused, or too large.

    With a `user`, the client authenticates before its first call (on an endpoint that answers)
    and again when etcd answers that its token is no longer valid: etcd's tokens expire (simple
    tokens after 5 min by default), and a worker lives far longer. `tls` (channel credentials)
    puts every endpoint on TLS.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout_s: float,
        *,
        user: str | None = None,
        password: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.user = user
        self._password = password
        self.tls = tls
        self.client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[etcd_endpoint(e, tls) for e in self.endpoints],
            timeout=timeout_s,
            failover=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Etcd:
        """The client every etcd user of a node (CLI, worker, beat, status) builds: endpoints,
        timeout, user and password, TLS files from `settings`.

        Raises:
            InvalidInput: the password file or a TLS file cannot be read.
        """
        return cls(
            settings.etcd_endpoints,
            settings.etcd_timeout_s,
            user=settings.etcd_user,
            password=settings.etcd_password_value(),
            tls=tls_credentials(settings),
        )

    def _authenticate(self) -> None:
        """Get a token for `user` from the endpoint in use; every later call carries it (the
        watcher's stream too, when it opens again)."""
        request = etcdrpc.AuthenticateRequest(name=self.user, password=self._password)
        try:
            token = self.client.authstub.Authenticate(request, self.timeout_s).token
        except grpc.RpcError as e:
            # pyetcd's own mapping: an endpoint that does not answer is marked failed, so that
            # the failover tries the next one.
            self.client._manage_grpc_errors(e)
        self.client.metadata = (("token", token),)
        self.client.call_credentials = grpc.metadata_call_credentials(
            EtcdTokenCallCredentials(token)
        )
        watcher = self.client._stubs.get("watcher")
        if watcher is not None:
            watcher._metadata = self.client.metadata

    def _attempt(self, operation: Callable[[pyetcd.MultiEndpointEtcd3Client], T]) -> T:
        if self.user is not None and self.client.metadata is None:
            self._authenticate()
        try:
            return operation(self.client)
        except etcd_errors.NoServerAvailableError:
            # Every member failed a call within the last seconds (pyetcd's cooldown, e.g. members
            # restarted one after another): the next attempt tries each of them again.
            for endpoint in self.client.endpoints.values():
                endpoint.last_failed = 0
            raise
        except grpc.RpcError as e:
            if self.user is None or e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        self._authenticate()  # the token expired: a new one, and the call once more
        return operation(self.client)

    def call(self, operation: Callable[[pyetcd.MultiEndpointEtcd3Client], T]) -> T:
        """Run `operation(client)`, authenticated when a user is set, failing over across
        endpoints.

        This is the one mapping of etcd and gRPC errors for every registry command, `status`
        and the worker: after a failed call each member is asked for its status, so that the
        error says whether no member answers or the cluster has no quorum.

        Raises:
            EtcdUnavailable: no endpoint answered ("etcd unreachable (no member answers)"), or
                too few members answer to form a quorum ("etcd cluster has no quorum (k of n
                members answer)"); both are ServiceUnavailable (exit 3).
            EtcdAccessDenied: authentication or the TLS handshake failed (ServiceUnavailable,
                exit 3); the message names which and the settings to check.
            ServiceUnavailable: etcd answers but refused the request (e.g. its database is
                full); the detail says which.
            Forbidden: the user's role does not allow the request (InvalidInput, exit 1).
            InvalidInput: etcd refused the request as too large ("request too large").
        """
        failover = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(len(self.endpoints) + 1),
            reraise=True,
        )
        try:
            return failover(lambda: self._attempt(operation))
        except grpc.RpcError as e:
            detail = grpc_detail(e)
            if e.code() in _TOO_LARGE_CODES and _TOO_LARGE_RE.search(detail):
                raise too_large(self.endpoints, detail) from e
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise Forbidden(
                    f"etcd refused the request: permission denied for user {self.user!r} at "
                    f"{','.join(self.endpoints)} (its role does not allow it: "
                    "scripts/etcd-roles.sh)"
                ) from e
            raise self._failure(detail) from e
        except etcd_errors.Etcd3Exception as e:
            raise self._failure(grpc_detail(e)) from e

    def _failure(self, detail: str) -> ServiceUnavailable:
        """The error of a failed call: not let in (from `detail`, else from why the members
        did not answer a status request: a failover marks a refused endpoint failed, so the
        next call's own detail no longer says why), else `classify_failure`."""
        denied = access_denied(self.endpoints, self.user, detail)
        if denied is not None:
            return denied
        probes = probe_members(self.endpoints, min(PROBE_TIMEOUT_S, self.timeout_s), self.tls)
        for probe in probes:
            denied = access_denied(self.endpoints, self.user, probe.detail)
            if denied is not None:
                return denied
        return classify_failure(self.endpoints, probes, detail)

    def close(self) -> None:
        """Close the gRPC channels."""
        self.client.close()


@dataclass(frozen=True)
class RangeRead:
    """Keys read from etcd in key order: `kvs` as (key, raw value), the store's `revision` they
    were read at, and `more`: whether keys are left after the last one (a read with a limit)."""

    kvs: list[tuple[str, bytes]]
    revision: int
    more: bool


def read_range(
    etcd: Etcd,
    prefix: str,
    *,
    start_after: str | None = None,
    limit: int | None = None,
    page_keys: int = PAGE_KEYS,
    range_options: Mapping[str, int] | None = None,
) -> RangeRead:
    """The keys under `prefix` after key `start_after` (None: from the first), at most `limit`
    of them (None: all), in key order, in range reads of at most `page_keys` keys.

    Every page after the first is read at the first one's revision, so the keys are one
    snapshot. A page refused as too large is read again with half as many keys, down to one
    (and the next pages grow back to `page_keys`).
    `range_options` go to etcd's range request (e.g. `min_mod_revision`).

    Raises:
        RequestTooLarge: a single value is larger than gRPC's message limit (4 MiB).
        ServiceUnavailable: etcd did not answer, or the snapshot's revision was compacted away
            meanwhile.
        ValueError: `limit` or `page_keys` is below 1.
    """
    if (limit is not None and limit < 1) or page_keys < 1:
        raise ValueError(f"limit and page_keys must be at least 1 (got {limit}, {page_keys})")
    start = prefix.encode() if start_after is None else continue_after(start_after.encode())
    end = prefix_range_end(prefix.encode())
    pages = list(_pages(etcd, start, end, limit, page_keys, dict(range_options or {})))
    kvs = [(kv.key.decode("utf-8", "replace"), kv.value) for page in pages for kv in page.kvs]
    return RangeRead(kvs, int(pages[0].header.revision), bool(pages[-1].more))


def _pages(
    etcd: Etcd,
    start: bytes,
    end: bytes,
    limit: int | None,
    most_keys: int,
    options: dict[str, int],
) -> Iterator[Any]:
    """The RangeResponses of [start, end) in pages (see `read_range`), every page after the
    first read at the first one's revision (unless `options`, the range request's options,
    which this changes, names one). After a page refused as too large the pages are halved,
    and doubled again (up to `most_keys`) after each page read, so that a few large values do
    not slow down the rest of the listing."""
    read = 0
    page_keys = most_keys
    while True:
        want = page_keys if limit is None else min(page_keys, limit - read)
        try:
            response = etcd.call(_range_page(start, end, want, options))
        except RequestTooLarge:
            smaller = smaller_page(page_keys)
            if smaller is None:
                raise
            page_keys = smaller
            continue
        yield response
        page_keys = min(2 * page_keys, most_keys)
        options.setdefault("revision", int(response.header.revision))
        read += len(response.kvs)
        if not response.more or read == limit:
            return
        start = continue_after(response.kvs[-1].key)


def _range_page(
    start: bytes, end: bytes, limit: int, range_options: dict[str, int]
) -> Callable[[pyetcd.MultiEndpointEtcd3Client], Any]:
    """The call reading at most `limit` keys of [start, end), in key order (etcd's range reads
    are; no sort is asked for, since etcd would then read the whole range to sort it)."""
    options = dict(range_options)
    return lambda client: client.get_range_response(start, end, limit=limit, **options)


def read_prefix(
    etcd: Etcd, prefix: str, model: type[M], **range_options: int
) -> tuple[list[tuple[str, M]], list[InvalidEntry], int]:
    """Read every key under `prefix` (`read_range`) and validate each value with `model`.

    `range_options` go to etcd's range request (e.g. `min_mod_revision`).

    Returns:
        ((key, value) pairs sorted by key, entries that failed validation, the store's revision
        the keys were read at).
    Raises:
        RequestTooLarge: a single value is larger than gRPC's message limit.
        ServiceUnavailable: etcd did not answer.
    """
    read = read_range(etcd, prefix, range_options=range_options)
    entries, invalid = validate_all(model, read.kvs)
    return entries, invalid, read.revision


def validate_all(
    model: type[M], kvs: Sequence[tuple[str, bytes]]
) -> tuple[list[tuple[str, M]], list[InvalidEntry]]:
    """Each raw value of `kvs` ((key, JSON bytes)) validated with `model`: the (key, value)
    pairs that pass, in the given order, and the entries that do not (key, one-line reason)."""
    entries: list[tuple[str, M]] = []
    invalid: list[InvalidEntry] = []
    for key, raw in kvs:
        try:
            entries.append((key, _parse(model, key, raw)))
        except InvalidInput as e:
            invalid.append(InvalidEntry(key, str(e)))
    return entries, invalid


@dataclass(frozen=True)
class EntryPage(Generic[M]):
    """One page of a collection's entries in name order: the valid `items`, the `invalid`
    entries among them, and `next_after`, the name to continue after (None: the last page)."""

    items: list[M]
    invalid: list[InvalidEntry]
    next_after: str | None


class Collection(Generic[M]):
    """Create-only CRUD of one kind of registry entry, keyed by the entry's `name`."""

    def __init__(self, etcd: Etcd, prefix: str, model: type[M]) -> None:
        self._etcd = etcd
        self.prefix = prefix
        self._model = model

    def key(self, name: str) -> str:
        """The etcd key of entry `name`."""
        return f"{self.prefix}{name}"

    def add(self, item: M) -> None:
        """Write `item` only if no entry of its name exists (one transaction).

        Raises:
            AlreadyExists: the name is taken; nothing was written.
            ServiceUnavailable: etcd did not answer.
        """
        name = getattr(item, "name")  # noqa: B009 - every registry model has a name
        key = self.key(name)
        created = self._put_if(key, item, lambda client: client.transactions.create(key) == 0)
        if not created and self._stored(key)[0] != item:
            raise AlreadyExists(f"{self.kind} {name!r} already exists")

    def _put_if(
        self, key: str, item: M, compare: Callable[[pyetcd.MultiEndpointEtcd3Client], Any]
    ) -> bool:
        """Write `item` at `key` in one transaction if `compare(client)` holds; True if written."""
        value = item.model_dump_json()

        def put(client: pyetcd.MultiEndpointEtcd3Client) -> bool:
            ok, _ = client.transaction(
                compare=[compare(client)],
                success=[client.transactions.put(key, value)],
                failure=[],
            )
            return bool(ok)

        return self._etcd.call(put)

    def _stored(self, key: str) -> tuple[M | None, int | None]:
        """The valid value at `key` (None: absent or invalid) and its mod revision (None:
        absent), in one read. A write retried after a lost reply finds its own value here and
        so is not reported as a clash."""
        raw, meta = self._etcd.call(lambda client: client.get(key))
        if raw is None:
            return None, None
        try:
            return self._parse(key, raw), int(meta.mod_revision)
        except InvalidInput:
            return None, int(meta.mod_revision)

    def _parse(self, key: str, raw: bytes) -> M:
        """The entry at `key`, validated, and named as its key says.

        Raises:
            InvalidInput: the value is invalid, or its `name` is not the one in its key (an entry
                that lies about its name would run in another entry's data directory).
        """
        return self._named_as_key(key, _parse(self._model, key, raw))

    def _named_as_key(self, key: str, item: M) -> M:
        name = getattr(item, "name")  # noqa: B009 - every registry model has a name
        if key != self.key(name):
            raise InvalidInput(
                f"registry entry {key} is invalid (its name is {name!r}, not the one in its key)"
            )
        return item

    def get(self, name: str) -> M:
        """Read and validate entry `name`.

        Raises:
            NotFound: no such entry.
            InvalidInput: the stored value is not valid (written by another client?).
            ServiceUnavailable: etcd did not answer.
        """
        return self.get_with_revision(name)[0]

    def get_with_revision(self, name: str) -> tuple[M, int]:
        """Entry `name`, validated, and its etcd mod revision (for `replace`).

        Raises:
            NotFound: no such entry.
            InvalidInput: the stored value is not valid.
            ServiceUnavailable: etcd did not answer.
        """
        key = self.key(name)
        raw, meta = self._etcd.call(lambda client: client.get(key))
        if raw is None:
            raise NotFound(f"{self.kind} {name!r} is not registered")
        return self._parse(key, raw), int(meta.mod_revision)

    def replace(self, item: M, revision: int) -> None:
        """Write `item` over its entry only if the entry's mod revision is still `revision`
        (one etcd compare-and-swap transaction): a concurrent change is refused, never lost.

        Raises:
            Conflict: the entry changed (or was removed) since `revision`; nothing was written.
            ServiceUnavailable: etcd did not answer.
        """
        name = getattr(item, "name")  # noqa: B009 - every registry model has a name
        key = self.key(name)
        if self._put_if(key, item, lambda client: client.transactions.mod(key) == revision):
            return
        stored, current = self._stored(key)
        if stored == item:
            return  # a retried swap whose first reply was lost: our own write is there
        now = "was removed" if current is None else f"is now at revision {current}"
        raise Conflict(
            f"{self.kind} {name!r} was changed by someone else since it was read (revision "
            f"{revision}; it {now}): nothing was written; show it again and retry the update"
        )

    def update(self, name: str, change: Callable[[M], M]) -> M:
        """Read entry `name`, apply `change` to it and write the result with a compare-and-swap
        on the entry's mod revision (see `replace`). Returns the entry written.

        Raises:
            NotFound: no such entry.
            Conflict: the entry changed between the read and the write; nothing was written.
            InvalidInput: the stored value, or the changed one, is not valid (`change` raises it).
            ServiceUnavailable: etcd did not answer.
        """
        item, revision = self.get_with_revision(name)
        changed = change(item)
        self._named_as_key(self.key(name), changed)
        self.replace(changed, revision)
        return changed

    def list(self) -> tuple[list[M], list[InvalidEntry]]:
        """All entries, sorted by name, and the ones that failed validation (including those
        whose name is not the one in their key), read in pages (`read_range`).

        Raises:
            RequestTooLarge: a single value is larger than gRPC's message limit (4 MiB).
            ServiceUnavailable: etcd did not answer.
        """
        page = self.page()
        return page.items, page.invalid

    def page(self, *, start_after: str | None = None, limit: int | None = None) -> EntryPage[M]:
        """The entries whose name sorts after `start_after` (None: from the first), at most
        `limit` of them, valid or not (None: all), sorted by name: one page of a listing shown
        page by page. Pass its `next_after` as `start_after` to read the next page.

        Raises:
            RequestTooLarge: a single value is larger than gRPC's message limit (4 MiB).
            ServiceUnavailable: etcd did not answer.
            ValueError: `limit` is below 1.
        """
        after = None if start_after is None else self.key(start_after)
        read = read_range(self._etcd, self.prefix, start_after=after, limit=limit)
        entries, invalid = validate_all(self._model, read.kvs)
        items: list[M] = []
        for key, item in entries:
            try:
                items.append(self._named_as_key(key, item))
            except InvalidInput as e:
                invalid.append(InvalidEntry(key, str(e)))
        last = read.kvs[-1][0].removeprefix(self.prefix) if read.more else None
        return EntryPage(items, invalid, last)

    def remove(self, name: str) -> None:
        """Delete entry `name`.

        Raises:
            NotFound: no such entry.
            ServiceUnavailable: etcd did not answer.
        """
        key = self.key(name)
        if not self._etcd.call(lambda client: client.delete(key)):
            raise NotFound(f"{self.kind} {name!r} is not registered")

    @property
    def kind(self) -> str:
        """What the collection holds, e.g. "tool"."""
        return self._model.__name__.lower()


class Registry:
    """The registry of one federation, under `prefix` on the etcd cluster `etcd`."""

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.tools: Collection[Tool] = Collection(etcd, f"{prefix}tools/", Tool)
        self.datasets: Collection[Dataset] = Collection(etcd, f"{prefix}datasets/", Dataset)
        self.notifications_prefix = f"{prefix}notifications/"
        self.members_prefix = f"{prefix}members/"

    def publish_notification(
        self, notification: Notification, started_at: datetime, retention_s: int
    ) -> tuple[str, bool]:
        """Write `notification` once per run, on a lease of `retention_s` seconds.

        The key, `<prefix>notifications/<run start UTC>-<node>-<tool>`, depends only on the run,
        so a retried or redelivered task finds it already written and writes nothing.

        Returns:
            (key, created): created is False when the run's notification already existed.
        Raises:
            AlreadyExists: the key holds the notification of another run.
            ServiceUnavailable: etcd did not answer.
        """
        stamp = started_at.strftime(NOTIFICATION_STAMP)
        key = f"{self.notifications_prefix}{stamp}-{notification.node}-{notification.tool}"
        value = notification.model_dump_json()

        def create(client: pyetcd.MultiEndpointEtcd3Client) -> tuple[bool, bytes | None]:
            lease = client.lease(retention_s)
            ok = False
            try:
                ok, responses = client.transaction(
                    compare=[client.transactions.create(key) == 0],
                    success=[client.transactions.put(key, value, lease=lease)],
                    failure=[client.transactions.get(key)],
                )
            finally:
                if not ok:  # the key exists already, or the write failed: the lease is unused
                    client.revoke_lease(lease.id)
            return (True, None) if ok else (False, responses[0][0][0])

        created, existing = self.etcd.call(create)
        owner = None if existing is None else _parse(Notification, key, existing).run_id
        if owner not in (None, notification.run_id):
            raise AlreadyExists(f"notification {key} belongs to another run")
        return key, created

    def notifications(
        self, *, tool: str | None = None, after_revision: int = 0
    ) -> tuple[list[tuple[str, Notification]], list[InvalidEntry], int]:
        """Notifications (oldest first), optionally of one tool or newer than a revision.

        Returns:
            (notifications as (key, value), invalid entries, the store's current revision):
            pass that revision as `after_revision` next time to read only newer ones.
        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        options = {"min_mod_revision": after_revision + 1} if after_revision else {}
        entries, invalid, revision = read_prefix(
            self.etcd, self.notifications_prefix, Notification, **options
        )
        found = [(key, n) for key, n in entries if tool is None or n.tool == tool]
        return found, invalid, revision

    def member_key(self, node_id: str) -> str:
        """The etcd key of member `node_id`'s record: `<prefix>members/<node_id>`."""
        return f"{self.members_prefix}{node_id}"

    def register_member(self, member: Member, ttl_s: int) -> int:
        """Write this node's member record on a new lease of `ttl_s` seconds; returns the lease id.

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        key = self.member_key(member.node_id)

        def put(client: pyetcd.MultiEndpointEtcd3Client) -> int:
            lease = client.lease(ttl_s)
            client.put(key, member.model_dump_json(), lease=lease)
            return int(lease.id)

        return self.etcd.call(put)

    def put_member(self, member: Member, lease_id: int) -> None:
        """Rewrite this node's member record on its existing lease `lease_id`.

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        key = self.member_key(member.node_id)
        self.etcd.call(lambda client: client.put(key, member.model_dump_json(), lease=lease_id))

    def refresh_member_lease(self, lease_id: int) -> bool:
        """Keep lease `lease_id` alive for another TTL; False when it has already expired.

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        responses = self.etcd.call(lambda client: list(client.refresh_lease(lease_id)))
        return bool(responses) and responses[0].TTL > 0

    def revoke_member_lease(self, lease_id: int) -> None:
        """Revoke lease `lease_id`, deleting the member record on it at once (a lease that has
        already expired is fine: the record is gone already).

        Raises:
            ServiceUnavailable: etcd did not answer.
        """

        def revoke(client: pyetcd.MultiEndpointEtcd3Client) -> None:
            try:
                client.revoke_lease(lease_id)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        self.etcd.call(revoke)

    def members(self) -> tuple[list[Member], list[InvalidEntry]]:
        """The live members (those whose lease has not expired), sorted by node id, and the
        entries that are not live members: invalid, or written without a lease (such an entry
        would never expire, so it proves nothing about its node).

        Members are the federation's nodes, a few: they are read in one range read (with the
        lease of each key, which `read_range` does not keep).

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        response = self.etcd.call(lambda client: client.get_prefix_response(self.members_prefix))
        leased: list[tuple[str, bytes]] = []
        invalid: list[InvalidEntry] = []
        for kv in response.kvs:
            key = kv.key.decode("utf-8", "replace")
            if kv.lease:
                leased.append((key, kv.value))
            else:
                reason = f"member entry {key} has no lease: not a live member (written by hand?)"
                invalid.append(InvalidEntry(key, reason))
        entries, failed = validate_all(Member, leased)
        return [member for _, member in entries], sorted(invalid + failed, key=lambda e: e.key)

    def notification_key_at(self, when: datetime) -> str:
        """The notification key that sorts just before those of runs started at or after `when`
        (aware): pass it as `start_after` to `notification_changes`."""
        return f"{self.notifications_prefix}{when.astimezone(UTC).strftime(NOTIFICATION_STAMP)}"

    def position(self) -> tuple[int, int]:
        """The etcd cluster's id and its current revision (one read of a single key).

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        header = self.etcd.call(
            lambda client: client.get_response(self.notifications_prefix).header
        )
        return int(header.cluster_id), int(header.revision)

    def notification_changes(
        self, after_revision: int, *, start_after: str | None = None
    ) -> RangeRead:
        """The raw notification entries (key, JSON bytes) written after revision
        `after_revision` (0: all retained), in key order (oldest first), and the revision they
        were read at; with `start_after`, only the keys after that one (`read_range`).

        A range read with a minimum mod revision reads the current store, so it works whatever
        was compacted (unlike a watch from an old revision).

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        options = {"min_mod_revision": after_revision + 1} if after_revision else {}
        return read_range(
            self.etcd, self.notifications_prefix, start_after=start_after, range_options=options
        )

    def watch_notifications(self, start_revision: int, callback: Callable[[Any], None]) -> int:
        """Watch the notifications prefix from revision `start_revision` on: `callback` gets
        every pyetcd `WatchResponse` (header, events), or the exception that ended the watch
        (a `grpc.RpcError` when the stream broke, `RevisionCompactedError` after a compaction),
        on pyetcd's watch thread. Returns the watch id (for `cancel_watch`).

        Raises:
            ServiceUnavailable: etcd did not answer, or `start_revision` was compacted.
        """
        return self.etcd.call(
            lambda client: int(
                client.add_watch_prefix_callback(
                    self.notifications_prefix, callback, start_revision=start_revision
                )
            )
        )

    def cancel_watch(self, watch_id: int) -> None:
        """Cancel watch `watch_id` (of `watch_notifications`); one that ended already is fine.

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        self.etcd.call(lambda client: client.cancel_watch(watch_id))


def connect(settings: Settings) -> Registry:
    """The registry at the endpoints and prefix of `settings` (no network call is made yet)."""
    return Registry(Etcd.from_settings(settings), settings.etcd_prefix)
