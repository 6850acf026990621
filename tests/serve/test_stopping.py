"""Work nobody waits for stops: a row whose request was given up, and everything at shutdown (Ctrl-C)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from desta_audio.serve.api import ServeSettings, create_app
from desta_audio.serve.batcher import SamplingParams
from desta_audio.serve.model_chat import model_chat_function
from tests.serve.helpers import (
    FakeModel,
    TokenLoopChat,
    chat_request_bytes,
    free_port,
    raw_connection,
    running_server,
    wait_until,
)

MODEL = "desta-test"
REPO = Path(__file__).resolve().parents[2]


def test_a_row_nobody_waits_for_ends_at_its_next_token_while_its_batch_mate_goes_on(tiny):
    chat = model_chat_function(tiny)
    deltas = [0, 0]

    def count(row: int):
        return lambda _: deltas.__setitem__(row, deltas[row] + 1)

    conversations = [[{"role": "user", "content": "hello world"}], [{"role": "user", "content": "describe the sound"}]]
    replies = chat(conversations, SamplingParams(max_new_tokens=40), on_text=[count(0), count(1)],
                   on_start=[None, None], stop_requested=[lambda: deltas[0] >= 2, lambda: False])
    assert len(replies[0].token_ids) <= 3
    assert len(replies[1].token_ids) == 40


def sse_lines(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        return [line for line in response.iter_lines() if line]


def test_shutdown_answers_running_queued_and_streaming_requests_at_once():
    chat = TokenLoopChat(words=5000)  # 100 s of words unless stopped
    settings = ServeSettings(model_id=MODEL, max_batch_size=2, batch_window_ms=100)
    app = create_app(FakeModel(), settings, chat=chat)
    body = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": "talk"}]}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        with running_server(app) as url:
            running = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=30)
            streaming = pool.submit(sse_lines, url, {**body, "stream": True})
            assert chat.started.wait(10)
            queued = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=30)
            wait_until(lambda: app.state.batcher.queue_depth == 1, "the third request to queue")
            shutdown_began = time.monotonic()
        took = time.monotonic() - shutdown_began
        for response in (running.result(), queued.result()):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "shutting_down"
        lines = streaming.result()
    assert took < 2
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "shutting_down"
    assert chat.stopped_early == 2  # both rows of the running batch


SERVER = """
import sys
from desta_audio.serve.api import ServeSettings, create_app
from desta_audio.serve.server import run_server
from tests.serve.helpers import FakeModel
# A model that cannot be stopped: its generate takes two minutes whatever happens.
app = create_app(FakeModel(delay_s=120), ServeSettings(model_id="m", batch_window_ms=0))
run_server(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_ctrl_c_ends_the_process_in_seconds_even_while_a_generate_runs():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).json()["status"] == "ok"
            except httpx.HTTPError:
                assert server.poll() is None, server.stdout.read()
                return False

        wait_until(ready, "the server to start", 60)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.post, f"{url}/v1/chat/completions", timeout=30,
                                  json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
            wait_until(lambda: httpx.get(f"{url}/health").json()["running"] == 1, "the generate to start")
            server.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            assert waiting.result().json()["error"]["code"] == "shutting_down"
            server.wait(timeout=30)
        assert time.monotonic() - interrupted < 8
        assert "Traceback" not in server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_request_past_its_timeout_gets_504_and_its_row_stops():
    chat = TokenLoopChat(words=5000)
    app = create_app(FakeModel(), ServeSettings(model_id=MODEL, request_timeout_s=0.3), chat=chat)
    with running_server(app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                              json={"model": MODEL, "messages": [{"role": "user", "content": "talk"}]})
        assert response.status_code == 504
        wait_until(lambda: chat.stopped_early == 1, "the row to stop", 5)


def metric_value(url: str, line_start: str) -> float:
    lines = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith(line_start)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_clients_that_leave_free_their_queue_slot_and_stop_their_row_and_are_counted():
    chat = TokenLoopChat(words=5000)
    settings = ServeSettings(model_id=MODEL, max_batch_size=1, max_queue=1, batch_window_ms=0)
    app = create_app(FakeModel(), settings, chat=chat)
    plain = chat_request_bytes({"model": MODEL, "messages": [{"role": "user", "content": "talk"}]})
    streamed = chat_request_bytes({"model": MODEL, "messages": [{"role": "user", "content": "talk"}], "stream": True})
    with running_server(app) as url:
        running = raw_connection(url, plain)
        assert chat.started.wait(5)
        queued = raw_connection(url, plain)
        wait_until(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 1, "a queued request")
        queued.close()
        wait_until(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 0, "the queue slot to be freed")
        running.close()
        wait_until(lambda: chat.stopped_early == 1, "the plain request's row to stop", 5)
        chat.started.clear()
        streaming = raw_connection(url, streamed)
        assert chat.started.wait(5)
        streaming.close()
        wait_until(lambda: chat.stopped_early == 2, "the streamed request's row to stop", 5)
        wait_until(lambda: metric_value(url, "desta_client_disconnects_total") == 3, "three disconnects counted")
        assert metric_value(url, 'desta_requests_total{route="/v1/chat/completions",status="499"}') == 2
        chat.words = 3  # a short answer, to show the server still serves
        again = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == " word word word"
