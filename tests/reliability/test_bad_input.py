"""Scenario 6: hostile input gets a clear, specific error and changes nothing.

Import files with every kind of bad row, invalid configuration values, unknown member guids on
the command line (all through the real ``python -m worker`` process, so what is checked is what
an operator sees), and Hypothesis fuzzing of the two parsers that read outside data: the MX
response mapping and the member importer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import models
from tests.e2e.e2e_helpers import ROOT, run_cli
from worker.errors import BadResponse, MxError
from worker.mx import responses
from worker.service.importer import MAX_LINE_BYTES, parse
from worker.store.db import make_engine

pytestmark = [pytest.mark.reliability]


def _env(db_url: str, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env.update({"REAUTH_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), **extra})
    return env


def _row(guid: str, **over: Any) -> bytes:
    row = {
        "member_guid": guid,
        "user_guid": "USR-1",
        "institution_code": "chase",
        "is_oauth": True,
        "connection_status": "EXPIRED",
        **over,
    }
    return json.dumps(row).encode()


def _table_counts(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            return {
                t.name: int(c.scalar(select(func.count()).select_from(t)) or 0)
                for t in models.Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


# --- import files -------------------------------------------------------------------------------

BAD_JSONL = b"\n".join(
    [
        _row("MBR-good-1"),  # 1 good
        b'{"member_guid": "MBR-broken", "user_guid": ',  # 2 malformed JSON
        _row("MBR-type", is_oauth="maybe"),  # 3 wrong type
        _row("MBR-status", connection_status="SLEEPING"),  # 4 unknown status
        _row("MBR-good-1", connection_status="DENIED"),  # 5 duplicate guid
        b'{"member_guid": "' + b"x" * (10 * 1024 * 1024) + b'"}',  # 6 a 10 MB line
        b'{"member_guid": "MBR-\xff\xfe", "user_guid": "U"}',  # 7 invalid UTF-8
        _row("MBR-good-2", channel="APP"),  # 8 good
        b'["not", "an", "object"]',  # 9 not an object
        _row("MBR-naive", oauth_started_at="2026-01-01T10:00:00"),  # 10 time without zone
        _row("MBR-extra", favourite_colour="blue"),  # 11 unknown field
        _row("MBR-oauth", oauth_status="MAYBE"),  # 12 unknown oauth status
    ]
)
BAD_LINES = {
    2: "JSON",
    3: "boolean",
    4: "SLEEPING",
    5: "duplicate",
    6: "longer than",
    7: "UTF-8",
    9: "object",
    10: "timezone",
    11: "unknown field",
    12: "MAYBE",
}

BAD_CSV = b"\n".join(
    [
        b"member_guid,user_guid,institution_code,is_oauth,connection_status",
        b"MBR-c1,USR-1,chase,true,EXPIRED",  # 2 good
        b"MBR-c2,USR-1,chase,true",  # 3 missing a column
        b"MBR-c3,USR-1,chase,perhaps,EXPIRED",  # 4 wrong type
        b"MBR-c4,USR-1,chase,true,NAPPING",  # 5 unknown status
        b"MBR-c1,USR-1,chase,true,DENIED",  # 6 duplicate
        b"MBR-\xc3\x28,USR-1,chase,true,EXPIRED",  # 7 invalid UTF-8
        b"MBR-c5,USR-1,chase,1,DENIED",  # 8 good
    ]
)
BAD_CSV_LINES = {3: "columns", 4: "boolean", 5: "NAPPING", 6: "duplicate", 7: "UTF-8"}


@pytest.mark.parametrize(
    ("name", "data", "bad", "good"),
    [
        ("members.jsonl", BAD_JSONL, BAD_LINES, 2),
        ("members.csv", BAD_CSV, BAD_CSV_LINES, 2),
    ],
)
def test_import_reports_every_bad_line_and_writes_only_good_rows(  # noqa: PLR0917
    name: str,
    data: bytes,
    bad: dict[int, str],
    good: int,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """Malformed rows, wrong types, unknown statuses, duplicate guids, a 10 MB line and invalid
    UTF-8: each is reported with its line number and a reason that names the problem; with
    --strict nothing at all is written; without it exactly the good rows are."""
    path = tmp_path / name
    path.write_bytes(data)
    env = _env(sqlite_url)
    before = _table_counts(sqlite_url)

    strict = run_cli(env, "members", "import", str(path), "--strict", "--json")
    assert strict.returncode == 1, strict.stderr
    assert "Traceback" not in strict.stderr + strict.stdout
    report = json.loads(strict.stdout)
    assert report["written"] is False
    got = {e["line"]: e["message"] for e in report["errors"]}
    assert set(got) == set(bad), got
    for line, word in bad.items():
        assert word.lower() in got[line].lower(), (line, got[line])
    assert _table_counts(sqlite_url) == before, "--strict wrote something"

    lenient = run_cli(env, "members", "import", str(path), "--json")
    assert lenient.returncode == 1
    report = json.loads(lenient.stdout)
    assert report["inserted"] == good
    assert {e["line"] for e in report["errors"]} == set(bad)
    after = _table_counts(sqlite_url)
    assert after["members"] == before["members"] + good

    human = run_cli(env, "members", "import", str(path), "--strict")
    assert f"{path}:{min(bad)}" in human.stdout, human.stdout


# --- configuration ------------------------------------------------------------------------------

BAD_CONFIG = [
    ("REAUTH_DATABASE_URL", "nonsense"),
    ("REAUTH_DATABASE_URL", "mysql://db/reauth"),
    ("REAUTH_REDIS_URL", "http://localhost:6379"),
    ("REAUTH_MX_API", "soap"),
    ("REAUTH_MX_BASE_URL", "ftp://mx.example"),
    ("REAUTH_MX_TIMEOUT", "-1"),
    ("REAUTH_MX_MAX_CONCURRENCY", "0"),
    ("REAUTH_MX_RATE_LIMIT_PER_SECOND", "fast"),
    ("REAUTH_BATCH_SIZE", "lots"),
    ("REAUTH_CLAIM_LEASE", "forever"),
    ("REAUTH_REMINDER_SCHEDULE", "72h,0"),
    ("REAUTH_MAX_REMINDERS", "0"),
    ("REAUTH_AGGREGATE_AFTER_REAUTH", "maybe"),
    ("REAUTH_REASON_OVERRIDES", '{"DENIED": "bogus"}'),
    ("REAUTH_REASON_OVERRIDES", "not json"),
    ("REAUTH_NOTIFY_SINK", "pigeon"),
    ("REAUTH_NOTIFY_SINK", "webhook"),
    ("REAUTH_TASK_TIME_LIMIT", "900"),
    ("REAUTH_LOG_LEVEL", "LOUD"),
    ("REAUTH_METRICS_PORT", "70000"),
]


def test_each_invalid_config_value_is_one_clear_message_and_exit_2(sqlite_url: str) -> None:
    """``reauth status`` with one bad variable: exit code 2, one ``error:`` message naming the
    variable, no traceback. (All cases run as parallel processes to keep the test fast.)"""
    procs = [
        (
            name,
            value,
            subprocess.Popen(
                [sys.executable, "-m", "worker", "status"],
                env=_env(sqlite_url, **{name: value}),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for name, value in BAD_CONFIG
    ]
    for name, value, proc in procs:
        out, err = proc.communicate(timeout=120)
        text = out + err
        assert proc.returncode == 2, (name, value, text)
        assert "Traceback" not in text, (name, value, text)
        assert text.count("error:") == 1, (name, value, text)
        # The variable named (also when the problem spans two: e.g. the sink and its URL).
        assert name in " ".join(text.split()), (name, value, text)


# --- unknown members ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("rerun", "MBR-NO-SUCH-GUID", "--why", "testing", "--inline"),
        ("oauth-result", "MBR-NO-SUCH-GUID", "--status", "success"),
        ("oauth-result", "MBR-NO-SUCH-GUID", "--status", "error", "--error-reason", "DENIED"),
        ("history", "MBR-NO-SUCH-GUID"),
    ],
)
def test_unknown_member_guid_is_a_clear_error_and_changes_nothing(
    args: tuple[str, ...], sqlite_url: str, tmp_path: Path
) -> None:
    """Any command given a guid that is not in the database names it, exits non-zero, writes
    nothing (not even an audit row)."""
    # Credentials set (no MX is reached): the guid check is what must refuse the command.
    env = _env(sqlite_url, REAUTH_MX_CLIENT_ID="client", REAUTH_MX_API_KEY="key-key-key")
    seed = tmp_path / "one.jsonl"
    seed.write_bytes(_row("MBR-known"))
    assert run_cli(env, "members", "import", str(seed)).returncode == 0
    before = _table_counts(sqlite_url)
    res = run_cli(env, *args)
    text = res.stdout + res.stderr
    assert res.returncode != 0, text
    assert "MBR-NO-SUCH-GUID" in text
    assert "Traceback" not in text
    assert _table_counts(sqlite_url) == before


# --- fuzzing the parsers of outside data ---------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_envelope_keys = st.sampled_from(
    [
        "error",
        "errors",
        "message",
        "code",
        "error_code",
        "detail",
        "member",
        "guid",
        "oauth_window_uri",
        "error_message",
    ]
)
_mx_docs = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_envelope_keys, inner, max_size=4),
    max_leaves=10,
)
_bodies = (
    st.binary(max_size=300)
    | _mx_docs.map(lambda d: json.dumps(d).encode())
    | _json.map(lambda d: json.dumps(d).encode())
    | st.just(b"<html><body>502 Bad Gateway</body></html>")
    | st.just(b"[" * 5000 + b"]" * 5000)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(min_value=100, max_value=599),
    body=_bodies,
    retry_after=st.none() | st.text(max_size=40) | st.integers().map(str),
)
def test_fuzz_mx_response_mapping_never_raises_unexpectedly(
    status: int, body: bytes, retry_after: str | None
) -> None:
    """Whatever MX sends back, the mapping yields data or exactly one MxError: it never raises
    anything else (BadResponse is the documented signal of an unusable 2xx)."""
    doc = responses.body_document(body)
    err = responses.error_for(status, doc, what="fuzz", retry_after=None)
    assert isinstance(err, MxError)
    assert len(str(err)) < 400
    responses.error_code(doc)
    responses.is_session_expired(status, doc)
    seconds = responses.parse_retry_after(retry_after, lambda: datetime.now(UTC))
    assert seconds is None or 0 <= seconds <= responses.MAX_RETRY_AFTER
    try:
        ok = responses.decode_success(status, body, what="fuzz")
        responses.require_str(ok, "member", "oauth_window_uri", what="fuzz", status=status)
    except BadResponse:
        pass


_field_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["EXPIRED", "DENIED", "true", "2026-01-01T00:00:00Z", "2026-13-45", "APP"])
)
_fields = st.sampled_from(
    [
        "member_guid",
        "user_guid",
        "institution_code",
        "is_oauth",
        "connection_status",
        "oauth_status",
        "oauth_started_at",
        "channel",
        "is_being_aggregated",
        "bogus",
    ]
)
_records = st.dictionaries(_fields, _field_values, max_size=8)


@st.composite
def _import_files(draw: st.DrawFn) -> tuple[bytes, str]:
    fmt = draw(st.sampled_from(["jsonl", "csv"]))
    if draw(st.booleans()):
        return draw(st.binary(max_size=400)), fmt
    recs = draw(st.lists(_records, max_size=6))
    if fmt == "jsonl":
        lines = [json.dumps(r).encode() for r in recs]
    else:
        cols = sorted({k for r in recs for k in r}) or ["member_guid"]
        lines = [",".join(cols).encode()] + [
            ",".join("" if r.get(c) is None else str(r.get(c)) for c in cols).encode() for r in recs
        ]
    noise = draw(st.lists(st.binary(max_size=30), max_size=2))
    return b"\n".join(lines + noise), fmt


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_import_files())
def test_fuzz_import_parser_never_raises(case: tuple[bytes, str]) -> None:
    """``importer.parse`` turns any bytes into rows and line-numbered errors, never an
    exception; every error names a line that exists; no guid is accepted twice."""
    data, fmt = case
    parsed = parse(data, fmt)  # type: ignore[arg-type]
    lines = max(1, len(data.splitlines()))
    assert all(1 <= e.line <= lines for e in parsed.errors)
    guids = [r.member_guid for _, r in parsed.rows]
    assert len(guids) == len(set(guids))


def test_a_line_just_over_the_limit_is_refused_without_parsing() -> None:
    line = b'{"member_guid": "' + b"y" * MAX_LINE_BYTES + b'"}'
    parsed = parse(b"\n".join([_row("MBR-a"), line]), "jsonl")
    assert [e.line for e in parsed.errors] == [2]
    assert [r.member_guid for _, r in parsed.rows] == ["MBR-a"]
