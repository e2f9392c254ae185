"""Where a press of Reconnect spends its CPU: the service steps of ``POST /r/{token}`` run one
after the other in this process (no web server, no thread pool), against the sandbox in
another process at 0 ms, on the benchmark database::

    uv run python -m bench.profile_press --presses 800

Prints the CPU time per press of each step (``time.thread_time``): ``open_link`` (also all the
service work of ``GET /r/{token}``), ``allowed_to_mint`` (the click limit), ``ask_mx`` (the MX
client: rate limiter, Nexus session, HTTP call) and ``record_mint`` (click and attempt rows).
What ``reauth serve`` adds on top (uvicorn, Starlette, the thread pool hops, the page) is the
difference with the server CPU per request that ``python -m bench serve`` reports.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import infra, serve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_press")
    p.add_argument("--presses", type=int, default=800)
    p.add_argument("--warmup", type=int, default=100)
    args = p.parse_args(argv)

    from worker.clock import utc_now
    from worker.logging import configure_logging
    from worker.runtime import Runtime
    from worker.service import reconnect

    configure_logging(fmt="console", level="WARNING")
    total = args.presses + args.warmup
    db = infra.fresh_database()
    infra.flush_redis()
    logs = Path(tempfile.mkdtemp(prefix="reauth-bench-press-"))
    cpu: dict[str, float] = defaultdict(float)
    try:
        with infra.sandbox_process(0.0, logs / "sandbox.log") as sb:
            infra.seed_members(db, total=total, due=total, now=utc_now(), users=100)
            env = serve.serve_env(db, sb, "http://127.0.0.1:1", REAUTH_LINK_MODE="reconnect")
            serve.scan_inline(env)
            tokens = [f["url"].rsplit("/", 1)[1] for f in serve.links(db)]
            rt = Runtime(serve.settings_of(env))

            def timed(name: str, fn: Any, *a: Any) -> Any:
                started = time.thread_time()
                try:
                    return fn(*a)
                finally:
                    cpu[name] += time.thread_time() - started

            async def press(token: str) -> None:
                now = utc_now()
                view = timed("open_link", reconnect.open_link, rt, token, now)
                assert timed("allowed_to_mint", reconnect.allowed_to_mint, rt, view)
                started = time.thread_time()
                result = await reconnect.ask_mx(rt, view)
                cpu["ask_mx"] += time.thread_time() - started
                timed("record_mint", reconnect.record_mint, rt, view, result, utc_now(), 0.0)

            async def run() -> None:
                for token in tokens[: args.warmup]:
                    await press(token)
                cpu.clear()
                for token in tokens[args.warmup : total]:
                    await press(token)

            try:
                rt.run(run())
            finally:
                rt.close()
    finally:
        infra.drop_database()
        infra.flush_redis()
    for name, seconds in cpu.items():
        print(f"{name:16} {seconds * 1000 / args.presses:6.2f} ms CPU per press")
    print(f"{'total':16} {sum(cpu.values()) * 1000 / args.presses:6.2f} ms CPU per press")


if __name__ == "__main__":
    main()
