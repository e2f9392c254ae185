"""``reauth serve`` runs database work on as many threads as its pool holds connections."""

from __future__ import annotations

from pathlib import Path

import anyio
from anyio import to_thread

from worker.config import load_settings
from worker.runtime import Runtime
from worker.web.app import DB_THREADS, create_app


def test_the_app_caps_its_threads_to_the_pool(tmp_path: Path) -> None:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        public_url="http://127.0.0.1:1",
        reconnect_secrets=["s" * 40],
        allow_insecure_urls=True,
    )
    rt = Runtime(settings, pool_size=DB_THREADS)
    app = create_app(rt)

    async def started() -> int:
        async with app.router.lifespan_context(app):
            return to_thread.current_default_thread_limiter().total_tokens

    try:
        assert anyio.run(started) == DB_THREADS < 40  # Starlette's default is 40
    finally:
        rt.close()
