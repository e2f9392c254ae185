"""Profile the whole Celery worker tree during a small pipeline run with py-spy, by stage.

    uv run python -m bench.profile_pipeline --due 3000

Seeds ``due`` members (x10 in the table), runs the pipeline scenario of ``python -m bench``
(``runs.pipeline``: sandbox at ``--latency``, prefork worker with 2 processes, batch 200, 200
in flight), and records the worker's process tree with ``py-spy record --subprocesses`` from
the moment the scan is sent until the last message is on the stream (idle threads are not
sampled, so the samples approximate CPU). Writes ``bench/profiles/celery-pipeline-pyspy.txt``:
the share of samples per stage (the MX calls, the batch's transactions, the relay, the scan,
Celery in the pool processes, the Celery parent, logging) and each stage's top frames. py-spy
needs ptrace rights on the worker (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import infra, runs

OUT = Path(__file__).resolve().parent / "profiles"


class _Spied(infra.PeakRss):
    """The sampler of runs.pipeline, plus py-spy over the same process tree and interval."""

    raw: Path

    def __enter__(self) -> _Spied:
        spy = shutil.which("py-spy") or "py-spy"
        args = ["record", "--pid", str(self._pid), "--subprocesses", "--format", "raw"]
        self._spy = subprocess.Popen(
            [spy, *args, "--rate", "200", "--nonblocking", "-o", str(self.raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches to every process of the tree
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._spy.send_signal(signal.SIGINT)
        self._spy.wait(timeout=30)


def _stage(frames: list[str], parent: str, proc: str) -> str:
    s = ";".join(frames)
    if proc == parent:
        return "Celery parent (consumer, kombu, pool IPC)"
    if "structlog/" in s or "logging/__init__" in s:
        return "logging"
    if "regenerate_batch (" in s:
        if any(f"{fn} (worker/service/regenerate.py" in s for fn in ("_write", "_load_and_decide")):
            return "regenerate: the batch's transactions"
        if "call_all" in s:
            return "regenerate: MX calls"
        return "regenerate: other (event loop itself, heartbeat, first-use)"
    if "deliver (worker/" in s:
        return "relay (outbox -> stream)"
    if "scan (worker/" in s:
        return "scan (claims)"
    return "Celery pool process (task protocol, IPC, idle loop)"


def summarize(raw: Path, root: Path) -> str:
    """Shares of samples per stage and each stage's top leaf frames, paths made relative."""
    stages: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    parent: str | None = None
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_relative(f, root) for f in stack.split(";")]
        procs = [f.split(":")[0] for f in frames if f.startswith("process ")]
        if not procs:
            continue
        parent = parent or procs[0]
        stage = _stage(frames, parent, procs[-1])
        stages[stage] += int(count)
        leaves[stage][frames[-1]] += int(count)
        total += int(count)
    lines = [
        f"py-spy, 200 Hz, idle threads not sampled (~CPU), worker tree, {total} samples",
        "",
        "| stage | share of samples |",
        "|---|---:|",
    ]
    lines += [f"| {st} | {n / total:.0%} |" for st, n in stages.most_common()]
    for st, _ in stages.most_common():
        lines += ["", f"{st}: top frames (where the sample was)"]
        lines += [f"  {n / total:6.1%}  {leaf}" for leaf, n in leaves[st].most_common(8)]
    return "\n".join(lines) + "\n"


def _relative(frame: str, root: Path) -> str:
    site = "site-packages/"
    if site in frame:
        head, _, tail = frame.partition("(")
        return f"{head}({tail.split(site, 1)[1]}" if site in tail else frame
    return frame.replace(f"{root}/", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--due", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="reauth-profile-pipeline-"))
    _Spied.raw = logs / "pyspy.raw"
    infra.PeakRss = _Spied  # type: ignore[misc]
    url = infra.fresh_database()
    infra.flush_redis()
    try:
        with infra.sandbox_process(args.latency, logs / "sandbox.log") as sb:
            row: dict[str, Any] = runs.pipeline(
                url, sb, total=args.due * 10, due=args.due, users=100, latency=args.latency,
                processes=2, mx_concurrency=200, batch_size=200, logs=logs, timeout=300,
            )  # fmt: skip
    finally:
        infra.drop_database()
    keep = ("per_s", "cpu_ms_per_member", "peak_pss_mb", "complete")
    head = json.dumps({k: row[k] for k in keep})
    text = f"run: {head}\n" + summarize(_Spied.raw, infra.ROOT)
    (OUT / "celery-pipeline-pyspy.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
