"""Lock and wait timings, for the benchmark only (``python -m bench.waits``).

Off unless ``REAUTH_WAITS_FILE`` names a file when the process starts: then each timed wait
appends one line ``kind<TAB>pid<TAB>seconds`` to it (one small O_APPEND write, so the pool
processes of a worker can share the file). Off, a timed site costs one global read. Kinds:
``claim:<table>`` (a FOR UPDATE SKIP LOCKED claim statement), ``rate_permit`` (a call reserving
its MX rate-limit slot, before the in-flight cap), ``rate_limiter`` (inside the cap: waiting
for that slot, or taking one when there is no fresh permit), ``rate_permit_stale`` (a permit
too old to use, by how late), ``session`` (a call waiting for its user's Nexus session to be
created, single-flight), ``session_lock`` (a creator waiting for another process's creation
lock), ``scan_lock`` (taking the scan singleton).
"""

from __future__ import annotations

import os

#: The file timings go to; None (the default): timing is off.
FILE: str | None = os.environ.get("REAUTH_WAITS_FILE") or None


def note(kind: str, seconds: float) -> None:
    """Append one timing (call only when :data:`FILE` is set)."""
    if FILE is None:
        return
    fd = os.open(FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind}\t{os.getpid()}\t{seconds:.6f}\n".encode())
    finally:
        os.close(fd)
