"""``reauth members import``: upsert members from a JSONL or CSV file."""

from __future__ import annotations

from pathlib import Path

import typer

from worker.cli import app
from worker.cli.output import JSON_OPT, console, print_json, runtime, safe, setup
from worker.clock import utc_now
from worker.errors import InputError
from worker.store.db import session_scope

members_app = typer.Typer(help="Member data: import.")
app.add_typer(members_app, name="members")


@members_app.command("import")
def import_members(
    file: Path = typer.Argument(..., help="JSONL or CSV file of members.", exists=False),
    strict: bool = typer.Option(False, "--strict", help="Write nothing if any row is bad."),
    fmt: str | None = typer.Option(None, "--format", help="jsonl or csv (default: by suffix)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Upsert members by member_guid. Bad rows are reported by line and not written."""
    from worker.service import actions, importer
    from worker.store import audit

    settings = setup(quiet=json_out)
    if not file.is_file():
        raise InputError(f"{file}: no such file")
    kind = importer.detect_format(file, fmt)
    now = utc_now()
    parsed = importer.parse(file.read_bytes(), kind, now=now)
    if parsed.errors and strict:
        result = importer.ImportResult(
            errors=parsed.errors, warnings=parsed.warnings, written=False
        )
    else:
        with runtime(settings) as rt, session_scope(rt.sessions) as s:
            result = importer.upsert(s, [r for _, r in parsed.rows], now=now, cfg=rt.policy)
            result.errors = parsed.errors
            result.warnings = parsed.warnings
            audit.record_action(
                s,
                actor=actions.default_actor(),
                command="members import",
                arguments={"file": str(file), "strict": strict, "rows": len(parsed.rows)},
                why=None,
                result={
                    k: v for k, v in result.as_dict().items() if k not in {"errors", "warnings"}
                },
                now=now,
            )
    if json_out:
        print_json(result.as_dict())
    else:
        for err in result.errors:
            console.print(f"{safe(file)}:{err.line}: {safe(err.message)}", style="red")
        for warning in result.warnings:
            console.print(
                f"{safe(file)}:{warning.line}: warning: {safe(warning.message)}", style="yellow"
            )
        verb = "wrote" if result.written else "wrote nothing (--strict)"
        console.print(
            f"{verb}: {result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.episodes_closed} episodes closed; "
            f"{len(result.errors)} bad rows, {len(result.warnings)} warnings"
        )
    if result.errors:
        raise typer.Exit(1)
