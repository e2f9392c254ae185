"""The MX sandbox: an ASGI app faithful to the MX endpoints this service calls, with faults.

Part of the product, not a test helper: the demo, the contract tests, the benchmark and
docker-compose all talk to it over real HTTP. See ``docs/SANDBOX.md`` for base URLs, credentials,
the member-guid conventions and the fault knobs.

Modules: :mod:`~worker.sandbox.config` (the settings object), :mod:`~worker.sandbox.members`
(where members come from), :mod:`~worker.sandbox.app` (endpoints and MX state),
:mod:`~worker.sandbox.faults` (fault injection and the request log),
:mod:`~worker.sandbox.server` (uvicorn runners: in-process for tests, ``serve`` for the CLI).
"""

from worker.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig"]
