"""Worker and beat log lines that no value from outside can forge or use to drive a terminal.

Notifications, registry entries and tool output reach the node's log (e.g. `tasks.
log_new_notifications`); a newline in a notification's field would otherwise start a forged log
line. `PrintableFilter` makes each record's message `text.printable` on the handlers Celery sets
up for the worker and beat (`install`, connected to Celery's `after_setup_logger` and
`after_setup_task_logger` signals in celery_app.py). Tracebacks (`exc_info`) are left as they are:
the formatter appends them on lines of their own, and they come from our code.
"""

from __future__ import annotations

import logging
from typing import Any

from mao_celery.text import printable


class PrintableFilter(logging.Filter):
    """Replaces a record's message by `text.printable(record.getMessage())` and clears its args.

    Idempotent (a message already printable is unchanged), so a record passing through several
    filtered handlers is escaped once.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format: the handler reports it (handleError)
            return True
        record.msg = printable(message)
        record.args = ()
        return True


def install(logger: logging.Logger, **_signal_kwargs: Any) -> None:
    """Add a `PrintableFilter` to each handler of `logger` that has none yet.

    The receiver of Celery's `after_setup_logger` / `after_setup_task_logger` signals, whose
    other arguments (loglevel, logfile, format, colorize) are ignored.
    """
    for handler in logger.handlers:
        if not any(isinstance(f, PrintableFilter) for f in handler.filters):
            handler.addFilter(PrintableFilter())
