"""A minimal OpenAI-compatible chat server on loopback, for testing the OpenAI backend end to end."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# (messages, max_tokens, temperature) -> (text, finish_reason, completion_tokens)
Answer = Callable[[list[dict], int, float], tuple[str, str, int]]


class ServerState:
    def __init__(self, fail_first: int = 0, stall_first: int = 0, stall_seconds: float = 0.0, delay: float = 0.0,
                 fail_after: int | None = None):
        self.fail_first = fail_first
        self.fail_after = fail_after  # every request past this many fails (a server that went down)
        self.stall_first = stall_first
        self.stall_seconds = stall_seconds
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


def make_app(answer: Answer, state: ServerState) -> FastAPI:
    app = FastAPI()
    model_lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        with state.lock:
            state.requests += 1
            number = state.requests
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if number <= state.fail_first or (state.fail_after is not None and number > state.fail_after):
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if number <= state.fail_first + state.stall_first:
                await asyncio.sleep(state.stall_seconds)  # longer than the client's timeout
            await asyncio.sleep(state.delay)

            def run():
                with model_lock:
                    return answer(body["messages"], body.get("max_tokens") or 64, body.get("temperature", 1.0))

            text, finish, tokens = await asyncio.to_thread(run)
            return {
                "id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
            }  # fmt: skip
        finally:
            with state.lock:
                state.in_flight -= 1

    return app


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Runs the app on 127.0.0.1 and a free port; yields the base URL; stops the server on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("loopback server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
