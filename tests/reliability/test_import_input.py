"""Hostile import input: control characters, CSV records spanning lines, a byte-order mark,
times in the future and identifiers that a spreadsheet would run as formulas.

Each class is checked on the pure parser, and the ones that reach the database through the CLI
in process on SQLite and PostgreSQL (good rows written, bad rows reported by line).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models import Member
from tests.pipeline_helpers import cli
from worker.service.importer import FUTURE_SKEW, MAX_LINE_BYTES, parse
from worker.store.db import make_engine

pytestmark = [pytest.mark.reliability]

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CSV_HEADER = b"member_guid,user_guid,institution_code,is_oauth,connection_status,oauth_started_at"


def _rec(guid: str, **over: Any) -> dict[str, Any]:
    return {
        "member_guid": guid,
        "user_guid": "USR-1",
        "institution_code": "chase",
        "is_oauth": True,
        "connection_status": "EXPIRED",
        **over,
    }


def _jsonl(*recs: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in recs) + b"\n"


def _guids(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.scalars(select(Member.member_guid)))
    finally:
        engine.dispose()


# --- control characters ------------------------------------------------------------------------

CONTROL_FILES = [
    pytest.param(
        "m.jsonl",
        _jsonl(_rec("MBR-1"), _rec("MBR-2", user_guid="USR\x00x"), _rec("MBR-3")),
        "U+0000",
        id="jsonl-nul",
    ),
    pytest.param(
        "m.jsonl",
        _jsonl(_rec("MBR-1"), _rec("MBR-2", institution_code="ch\x1base"), _rec("MBR-3")),
        "U+001B",
        id="jsonl-escape",
    ),
    pytest.param(
        "m.csv",
        CSV_HEADER + b"\nMBR-1,USR-1,chase,true,EXPIRED,\nMBR-2,USR\x00,chase,true,EXPIRED,\n"
        b"MBR-3,USR-3,chase,true,EXPIRED,\n",
        "U+0000",
        id="csv-nul",
    ),
    pytest.param(
        "m.csv",
        CSV_HEADER + b"\nMBR-1,USR-1,chase,true,EXPIRED,\nMBR-2,USR-2\x7f,chase,true,EXPIRED,\n"
        b"MBR-3,USR-3,chase,true,EXPIRED,\n",
        "U+007F",
        id="csv-del",
    ),
]


@pytest.mark.parametrize(("name", "data", "word"), CONTROL_FILES)
def test_control_character_rejects_its_row_and_good_rows_are_written(  # noqa: PLR0917
    name: str,
    data: bytes,
    word: str,
    env: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A NUL (PostgreSQL refuses it) or another control character is a row error with its line;
    the other rows of the file are written on SQLite and PostgreSQL alike."""
    f = tmp_path / name
    f.write_bytes(data)
    code, out = cli(capsys, "members", "import", str(f), "--json")
    assert code == 1, out
    line = 2 if name.endswith(".jsonl") else 3
    assert [e["line"] for e in out["errors"]] == [line], out
    assert word in out["errors"][0]["message"]
    assert out["inserted"] == 2
    assert _guids(env) == ["MBR-1", "MBR-3"]


def test_tab_is_allowed_in_text() -> None:
    parsed = parse(_jsonl(_rec("MBR-1", user_id="a\tb")), "jsonl")
    assert parsed.errors == []
    assert [r.user_id for _, r in parsed.rows] == ["a\tb"]


# --- CSV records spanning lines ------------------------------------------------------------------

