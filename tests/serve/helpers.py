"""Shared pieces of the serving tests: a recording fake model, generated audio, a real server on loopback."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf


def tone_wav(seconds: float = 1.0, frequency: float = 440.0, rate: int = 16_000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_part(data: bytes, fmt: str = "wav", **extra: Any) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt, **extra}}


@dataclass
class FakeReply:
    text: str
    transcripts: list[str]
    token_ids: list[int] = field(default_factory=list)


class FakeModel:
    """Answers describe what reached the model (roles, text, clip lengths), so tests can check the translation
    from OpenAI messages; every call's batch size is recorded."""

    tokenizer = None

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def chat(self, conversations: list[list[dict[str, Any]]], **generation: Any) -> list[FakeReply]:
        with self._lock:
            self.batches.append(len(conversations))
            self.calls.append(generation)
        if self.fail_on and any(self.fail_on in m["content"] for c in conversations for m in c):
            raise RuntimeError("boom: a secret internal detail")
        time.sleep(self.delay_s)
        return [self._answer(conversation) for conversation in conversations]

    @staticmethod
    def _answer(conversation: list[dict[str, Any]]) -> FakeReply:
        audios = [a for m in conversation for a in m.get("audios", [])]
        roles = ",".join(m["role"] for m in conversation)
        last = conversation[-1]["content"].replace("\n", " ")
        lengths = ",".join(str(a["audio"].size) for a in audios)
        transcripts = [a["text"] if a["text"] is not None else f"clip of {a['audio'].size} samples" for a in audios]
        text = f"roles={roles} last=[{last}] audio_samples=[{lengths}]"
        return FakeReply(text, transcripts, list(range(len(text.split()))))


def wait_until(condition, what: str, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Any, **server_options: Any) -> Iterator[str]:
    """Run `app` (from create_app) as `desta serve` does, on a free loopback port in a thread; yields the base URL.
    server_options go to `api_server`."""
    from desta_audio.serve.server import api_server

    port = free_port()
    server = api_server(app, host="127.0.0.1", port=port, log_level="warning", grace_s=2, **server_options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class StreamingFakeModel(FakeModel):
    """A FakeModel whose `chat` streams like DeSTAModel's: transcripts through `on_start`, then the answer word by
    word through `on_text`, one word per row per step.

    hold: after the first step, wait until `resume` is set (a test sets it once it has seen the first delta, which
    proves the delta left before generation finished); `resume_timed_out` tells if nobody did.
    """

    def __init__(self, *, hold: bool = False, token_delay_s: float = 0.0, fail_on: str | None = None) -> None:
        super().__init__(fail_on=fail_on)
        self.token_delay_s = token_delay_s
        self.resume = threading.Event()
        if not hold:
            self.resume.set()
        self.resume_timed_out = False
        self.generating = 0  # batches inside chat() right now

    def chat(self, conversations: list[list[dict[str, Any]]], *, on_text: Any = None, on_start: Any = None,
             **generation: Any) -> list[FakeReply]:
        with self._lock:
            self.batches.append(len(conversations))
            self.calls.append(generation)
        if self.fail_on and any(self.fail_on in m["content"] for c in conversations for m in c):
            raise RuntimeError("boom: a secret internal detail")
        self.generating += 1
        try:
            replies = [self._answer(conversation) for conversation in conversations]
            for hook, reply in zip(on_start or [], replies):
                if hook is not None:
                    hook(reply.transcripts)
            pieces = [re.findall(r"\s*\S+|\s+", reply.text) for reply in replies]
            for step in range(max(map(len, pieces))):
                for hook, words in zip(on_text or [], pieces):
                    if hook is not None and step < len(words):
                        hook(words[step])
                if step == 0 and not self.resume.wait(10):
                    self.resume_timed_out = True
                time.sleep(self.token_delay_s)
            return replies
        finally:
            self.generating -= 1


def stop_string_in(text: str, length: int = 3) -> str:
    """A stop string that really occurs in `text` (a random-weight model's answer): the first run of `length`
    visible ASCII characters in the first half, at its earliest occurrence, so cutting there shortens the answer."""
    for start in range(1, len(text) // 2):
        piece = text[start:start + length]
        if (len(piece) == length and all(c.isascii() and c.isprintable() and not c.isspace() for c in piece)
                and text.find(piece) == start):
            return piece
    raise AssertionError(f"no usable stop string in {text!r}")


class TokenLoopChat:
    """A batcher chat function that writes one word per row every `token_s` seconds, up to `words` words, and ends
    a row early once its `stop_requested()` turns true, as the model's generate does. `started` is set when a batch
    begins; `stopped_early` counts the rows ended early."""

    def __init__(self, words: int = 500, token_s: float = 0.02) -> None:
        self.words, self.token_s = words, token_s
        self.started = threading.Event()
        self.stopped_early = 0

    def __call__(self, conversations, params, *, on_text=None, on_start=None, stop_requested=None):
        rows = len(conversations)
        for hook in on_start or []:
            if hook is not None:
                hook([])
        texts, ended = [""] * rows, [False] * rows
        self.started.set()
        for _ in range(self.words):
            for row in range(rows):
                if ended[row]:
                    continue
                if stop_requested is not None and stop_requested[row]():
                    ended[row] = True
                    self.stopped_early += 1
                    continue
                texts[row] += " word"
                if on_text is not None and on_text[row] is not None:
                    on_text[row](" word")
            if all(ended):
                break
            time.sleep(self.token_s)
        return [FakeReply(text, []) for text in texts]


def raw_connection(url: str, sent: bytes = b"") -> socket.socket:
    """A plain TCP connection to the server at `url` that has sent `sent` (a client the tests can misbehave with)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(sent)
    return sock


def chat_request_bytes(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)) + data
