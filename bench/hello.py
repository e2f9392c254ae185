"""The serve benchmark's baseline: a trivial Starlette app on the same uvicorn configuration as
``reauth serve`` (worker.serving.uvicorn_config: uvloop and httptools when installed, no
access log), in its own process::

    python -m bench.hello PORT

``GET /`` answers a fixed HTML page with no I/O: the ceiling of Starlette + uvicorn on this
machine, against which the reconnect page's rate is read.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from worker.serving import uvicorn_config

PAGE = "<!doctype html><title>hello</title><p>hello</p>\n"


async def hello(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})


app = Starlette(routes=[Route("/", hello)])


def main(argv: list[str] | None = None) -> None:
    port = int((argv or sys.argv[1:])[0])
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, lifespan="off")).run()


if __name__ == "__main__":
    main()
