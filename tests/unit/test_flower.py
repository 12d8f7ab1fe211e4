"""Unit tests of mao_celery.flower: the basic-auth check and the guarded URL table."""

from __future__ import annotations

import base64

import pytest
import tornado.web
from flower.urls import handlers as flower_handlers
from tornado.routing import URLSpec

from mao_celery.flower import BasicAuthGuard, authorized, guard_handlers

CREDENTIALS = ["mao:s3cret", "other:pw"]


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


@pytest.mark.parametrize("given", ["mao:s3cret", "other:pw"])
def test_authorized_accepts_any_configured_credentials(given: str) -> None:
    assert authorized(basic(given), CREDENTIALS)


@pytest.mark.parametrize(
    "header",
    ["", "Basic", "Basic !!!", basic("mao:wrong"), basic("mao:s3cret!"), "Bearer x",
     "basic " + basic("mao:s3cret").split()[1], basic("ünï:cödé")],
    ids=["none", "empty", "not base64", "wrong", "longer", "bearer", "lower case", "non-ascii"],
)  # fmt: skip
def test_authorized_refuses_anything_else(header: str) -> None:
    assert not authorized(header, CREDENTIALS)


def test_every_handler_of_flower_is_guarded_in_place() -> None:
    guarded = guard_handlers(flower_handlers)

    def parts(rule: object) -> tuple[str, type[tornado.web.RequestHandler]]:
        if isinstance(rule, URLSpec):
            return rule.regex.pattern, rule.handler_class
        assert isinstance(rule, tuple)
        return rule[0], rule[1]

    assert len(guarded) == len(flower_handlers)
    for before, after in zip(flower_handlers, guarded, strict=True):
        (pattern, handler), (new_pattern, new_handler) = parts(before), parts(after)
        assert new_pattern == pattern
        assert new_handler.__mro__[1:3] == (BasicAuthGuard, handler)
    assert any(parts(rule)[0] == "/metrics" for rule in guarded)
