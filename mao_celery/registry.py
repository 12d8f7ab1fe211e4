"""The federation-wide registry on etcd (design.md §3): tools, datasets, members, notifications.

All keys sit under the configured prefix (default `/mao/`). Creates are etcd transactions that
write only if the key is absent; listings are one prefix range read. Every value read back is
validated with its model, since another member may have written it with another client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import grpc
import pyetcd
from pydantic import BaseModel, ValidationError
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_errors
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
PROBE_TIMEOUT_S = 2.0
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
    serves without quorum): whether it answered and whether it knows a leader."""

    endpoint: str
    answers: bool
    has_leader: bool


def probe_members(
    endpoints: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S
) -> list[MemberProbe]:
    """Ask each endpoint for its status, each within `timeout_s` seconds (one at a time)."""
    found: list[MemberProbe] = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        client = pyetcd.client(host=host.strip("[]"), port=int(port), timeout=timeout_s)
        try:
            status = client.maintenancestub.Status(etcdrpc.StatusRequest(), timeout_s)
            found.append(MemberProbe(endpoint, True, bool(status.leader)))
        except grpc.RpcError:
            found.append(MemberProbe(endpoint, False, False))
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


def too_large(endpoints: Sequence[str], detail: str) -> InvalidInput:
    """The error of a request etcd refused as too large (exit 1: sending it again cannot help)."""
    return InvalidInput(
        f"etcd refused the request: request too large ({detail}) at {','.join(endpoints)}; "
        "make the value or the setting smaller"
    )


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


class Etcd:
    """An etcd v3 client over one or more endpoints, with MAO's error handling.

    A call that fails on one endpoint is retried on the next (pyetcd's failover picks another
    endpoint after a failure; tenacity retries), once per endpoint; then `call` says why (see
    there): unreachable, no quorum, refused, or too large.
    """

    def __init__(self, endpoints: Sequence[str], timeout_s: float) -> None:
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[self._endpoint(e) for e in self.endpoints],
            timeout=timeout_s,
            failover=True,
        )

    @staticmethod
    def _endpoint(endpoint: str) -> pyetcd.Endpoint:
        host, _, port = endpoint.rpartition(":")
        return pyetcd.Endpoint(host, int(port), secure=False, time_retry=5.0)

    def call(self, operation: Callable[[pyetcd.MultiEndpointEtcd3Client], T]) -> T:
        """Run `operation(client)`, failing over across endpoints.

        This is the one mapping of etcd and gRPC errors for every registry command, `status`
        and the worker: after a failed call each member is asked for its status, so that the
        error says whether no member answers or the cluster has no quorum.

        Raises:
            EtcdUnavailable: no endpoint answered ("etcd unreachable (no member answers)"), or
                too few members answer to form a quorum ("etcd cluster has no quorum (k of n
                members answer)"); both are ServiceUnavailable (exit 3).
            ServiceUnavailable: etcd answers but refused the request (e.g. its database is full,
                or authentication is required); the detail says which.
            InvalidInput: etcd refused the request as too large ("request too large").
        """
        failover = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(len(self.endpoints)),
            reraise=True,
        )
        try:
            return failover(operation, self.client)
        except grpc.RpcError as e:
            detail = str(e.details())
            if e.code() in _TOO_LARGE_CODES and _TOO_LARGE_RE.search(detail):
                raise too_large(self.endpoints, detail) from e
            raise self._failure(detail) from e
        except etcd_errors.Etcd3Exception as e:
            raise self._failure(type(e).__name__) from e

    def _failure(self, detail: str) -> ServiceUnavailable:
        probes = probe_members(self.endpoints, min(PROBE_TIMEOUT_S, self.timeout_s))
        return classify_failure(self.endpoints, probes, detail)

    def close(self) -> None:
        """Close the gRPC channels."""
        self.client.close()


def read_prefix(
    etcd: Etcd, prefix: str, model: type[M], **range_options: int
) -> tuple[list[tuple[str, M]], list[InvalidEntry], int]:
    """Read every key under `prefix` in one range read and validate each value with `model`.

    `range_options` go to etcd's range request (e.g. `min_mod_revision`).

    Returns:
        ((key, value) pairs sorted by key, entries that failed validation, the store's revision).
    Raises:
        ServiceUnavailable: etcd did not answer.
    """
    response = etcd.call(
        lambda client: client.get_prefix_response(prefix, sort_order="ascend", **range_options)
    )
    entries: list[tuple[str, M]] = []
    invalid: list[InvalidEntry] = []
    for kv in response.kvs:
        key = kv.key.decode("utf-8", "replace")
        try:
            entries.append((key, _parse(model, key, kv.value)))
        except InvalidInput as e:
            invalid.append(InvalidEntry(key, str(e)))
    return entries, invalid, int(response.header.revision)


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
        """All entries in one prefix read, sorted by name, and the ones that failed validation
        (including those whose name is not the one in their key).

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        entries, invalid, _ = read_prefix(self._etcd, self.prefix, self._model)
        items: list[M] = []
        for key, item in entries:
            try:
                items.append(self._named_as_key(key, item))
            except InvalidInput as e:
                invalid.append(InvalidEntry(key, str(e)))
        return items, invalid

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
        stamp = started_at.strftime("%Y%m%dT%H%M%S.%fZ")
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
        """The live members (those whose lease has not expired), sorted by node id.

        Raises:
            ServiceUnavailable: etcd did not answer.
        """
        entries, invalid, _ = read_prefix(self.etcd, self.members_prefix, Member)
        return [member for _, member in entries], invalid


def connect(settings: Settings) -> Registry:
    """The registry at the endpoints and prefix of `settings` (no network call is made yet)."""
    return Registry(Etcd(settings.etcd_endpoints, settings.etcd_timeout_s), settings.etcd_prefix)
