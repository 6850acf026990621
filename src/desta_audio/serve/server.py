"""Run the API app under uvicorn with a prompt shutdown.

uvicorn stops accepting connections at Ctrl-C, waits for the open requests to finish (up to a grace period), then
cancels them: a client waiting on a long generate would get a bare 500 and the process would wait for the batch.
Here the batcher is closed as soon as shutdown begins, so every waiting and running request is answered at once
with the API's 503 `shutting_down` error (a stream gets an error event, then `[DONE]`), and the running generate
stops at its next token.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import uvicorn

GRACE_S = 5.0  # for responses still being written when shutdown begins


class APIServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


def api_server(app: Any, *, host: str, port: int, log_level: str = "info", grace_s: float = GRACE_S) -> APIServer:
    """A server for an app from `create_app` (its batcher is closed when shutdown begins)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace_s)
    return APIServer(config, on_shutdown=app.state.batcher.close)


def run_server(app: Any, *, host: str, port: int, log_level: str = "info") -> None:
    try:
        api_server(app, host=host, port=port, log_level=log_level).run()
    except KeyboardInterrupt:
        pass  # uvicorn raises the Ctrl-C again once it has shut down cleanly; there is nothing left to report
