"""The one HTTP Basic check (MX webhooks and the ops listener use it): what matches and what
never does."""

from __future__ import annotations

import base64

import pytest

from worker.web.basic_auth import matches

USER, PASSWORD = b"oncall", b"correct horse battery"


def _basic(raw: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(raw).decode()}"


def test_the_right_credentials_match_whatever_the_scheme_case() -> None:
    assert matches(_basic(USER + b":" + PASSWORD), USER, PASSWORD)
    assert matches(_basic(USER + b":" + PASSWORD, "basic"), USER, PASSWORD)
    assert matches(_basic(USER + b":" + PASSWORD, "BASIC"), USER, PASSWORD)


def test_a_password_may_contain_a_colon() -> None:
    assert matches(_basic(b"u:p:q"), b"u", b"p:q")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        _basic(USER + b":" + PASSWORD + b"x"),  # wrong password
        _basic(b"other:" + PASSWORD),  # wrong user
        _basic(USER + b":" + PASSWORD, "Bearer"),  # another scheme
        "Basic not*base64",
        "Basic " + base64.b64encode(USER + b":" + PASSWORD).decode()[:-2],  # cut short
        _basic(b"\xff\xfe:" + PASSWORD),  # not UTF-8: compared as bytes, no error
        "Basic",
    ],
)
def test_anything_else_does_not_match(header: str | None) -> None:
    assert not matches(header, USER, PASSWORD)


def test_no_colon_never_matches_even_an_empty_password() -> None:
    assert not matches(_basic(b"oncall"), b"oncall", b"")
    assert matches(_basic(b"oncall:"), b"oncall", b"")
