"""``reauth members import``: parse JSONL or CSV member files and upsert them by member_guid.

Parsing is pure (bytes in, rows and line-numbered errors out) so it can be fuzzed; the upsert is
a thin shell. A bad row is reported with its line number and reason and is not written; with
``strict`` nothing is written if any row is bad. A changed member gets ``next_attempt_at = now``
so the next scan re-evaluates it, and an episode the new state no longer justifies (e.g. back to
CONNECTED) is closed at once.

Hostile input, and what is done with it:

* A UTF-8 byte-order mark at the start of the file is accepted (JSONL and CSV).
* CSV is parsed as CSV: a quoted field may span lines, and a record is reported by the line it
  starts on. No physical line and no record may be longer than ``MAX_LINE_BYTES``; a line that
  is not UTF-8 is reported by its own number and its record is not written.
* A control character (anything below U+0020 except tab, and U+007F) in a text value rejects
  the row: such text is never a guid or a code, and PostgreSQL refuses NUL outright.
* An identifier (``member_guid``, ``user_guid``, ``user_id``, ``institution_code``) starting
  with ``=``, ``+``, ``-`` or ``@`` rejects the row: identifiers never start so, and the value
  would run as a formula in the spreadsheet an operator opens an export in.
* A time later than ``now + FUTURE_SKEW`` keeps its row but is reported as a warning with its
  line (clocks of the source system may be off; the value is stored as given). ``now`` is
  passed in, so parsing stays pure.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from sqlalchemy.orm import Session

from worker.core.funnel import How
from worker.core.policy import (
    CONNECTION_STATUSES,
    OAUTH_ERROR_REASONS,
    OAUTH_STATUSES,
    PolicyConfig,
    Update,
    decide,
)
from worker.errors import InputError
from worker.store import decisions, funnel, members

#: A longer line is refused without being parsed (a 10 MB line is an error, not a member).
MAX_LINE_BYTES = 64 * 1024
#: A time further than this past ``now`` is reported as a warning (its row is still written).
FUTURE_SKEW = timedelta(minutes=5)
#: Identifiers: a value starting with one of these would be a formula in a spreadsheet.
IDENTIFIER_FIELDS = ("member_guid", "user_guid", "user_id", "institution_code")
FORMULA_PREFIXES = ("=", "+", "-", "@")
_TIME_FIELDS = ("oauth_started_at", "successfully_aggregated_at")
_BOM = b"\xef\xbb\xbf"
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


class MemberRow(BaseModel):
    """One valid input row."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    member_guid: str
    user_guid: str
    user_id: str | None = None
    institution_code: str
    is_oauth: bool
    connection_status: str | None = None
    oauth_status: str | None = None
    oauth_error_reason: str | None = None
    oauth_started_at: datetime | None = None
    successfully_aggregated_at: datetime | None = None
    is_being_aggregated: bool = False
    channel: Literal["BROWSER", "APP"] = "BROWSER"

    @field_validator("member_guid", "user_guid", "institution_code")
    @classmethod
    def _required_text(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        if len(v) > 64:
            raise ValueError("longer than 64 characters")
        return v

    @field_validator("user_id")
    @classmethod
    def _user_id_fits(cls, v: str | None) -> str | None:
        if v is not None and len(v) > 128:
            raise ValueError("longer than 128 characters")
        return v

    @field_validator(
        "user_id", "connection_status", "oauth_status", "oauth_error_reason", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator(
        "connection_status", "oauth_status", "oauth_error_reason", "channel", mode="before"
    )
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("connection_status")
    @classmethod
    def _known_status(cls, v: str | None) -> str | None:
        if v is not None and v not in CONNECTION_STATUSES:
            raise ValueError(f"unknown connection_status {v!r}")
        return v

    @field_validator("oauth_status")
    @classmethod
    def _known_oauth_status(cls, v: str | None) -> str | None:
        if v is not None and v not in OAUTH_STATUSES:
            raise ValueError(
                f"unknown oauth_status {v!r}; expected one of {', '.join(sorted(OAUTH_STATUSES))}"
            )
        return v

    @field_validator("oauth_error_reason")
    @classmethod
    def _known_error_reason(cls, v: str | None) -> str | None:
        if v is not None and v not in OAUTH_ERROR_REASONS:
            raise ValueError(f"unknown oauth_error_reason {v!r}")
        return v

    @field_validator("is_oauth", "is_being_aggregated", mode="before")
    @classmethod
    def _boolish(cls, v: Any) -> Any:
        if isinstance(v, str):
            low = v.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"not a boolean: {v!r}")
        if isinstance(v, bool) or v is None:
            return v if v is not None else False
        raise ValueError(f"not a boolean: {v!r}")

    @field_validator("oauth_started_at", "successfully_aggregated_at", mode="before")
    @classmethod
    def _blank_time(cls, v: Any) -> Any:
        if v == "" or v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("must be an ISO 8601 time string")
        return v

    @field_validator("oauth_started_at", "successfully_aggregated_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("time has no timezone; add one, e.g. 2026-01-31T12:00:00Z")
        return v


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Parsed:
    rows: list[tuple[int, MemberRow]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    #: Rows kept but worth a look (e.g. a time in the future), by line.
    warnings: list[RowError] = field(default_factory=list)


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(data.splitlines(), start=1)


def _is_control(ch: str) -> bool:
    return (ch < " " and ch != "\t") or ch == "\x7f"


def _hostile_text(record: Mapping[str, Any]) -> str | None:
    """The reason to refuse a record whose text would be unsafe to store, or ``None``."""
    for key, value in record.items():
        if not isinstance(value, str):
            continue
        bad = next((ch for ch in value if _is_control(ch)), None)
        if bad is not None:
            return f"{key}: contains the control character U+{ord(bad):04X}"
        if key in IDENTIFIER_FIELDS and value.lstrip().startswith(FORMULA_PREFIXES):
            return (
                f"{key}: starts with {value.lstrip()[0]!r}, which a spreadsheet would run as a "
                "formula; identifiers never start with = + - @"
            )
    return None


def _future_times(row: MemberRow, now: datetime) -> list[str]:
    limit = now + FUTURE_SKEW
    found = []
    for name in _TIME_FIELDS:
        value: datetime | None = getattr(row, name)
        if value is not None and value > limit:
            found.append(f"{name} {value.isoformat()} is in the future (now {now.isoformat()})")
    return found


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "row"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse(data: bytes, fmt: Literal["jsonl", "csv"], *, now: datetime | None = None) -> Parsed:
    """Parse a whole file. Never raises for bad content: every problem is a :class:`RowError`.

    With ``now``, a time later than ``now + FUTURE_SKEW`` is reported in ``warnings``.
    """
    out = Parsed()
    seen: dict[str, int] = {}
    data = data.removeprefix(_BOM)
    records: Iterator[tuple[int, Any]] = (
        _jsonl_records(data, out) if fmt == "jsonl" else _csv_records(data, out)
    )
    for line, record in records:
        hostile = _hostile_text(record)
        if hostile is not None:
            out.errors.append(RowError(line, hostile))
            continue
        try:
            row = MemberRow.model_validate(record)
        except ValidationError as exc:
            out.errors.append(RowError(line, _validation_message(exc)))
            continue
        if row.member_guid in seen:
            out.errors.append(
                RowError(
                    line,
                    f"duplicate member_guid {row.member_guid!r} (first on line "
                    f"{seen[row.member_guid]})",
                )
            )
            continue
        seen[row.member_guid] = line
        out.rows.append((line, row))
        if now is not None:
            out.warnings.extend(RowError(line, w) for w in _future_times(row, now))
    out.errors.sort(key=lambda e: e.line)
    return out


def _decode(line: int, raw: bytes, out: Parsed) -> str | None:
    if len(raw) > MAX_LINE_BYTES:
        out.errors.append(RowError(line, f"line longer than {MAX_LINE_BYTES} bytes"))
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.errors.append(RowError(line, f"invalid UTF-8 at byte {exc.start}"))
        return None


def _jsonl_records(data: bytes, out: Parsed) -> Iterator[tuple[int, Any]]:
    for line, raw in _lines(data):
        text = _decode(line, raw, out)
        if text is None or not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            out.errors.append(RowError(line, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(record, dict):
            out.errors.append(RowError(line, "expected a JSON object"))
            continue
        yield line, record


@dataclass
class _CsvText:
    """A CSV file checked line by line: its text, the unusable lines, and line sizes."""

    text: str
    bad: set[int]
    ends: list[int]  # ends[n]: bytes of lines 1..n, line ends included
    ending: list[int]  # ending[n]: bytes of line n's line end

    def record_bytes(self, start: int, end: int) -> int:
        return self.ends[end] - self.ends[start - 1] - self.ending[end]

    def touches_bad(self, start: int, end: int) -> bool:
        return not self.bad.isdisjoint(range(start, end + 1))


def _csv_text(data: bytes, out: Parsed) -> _CsvText:
    checked = _CsvText("", set(), [0], [0])
    texts: list[str] = []
    for line, raw in enumerate(data.splitlines(keepends=True), start=1):
        content = raw.rstrip(b"\r\n")
        checked.ends.append(checked.ends[-1] + len(raw))
        checked.ending.append(len(raw) - len(content))
        if _decode(line, content, out) is None:
            checked.bad.add(line)
        texts.append(raw.decode("utf-8", errors="replace"))
    checked.text = "".join(texts)
    return checked


def _csv_rows(checked: _CsvText, out: Parsed) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records made only of good lines and within the size cap, by starting line."""
    reader = csv.reader(io.StringIO(checked.text, newline=""))
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if not checked.touches_bad(start, reader.line_num):
                out.errors.append(RowError(start, f"bad CSV: {exc}"))
            continue
        end = reader.line_num
        if checked.touches_bad(start, end):
            continue  # already reported by line
        if checked.record_bytes(start, end) > MAX_LINE_BYTES:
            out.errors.append(RowError(start, f"record longer than {MAX_LINE_BYTES} bytes"))
            continue
        if values and (len(values) > 1 or values[0].strip()):
            yield start, values


def _csv_records(data: bytes, out: Parsed) -> Iterator[tuple[int, Any]]:
    """Records of a CSV file as dicts, each with the line it starts on.

    Each physical line is checked first (length, UTF-8) so a bad byte is reported by its own
    line; such a line is still fed to the CSV reader (decoded with replacement characters) so
    that the records around it keep their boundaries, and its record is dropped. The header is
    the first record.
    """
    checked = _csv_text(data, out)
    rows = _csv_rows(checked, out)
    first = next(rows, None)
    if first is None:
        return
    header_line, header = first[0], [h.strip() for h in first[1]]
    if checked.bad.intersection(range(1, header_line)):
        return  # the header line itself was unreadable: every row would be a guess
    if "member_guid" not in header:
        out.errors.append(RowError(header_line, "CSV header has no member_guid column"))
        return
    for line, values in rows:
        if len(values) != len(header):
            out.errors.append(
                RowError(line, f"expected {len(header)} columns, found {len(values)}")
            )
            continue
        yield line, dict(zip(header, values, strict=True))


def detect_format(path: Path, explicit: str | None) -> Literal["jsonl", "csv"]:
    fmt = (explicit or path.suffix.lstrip(".")).lower()
    if fmt in {"jsonl", "ndjson", "json"}:
        return "jsonl"
    if fmt == "csv":
        return "csv"
    raise InputError(f"{path}: cannot tell the format; use a .jsonl or .csv name, or --format")


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    episodes_closed: int = 0
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    written: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "episodes_closed": self.episodes_closed,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
            "warnings": [{"line": w.line, "message": w.message} for w in self.warnings],
            "written": self.written,
        }


def upsert(
    session: Session, rows: list[MemberRow], *, now: datetime, cfg: PolicyConfig
) -> ImportResult:
    """Insert new members and update changed ones (chunked by 1,000).

    A changed member is decided again at once on the new data (any batch holding it loses its
    claim, so it cannot write a decision taken on the old data): an episode the new state no
    longer justifies ends here, through the one decision writer.
    """
    result = ImportResult()
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        existing = members.by_guids(session, [r.member_guid for r in chunk], for_update=True)
        changes: list[decisions.Change] = []
        aggregated: dict[int, datetime | None] = {}
        for row in chunk:
            values = row.model_dump()
            m = existing.get(row.member_guid)
            if m is None:
                members.add_new(session, values, now=now)
                result.inserted += 1
                continue
            if not members.set_mx_fields(m, values):
                result.unchanged += 1
                continue
            result.updated += 1
            snap = members.snapshot(m)
            decision = decide(snap, now, cfg)
            if isinstance(decision, Update):
                # MX's own export says CONNECTED: the reconnection is MX's word.
                connected = (m.connection_status or "").upper() == "CONNECTED"
                changes.append(
                    decisions.Change(
                        m.id, snap.state, decision.fields, keep_last_error=True,
                        confirmed=connected,
                    )
                )  # fmt: skip
                aggregated[m.id] = m.successfully_aggregated_at
            else:
                members.make_due(m, now)
        session.flush()
        result.episodes_closed += decisions.apply(session, changes, now=now, how=How.IMPORT)
        funnel.aggregated(session, aggregated)
    return result
