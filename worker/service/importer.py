"""``reauth members import``: parse JSONL or CSV member files and upsert them by member_guid.

Parsing is pure (bytes in, rows and line-numbered errors out) so it can be fuzzed; the upsert is
a thin shell. A bad row is reported with its line number and reason and is not written; with
``strict`` nothing is written if any row is bad. A changed member gets ``next_attempt_at = now``
so the next scan re-evaluates it, and an episode the new state no longer justifies (e.g. back to
CONNECTED) is closed at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from sqlalchemy.orm import Session

from worker.core.policy import (
    CONNECTION_STATUSES,
    OAUTH_ERROR_REASONS,
    OAUTH_STATUSES,
    PolicyConfig,
    Update,
    decide,
)
from worker.errors import InputError
from worker.store import decisions, members

#: A longer line is refused without being parsed (a 10 MB line is an error, not a member).
MAX_LINE_BYTES = 64 * 1024
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
            raise ValueError(f"unknown oauth_status {v!r}; expected PENDING, SUCCESS or ERRORED")
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


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(data.splitlines(), start=1)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "row"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse(data: bytes, fmt: Literal["jsonl", "csv"]) -> Parsed:
    """Parse a whole file. Never raises for bad content: every problem is a :class:`RowError`."""
    out = Parsed()
    seen: dict[str, int] = {}
    records: Iterator[tuple[int, Any]] = (
        _jsonl_records(data, out) if fmt == "jsonl" else _csv_records(data, out)
    )
    for line, record in records:
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


def _csv_records(data: bytes, out: Parsed) -> Iterator[tuple[int, Any]]:
    lines: list[tuple[int, str]] = []
    for line, raw in _lines(data):
        text = _decode(line, raw, out)
        if text is not None:
            lines.append((line, text))
    if not lines:
        return
    header_line, header_text = lines[0]
    header = next(csv.reader([header_text]))
    header = [h.strip() for h in header]
    if "member_guid" not in header:
        out.errors.append(RowError(header_line, "CSV header has no member_guid column"))
        return
    for line, text in lines[1:]:
        if not text.strip():
            continue
        try:
            values = next(csv.reader(io.StringIO(text)))
        except csv.Error as exc:
            out.errors.append(RowError(line, f"bad CSV: {exc}"))
            continue
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
    written: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "episodes_closed": self.episodes_closed,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
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
                changes.append(
                    decisions.Change(m.id, snap.state, decision.fields, keep_last_error=True)
                )
            else:
                members.make_due(m, now)
        session.flush()
        result.episodes_closed += decisions.apply(session, changes, now=now)
    return result