SPANNING = [
    pytest.param(
        CSV_HEADER
        + b'\nMBR-1,"USR-1\nMBR-evil",chase,true,EXPIRED,\nMBR-2,USR-2,chase,1,DENIED,\n',
        [4],
        [(2, "user_guid")],
        id="quoted-newline-in-guid",
    ),
    pytest.param(
        CSV_HEADER
        + b'\r\nMBR-1,USR-1,"chase\r\n,true",true,EXPIRED,\r\nMBR-2,USR-2,chase,1,DENIED,\r\n',
        [4],
        [(2, "institution_code")],
        id="crlf",
    ),
    pytest.param(
        CSV_HEADER + b'\nMBR-1,USR-1,"ch""ase",true,EXPIRED,\nMBR-2,USR-2,chase,1,DENIED,\n',
        [2, 3],
        [],
        id="escaped-quote",
    ),
    pytest.param(
        CSV_HEADER + b'\nMBR-1,"' + b"u\n" * (MAX_LINE_BYTES // 2) + b'",chase,true,EXPIRED,\n'
        b"MBR-2,USR-2,chase,1,DENIED,\n",
        [MAX_LINE_BYTES // 2 + 3],
        [(2, "record longer than")],
        id="record-over-the-cap",
    ),
    pytest.param(
        CSV_HEADER + b'\nMBR-1,"USR\n\xff",chase,true,EXPIRED,\nMBR-2,USR-2,chase,1,DENIED,\n',
        [4],
        [(3, "invalid UTF-8")],
        id="bad-utf8-inside-a-record",
    ),
]


@pytest.mark.parametrize(("data", "good_lines", "bad"), SPANNING)
def test_csv_is_parsed_as_csv_and_reported_by_starting_line(
    data: bytes, good_lines: list[int], bad: list[tuple[int, str]]
) -> None:
    """A quoted newline stays inside its field (the rest of it never becomes a member); a record
    is reported by the line it starts on; a record over the cap and a bad byte inside a record
    are errors; the rows after them keep their line numbers."""
    parsed = parse(data, "csv")
    assert [line for line, _ in parsed.rows] == good_lines
    assert "MBR-evil" not in {r.member_guid for _, r in parsed.rows}
    assert [e.line for e in parsed.errors] == [line for line, _ in bad], parsed.errors
    for err, (_, word) in zip(parsed.errors, bad, strict=True):
        assert word in err.message


# --- byte-order mark ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("jsonl", b"\xef\xbb\xbf" + _jsonl(_rec("MBR-1"), _rec("MBR-2"))),
        ("csv", b"\xef\xbb\xbf" + CSV_HEADER + b"\nMBR-1,U,c,true,,\r\nMBR-2,U,c,true,,\r\n"),
    ],
)
def test_a_leading_bom_is_accepted(fmt: str, data: bytes) -> None:
    parsed = parse(data, fmt)  # type: ignore[arg-type]
    assert parsed.errors == []
    assert [r.member_guid for _, r in parsed.rows] == ["MBR-1", "MBR-2"]


# --- formulas and the future -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", " ="])
@pytest.mark.parametrize("field", ["member_guid", "user_guid", "user_id", "institution_code"])
def test_formula_looking_identifier_rejects_the_row(field: str, prefix: str) -> None:
    data = _jsonl(_rec("MBR-1"), _rec("MBR-2", **{field: prefix + "cmd|'/c calc'!A1"}))
    parsed = parse(data, "jsonl", now=NOW)
    assert [line for line, _ in parsed.rows] == [1]
    assert [e.line for e in parsed.errors] == [2]
    assert field in parsed.errors[0].message
    assert "formula" in parsed.errors[0].message


@pytest.mark.parametrize(
    ("field", "when", "warned"),
    [
        ("oauth_started_at", NOW + FUTURE_SKEW + timedelta(seconds=1), True),
        ("successfully_aggregated_at", NOW + timedelta(days=400), True),
        ("oauth_started_at", NOW + FUTURE_SKEW, False),
        ("successfully_aggregated_at", NOW - timedelta(days=1), False),
    ],
)
def test_future_time_is_a_warning_and_the_row_is_kept(
    field: str, when: datetime, warned: bool
) -> None:
    data = _jsonl(_rec("MBR-1"), _rec("MBR-2", **{field: when.isoformat()}))
    parsed = parse(data, "jsonl", now=NOW)
    assert parsed.errors == []
    assert [line for line, _ in parsed.rows] == [1, 2]
    assert [w.line for w in parsed.warnings] == ([2] if warned else [])
    if warned:
        assert field in parsed.warnings[0].message
        assert "future" in parsed.warnings[0].message


def test_cli_reports_future_warnings_and_formula_errors_by_line(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json carries warnings with line numbers; the text output prints them; the warned row
    is written, the formula row is not."""
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    f = tmp_path / "m.jsonl"
    f.write_bytes(_jsonl(_rec("MBR-1", oauth_started_at=future), _rec("MBR-2", user_guid="=1+1")))
    code, out = cli(capsys, "members", "import", str(f), "--json")
    assert code == 1
    assert [(w["line"], "future" in w["message"]) for w in out["warnings"]] == [(1, True)]
    assert [e["line"] for e in out["errors"]] == [2]
    assert _guids(env) == ["MBR-1"]
    code, text = cli(capsys, "members", "import", str(f))
    assert f"{f}:1" in text
    assert "warning" in text
