"""Flower with every endpoint behind its basic auth: `python -m mao_celery.flower [OPTIONS]`.

Why: Flower 2.2 checks basic auth in `BaseHandler.get_current_user`, which tornado calls only for
the methods decorated with `@tornado.web.authenticated`. `/metrics` and `/healthcheck`
(flower/views/monitor.py), the login and 404 handlers and the static files are not, so they
answered anyone even with `FLOWER_BASIC_AUTH` set (`/metrics` lists the workers and task names).

This launcher wraps every handler class of Flower's URL table (`flower.urls.handlers`, which
`flower.app.Flower` builds its routes from) and tornado's static file handler (the
`static_handler_class` of `flower.urls.settings`, which serves `/static/` ahead of that table) in
`BasicAuthGuard`, whose `prepare` checks the same credentials (`options.basic_auth`, from
`FLOWER_BASIC_AUTH`) before any method runs, then starts
`celery -A mao_celery.celery_app flower OPTIONS` (worker.sh flower). Without basic auth nothing
changes: Flower's own rules apply (its API refuses unauthenticated use by default).
`/healthcheck` is guarded too: every endpoint is, and nothing of ours polls it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import sys
from collections.abc import Sequence
from typing import Any, cast

import tornado.web
from tornado.routing import URLSpec

REALM = "flower"


def authorized(header: str, credentials: Sequence[str]) -> bool:
    """True when `header`, an HTTP Authorization header, is `Basic <base64 of user:password>`
    (RFC 7617) for one of `credentials` (each `user:password`); compared in constant time."""
    scheme, _, encoded = header.partition(" ")
    if scheme != "Basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(hmac.compare_digest(given, stored.encode()) for stored in credentials)


class BasicAuthGuard(tornado.web.RequestHandler):
    """A mixin put before a Flower handler class: answers 401 (with a `WWW-Authenticate` challenge)
    to any request without valid basic-auth credentials when Flower's basic auth is on."""

    def prepare(self) -> Any:
        credentials = cast(Any, self.application).options.basic_auth
        if credentials and not authorized(
            self.request.headers.get("Authorization", ""), credentials
        ):
            self.set_status(401)
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
            self.finish("Access denied")  # a finished prepare: tornado runs no method
            return None
        return super().prepare()


def guarded(handler: type[tornado.web.RequestHandler]) -> type[tornado.web.RequestHandler]:
    """`handler` with `BasicAuthGuard` first in its method resolution order."""
    return type(f"Guarded{handler.__name__}", (BasicAuthGuard, handler), {})


def guard_handlers(rules: Sequence[Any]) -> list[Any]:
    """Flower's URL rules (tornado `URLSpec`s or `(pattern, handler[, kwargs])` tuples) with
    every handler class `guarded`, in the same order."""
    result: list[Any] = []
    for rule in rules:
        if isinstance(rule, URLSpec):
            handler = guarded(rule.handler_class)
            result.append(URLSpec(rule.regex.pattern, handler, rule.kwargs, rule.name))
        else:
            pattern, handler_class, *rest = rule
            result.append((pattern, guarded(handler_class), *rest))
    return result


def main(argv: Sequence[str]) -> None:
    """Guard Flower's URL table, then run `celery -A mao_celery.celery_app flower ARGV`.

    Raises:
        SystemExit: always, with Celery's exit status.
    """
    import flower.urls
    from celery.bin.celery import main as celery_main

    flower.urls.handlers[:] = guard_handlers(flower.urls.handlers)
    flower.urls.settings["static_handler_class"] = guarded(tornado.web.StaticFileHandler)
    sys.argv = ["celery", "-A", "mao_celery.celery_app", "flower", *argv]
    celery_main()


if __name__ == "__main__":
    main(sys.argv[1:])
