"""Run the API app under uvicorn with a prompt shutdown.

uvicorn stops accepting connections at Ctrl-C, waits for the open requests to finish (up to a grace period), then
cancels them: a client waiting on a long generate would get a bare 500 and the process would wait for the batch.
Here the batcher is closed as soon as shutdown begins, so every waiting and running request is answered at once
with the API's 503 `shutting_down` error (a stream gets an error event, then `[DONE]`), and the running generate
stops at its next token.

Connections use uvicorn's h11 protocol with a deadline for request headers (`HeadersDeadlineProtocol`); the app
itself bounds the time a request body may take.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

GRACE_S = 5.0  # for responses still being written when shutdown begins
HEADERS_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 256  # open connections before new requests get uvicorn's 503: slow uploads cannot pile up


class HeadersDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not all in within
    `headers_timeout_s` of it opening (or of the first byte of its next request). uvicorn times out only idle
    kept-alive connections, so a client that connected and sent nothing, or half its headers, held its connection
    for good: a few hundred of them use up the process's file descriptors."""

    def __init__(self, *args: Any, headers_timeout_s: float = HEADERS_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers_timeout_s = headers_timeout_s
        self._headers_deadline: asyncio.TimerHandle | None = None

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _set_deadline(self) -> None:
        if self._awaiting_headers():
            if self._headers_deadline is None:
                self._headers_deadline = self.loop.call_later(self.headers_timeout_s, self._headers_too_slow)
        elif self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._set_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._headers_deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()


class APIServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


def api_server(app: Any, *, host: str, port: int, log_level: str = "info", grace_s: float = GRACE_S,
               headers_timeout_s: float = HEADERS_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> APIServer:
    """A server for an app from `create_app` (its batcher is closed when shutdown begins). Past `max_connections`
    open connections, a request is answered 503 at once (each slow upload may hold up to the body limit)."""
    protocol = functools.partial(HeadersDeadlineProtocol, headers_timeout_s=headers_timeout_s)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace_s,
                            http=protocol,
                            limit_concurrency=max_connections + 1)  # uvicorn counts the newcomer too  # type: ignore[arg-type]
    return APIServer(config, on_shutdown=app.state.batcher.close)


def run_server(app: Any, *, host: str, port: int, log_level: str = "info",
               max_connections: int = MAX_CONNECTIONS) -> None:
    try:
        api_server(app, host=host, port=port, log_level=log_level, max_connections=max_connections).run()
    except KeyboardInterrupt:
        pass  # uvicorn raises the Ctrl-C again once it has shut down cleanly; there is nothing left to report
