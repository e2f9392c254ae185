"""Helpers shared by the MX tests (imported by name: tests have no packages)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from worker.config import Settings
from worker.mx import MxClient, OAuthRequest, build_mx_client
from worker.sandbox.app import Sandbox
from worker.sandbox.config import SandboxConfig

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Run one coroutine on a fresh loop (tests are sync; no asyncio plugin needed)."""

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def browser(member: str = "MBR-1", user: str = "USR-1", **kw: Any) -> OAuthRequest:
    return OAuthRequest(
        member_guid=member,
        user_guid=user,
        user_id=kw.pop("user_id", None),
        referral_source=kw.pop("referral_source", "BROWSER"),
        skip_aggregation=kw.pop("skip_aggregation", False),
        **kw,
    )


@dataclass
class MxEnv:
    """A sandbox plus a way to build clients pointed at it."""

    kind: str
    sandbox: Sandbox
    base_url: str
    redis_url: str | None
    transport_factory: Callable[[], httpx.AsyncBaseTransport] | None
    client_id: str = field(default_factory=lambda: f"client-{uuid.uuid4().hex[:8]}")

    @property
    def config(self) -> SandboxConfig:
        return self.sandbox.config

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mx_base_url": self.base_url,
            "mx_sso_base_url": f"{self.base_url}/sso",
            "mx_client_id": self.client_id,
            "mx_api_key": self.config.api_key,
            "redis_url": self.redis_url,
            "mx_timeout": 2.0,
            "mx_rate_limit_per_second": 100_000.0,
            "allow_insecure_urls": True,  # the sandbox serves plain http on loopback
        }
        values.update(overrides)
        return Settings(**values)

    def client(self, **overrides: Any) -> MxClient:
        transport = self.transport_factory() if self.transport_factory else None
        return build_mx_client(self.settings(**overrides), transport=transport)

    def requests(self) -> list[dict[str, Any]]:
        return self.sandbox.log.snapshot()

    def sessions_created(self) -> int:
        return sum(1 for r in self.requests() if r["path"] == "/sessions" and r["status"] == 200)


def asgi_env(sandbox: Sandbox, transport: httpx.AsyncBaseTransport | None = None) -> MxEnv:
    """Clients talking to ``sandbox`` in process (its ASGI app, or ``transport`` in front of
    it), no Redis; the sandbox knows the env's client id."""
    env = MxEnv(
        "asgi",
        sandbox,
        "http://sandbox.test",
        None,
        (lambda: transport) if transport else (lambda: httpx.ASGITransport(app=sandbox)),
    )
    env.config.client_id = env.client_id
    return env
