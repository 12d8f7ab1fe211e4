"""The periodic tasks every MAO node has, installed by RedBeat as static entries.

Scheduled tool runs are not here: `maoctl tool schedule` stores them in Redis (schedules.py).
"""

from typing import Any

NOTIFICATION_LISTENER_INTERVAL_S = 10.0
HEARTBEAT_INTERVAL_S = 10.0
LOST_RUNS_INTERVAL_S = 600.0

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "mao-listen-notifications": {
        "task": "mao.listen_notifications",
        "schedule": NOTIFICATION_LISTENER_INTERVAL_S,
        "options": {"expires": NOTIFICATION_LISTENER_INTERVAL_S},
    },
    "mao-member-heartbeat": {
        "task": "mao.heartbeat",
        "schedule": HEARTBEAT_INTERVAL_S,
        "options": {"expires": HEARTBEAT_INTERVAL_S},
    },
    "mao-fail-lost-runs": {
        "task": "mao.fail_lost_runs",
        "schedule": LOST_RUNS_INTERVAL_S,
        "options": {"expires": LOST_RUNS_INTERVAL_S},
    },
}
