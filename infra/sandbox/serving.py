"""How a sandbox HTTP server of ours runs: one uvicorn process on loopback, its store closed
on the way out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import uvicorn


def serve(
    app: Any, *, host: str, port: int, close: Callable[[], None], lifespan: Literal["on", "off"]
) -> int:
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            lifespan=lifespan,
            # A request held open by a fault (a deliberate hang) must not hold up a stop.
            timeout_graceful_shutdown=2,
        )
    )
    try:
        server.run()
    finally:
        close()
    return 0
