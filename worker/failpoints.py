"""Failpoints: named steps where a reliability test freezes a worker so it can SIGKILL it there.

Production code calls :func:`hit` at a few named places (see :data:`POINTS`). Unless the
environment variable ``REAUTH_FAILPOINT`` names that point, ``hit`` returns at once and does
nothing else: it is a dictionary lookup, no I/O, no setting. When it is armed, the process

1. appends ``"<name> <pid>"`` to the file named by ``REAUTH_FAILPOINT_FILE`` (if set), so the test
   knows the step has been reached, and
2. sleeps ``REAUTH_FAILPOINT_PAUSE`` seconds (default 120), blocking the task (and, inside the MX
   calls, its event loop) right there, while the test kills the worker's process group.

``REAUTH_FAILPOINT`` may name several points separated by commas. These variables are test
instrumentation, not settings: they are not in :class:`worker.config.Settings` and an operator
never sets them. tests/reliability/test_worker_kill.py is their user; docs/RELIABILITY.md lists
the points.
"""

from __future__ import annotations

import os
import time

ENV = "REAUTH_FAILPOINT"
ENV_FILE = "REAUTH_FAILPOINT_FILE"
ENV_PAUSE = "REAUTH_FAILPOINT_PAUSE"

#: Every point production code passes, in pipeline order.
POINTS = (
    "after_claim",  # scan.run_scan: a page is claimed and committed, not yet enqueued
    "during_mx_calls",  # pipeline.call_all: one MX call answered, others may be in flight
    "after_mx_calls",  # pipeline.regenerate_batch: all MX answers in, nothing written yet
    "after_commit",  # tasks.regenerate: the batch transaction committed, message not acked
    "after_deliver",  # notify.relay.deliver_batch: sink delivered, rows not marked sent
)


def hit(name: str) -> None:
    """Pass the failpoint ``name``: a no-op unless ``REAUTH_FAILPOINT`` arms it."""
    armed = os.environ.get(ENV)
    if not armed or name not in armed.split(","):
        return
    path = os.environ.get(ENV_FILE)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get(ENV_PAUSE, "120")))
