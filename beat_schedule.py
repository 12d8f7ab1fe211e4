"""The periodic tasks every MAO node has, installed by RedBeat as static entries.

Scheduled tool runs are not here: `maoctl tool schedule` stores them in Redis (schedules.py).
The heartbeat's interval is a setting (`MAO_HEARTBEAT_INTERVAL_S`), the other intervals fixed.
"""

from typing import Any

NOTIFICATION_LISTENER_INTERVAL_S = 10.0
RECOVERY_INTERVAL_S = 30.0
"""Seconds between two sweeps of `mao.recover_runs` (runs whose worker died)."""


def beat_schedule(heartbeat_interval_s: float) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` of a node whose heartbeat runs every `heartbeat_interval_s` s."""
    return {
        "mao-listen-notifications": _every(
            "mao.listen_notifications", NOTIFICATION_LISTENER_INTERVAL_S
        ),
        "mao-member-heartbeat": _every("mao.heartbeat", heartbeat_interval_s),
        "mao-recover-runs": _every("mao.recover_runs", RECOVERY_INTERVAL_S),
    }


def _every(task: str, interval_s: float) -> dict[str, Any]:
    """An entry firing `task` every `interval_s` seconds, each fire expiring at the next one."""
    return {"task": task, "schedule": interval_s, "options": {"expires": interval_s}}
