"""The periodic tasks every MAO node has, installed by RedBeat as static entries.

Scheduled tool runs are not here: `maoctl tool schedule` stores them in Redis (schedules.py).
The member heartbeat and the notification listener are not beat entries either: they are
threads of every beat process (periodic.py `start_node_threads`).
"""

from typing import Any

NOTIFICATION_LISTENER_INTERVAL_S = 10.0
"""Seconds after which the notification listener reads by range and watches again, at the
latest (a watch on an etcd member cut off from the others may hang without an error)."""
RECOVERY_INTERVAL_S = 30.0
"""Seconds between two sweeps of `mao.recover_runs` (runs whose worker died)."""


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` of a node: the recovery sweep."""
    return {"mao-recover-runs": _every("mao.recover_runs", RECOVERY_INTERVAL_S)}


def _every(task: str, interval_s: float) -> dict[str, Any]:
    """An entry firing `task` every `interval_s` seconds, each fire expiring at the next one."""
    return {"task": task, "schedule": interval_s, "options": {"expires": interval_s}}
