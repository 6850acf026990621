"""Dynamic batching: concurrent chat requests share one batched `generate` call.

Requests wait in a bounded list on the event loop. A collector task takes the oldest request, waits a short
window for companions with the *same* sampling parameters (greedy ones together), and hands up to
`max_batch_size` of them to a single worker thread, so torch never runs on the event loop and never runs two
batches at once. While a batch runs, new requests pile up (up to `max_queue`) and form the next batch, which is
where the throughput comes from. A full queue is refused at once (`QueueFullError`) instead of growing without
bound.

Refill: clients that each wait for their answer before sending the next request (chat UIs, evaluation scripts)
come back together when a batch ends, but not within one short window: their new requests trickle in over tens of
milliseconds. Taking the first arrivals alone would split them into two cohorts that then alternate for good (16
clients ran as batches of 6 and 10). So when a batch of N ends with M requests of its sampling parameters waiting,
the next batch with those parameters waits for N + M of them (at most `max_batch_size`), up to `refill_fraction`
of the time that batch took. A lone client (N = 1, M = 0) never waits, nor does a batch with other parameters.

Streaming: a request may carry `on_text(delta)` and `on_start(transcripts)` hooks, called on the worker thread.
A chat function that takes `on_text` / `on_start` keyword arguments (one callback or None per conversation)
streams token by token; streaming and non-streaming requests with the same sampling parameters still share a
batch. With any other chat function the hooks are called once per request after its batch, with the whole answer.

Stop strings: a request may carry its own (OpenAI `stop`). A chat function that takes a `stop_strings` keyword
argument (one list per conversation) gets them, so each row can stop generating once its answer holds one; requests
with different stop strings still share a batch. Cutting the text stays the caller's job.

Giving up: a chat function that takes a `stop_requested` keyword argument (one callable per conversation) can end a
row early: the callable turns true once nobody waits for that answer (its future was cancelled: a timeout, a client
that left) or the batcher is closing. `close()` (called as soon as the server begins shutting down) answers every
waiting and running request with BatcherClosedError at once, so no client waits for the batch to end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from desta_audio.serve.model_thread import model_worker

logger = logging.getLogger(__name__)

Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings of one request; requests batch together only when these are equal."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    @property
    def seeded(self) -> bool:
        """Sampling with a seed: the request runs in a batch of its own, so the seed gives the same answer."""
        return self.do_sample and self.seed is not None

    def chat_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            if self.temperature is not None:
                kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
            if self.seed is not None:
                kwargs["seed"] = self.seed
        return kwargs


# (conversations, params[, *, on_text=..., on_start=...][, stop_strings=...]) -> replies
ChatFunction = Callable[..., Sequence[Any]]
TextHook = Callable[[str], None]
StartHook = Callable[[list[str]], None]
STREAMING_HOOKS = ("on_text", "on_start")
STOP_STRINGS = "stop_strings"
STOP_REQUESTED = "stop_requested"
# How long stop() waits for the running generate to notice it should stop (one token, normally).
STOP_WAIT_S = 3.0


def _names_parameters(function: Callable[..., Any], names: Sequence[str]) -> bool:
    # A catch-all **kwargs does not count: a function that swallows unknown arguments would silently ignore them.
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in names)


def accepts_stream_hooks(function: Callable[..., Any]) -> bool:
    """True when `function` names both streaming hooks as parameters."""
    return _names_parameters(function, STREAMING_HOOKS)


def accepts_stop_strings(function: Callable[..., Any]) -> bool:
    """True when `function` names a `stop_strings` parameter (one list of stop strings per conversation)."""
    return _names_parameters(function, (STOP_STRINGS,))


def accepts_stop_requests(function: Callable[..., Any]) -> bool:
    """True when `function` names a `stop_requested` parameter (one callable per conversation)."""
    return _names_parameters(function, (STOP_REQUESTED,))


class QueueFullError(RuntimeError):
    """The server has `max_queue` requests waiting already; the client should retry later."""


class BatcherClosedError(RuntimeError):
    """The server is shutting down."""


class _StreamRelay:
    """A job's streaming hooks, safe to drive more than once: when a failed batch is retried one conversation at
    a time, the start hook does not run twice and text the consumer already has is not sent again."""

    def __init__(self, on_text: TextHook | None, on_start: StartHook | None) -> None:
        self._on_text, self._on_start = on_text, on_start
        self.started = False
        self.sent = ""  # all text handed to on_text
        self._attempt = ""  # text of the current attempt

    def new_attempt(self) -> None:
        self._attempt = ""

    def start(self, transcripts: list[str]) -> None:
        if self.started:
            return
        self.started = True
        if self._on_start is not None:
            self._call(self._on_start, list(transcripts))

    def text(self, delta: str) -> None:
        self._attempt += delta
        if len(self._attempt) <= len(self.sent) or not self._attempt.startswith(self.sent):
            return  # a retry still replaying what was sent (or, when sampling, saying something else)
        fresh, self.sent = self._attempt[len(self.sent):], self._attempt
        if self._on_text is not None:
            self._call(self._on_text, fresh)

    @staticmethod
    def _call(hook: Callable[[Any], None], value: Any) -> None:
        try:
            hook(value)
        except Exception as error:  # a consumer that went away must not fail the batch
            logger.warning("a streaming hook failed: %r", error)


@dataclass(eq=False)
class _Job:
    conversation: Conversation
    params: SamplingParams
    future: asyncio.Future
    enqueued_at: float
    stream: _StreamRelay | None = None
    stop: tuple[str, ...] = ()


class DynamicBatcher:
    def __init__(
        self,
        chat: ChatFunction,
        *,
        max_batch_size: int = 16,
        window_s: float = 0.015,
        max_queue: int = 64,
        refill_fraction: float = 0.1,
        on_batch: Callable[[int], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """on_batch(size) is called as each batch starts, on_wait(seconds) once per request it holds, with the time
        that request waited for it."""
        if max_batch_size < 1 or max_queue < 1 or window_s < 0 or refill_fraction < 0:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be >= 1, "
                f"window_s ({window_s}) and refill_fraction ({refill_fraction}) >= 0"
            )
        self._chat = chat
        self._chat_streams = accepts_stream_hooks(chat)
        self._chat_stops = accepts_stop_strings(chat)
        self._chat_stop_requests = accepts_stop_requests(chat)
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_queue = max_queue
        self.refill_fraction = refill_fraction
        self._on_batch = on_batch
        self._on_wait = on_wait
        # Until `_refill_until` (loop time), a batch with `_refill_params` waits for `_refill_target` requests.
        self._refill_params: SamplingParams | None = None
        self._refill_target = 0
        self._refill_until = 0.0
        self._pending: list[_Job] = []
        self._running = 0
        self._batch: list[_Job] = []  # the jobs being generated now
        self._generating: concurrent.futures.Future | None = None  # their call on the worker thread
        self._closing = False
        self._arrival: asyncio.Event | None = None
        self._collector: asyncio.Task | None = None
        self._executor: concurrent.futures.Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._arrival = asyncio.Event()
        self._executor = model_worker()
        self._collector = asyncio.create_task(self._collect_forever(), name="desta-batcher")

    def close(self) -> None:
        """Begin shutting down (call on the batcher's event loop): refuse new requests and answer the waiting ones and
        those in the running batch with BatcherClosedError now; the running generate stops at its next token when
        the chat function takes `stop_requested`."""
        self._closing = True
        for job in [*self._pending, *self._batch]:
            if not job.future.done():
                job.future.set_exception(BatcherClosedError("the server is shutting down"))
        self._pending.clear()

    async def stop(self) -> None:
        self.close()
        if self._generating is not None and not self._generating.done():
            # The worker is a daemon thread, so the process need not wait for it; waiting a moment lets a generate
            # that honours stop_requested end cleanly first.
            await asyncio.wait([asyncio.wrap_future(self._generating)], timeout=STOP_WAIT_S)
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- submission ------------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being generated, nor those given up while waiting)."""
        return sum(1 for job in self._pending if not job.future.done())

    @property
    def running(self) -> int:
        """Requests in the batch being generated now."""
        return self._running

    def enqueue(
        self,
        conversation: Conversation,
        params: SamplingParams,
        *,
        on_text: TextHook | None = None,
        on_start: StartHook | None = None,
        stop: Sequence[str] = (),
    ) -> asyncio.Future:
        """Queue one conversation (call on the batcher's event loop) and return the future of its reply.
        Raises QueueFullError at once when the queue is full. Cancelling the future drops the request if it has
        not started yet; in a running batch its row stops at the next token (with a chat function that takes
        `stop_requested`; otherwise it finishes and its reply is discarded).

        on_text / on_start: streaming hooks, called on the worker thread (see the module docstring).
        stop: the request's stop strings, handed to a chat function that takes them; the reply is not cut here."""
        if self._collector is None or self._arrival is None or self._loop is None:
            raise BatcherClosedError("the batcher is not running; call start() first")
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        self._pending = [job for job in self._pending if not job.future.done()]
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(
                f"the server is busy: {len(self._pending)} requests are already waiting (max_queue={self.max_queue})"
            )
        stream = _StreamRelay(on_text, on_start) if on_text is not None or on_start is not None else None
        stop = (stop,) if isinstance(stop, str) else stop  # one string is one stop string, not its characters
        job = _Job(conversation, params, self._loop.create_future(), self._loop.time(), stream,
                   tuple(s for s in stop if s))
        self._pending.append(job)
        self._arrival.set()
        return job.future

    async def submit(
        self,
        conversation: Conversation,
        params: SamplingParams,
        *,
        on_text: TextHook | None = None,
        on_start: StartHook | None = None,
        stop: Sequence[str] = (),
    ) -> Any:
        """Queue one conversation and wait for its reply (see `enqueue`); cancelling the caller cancels it."""
        return await self.enqueue(conversation, params, on_text=on_text, on_start=on_start, stop=stop)

    def submit_threadsafe(self, conversation: Conversation, params: SamplingParams, *,
                          on_text: TextHook | None = None, on_start: StartHook | None = None,
                          ) -> concurrent.futures.Future:
        """Submit from another thread (e.g. the web demo's handlers); returns a concurrent future."""
        if self._loop is None:
            raise BatcherClosedError("the batcher is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(
            self.submit(conversation, params, on_text=on_text, on_start=on_start), self._loop)

    # -- collection ------------------------------------------------------------------------------------------
    async def _collect_forever(self) -> None:
        assert self._arrival is not None and self._loop is not None
        loop = self._loop
        while True:
            await self._arrival.wait()
            self._pending = [job for job in self._pending if not job.future.done()]
            if not self._pending:
                self._arrival.clear()
                continue
            oldest = self._pending[0]
            companions = [job for job in self._pending if job.params == oldest.params]
            now = loop.time()
            # Each wait that still applies and is not yet satisfied, by when it ends.
            deadlines = []
            if oldest.params.seeded:
                companions = [oldest]  # rows of one batch share the random generator: a seed holds only alone
            else:
                self._add_waits(deadlines, oldest, companions, now)
            if deadlines:
                await self._next_arrival(max(deadlines) - now)
                continue
            batch = companions[: self.max_batch_size]
            taken = set(map(id, batch))
            self._pending = [job for job in self._pending if id(job) not in taken]
            if not self._pending:
                self._arrival.clear()
            await self._run(batch)

    def _add_waits(self, deadlines: list[float], oldest: _Job, companions: list[_Job], now: float) -> None:
        window_ends = oldest.enqueued_at + self.window_s
        if now < window_ends and len(companions) < self.max_batch_size:
            deadlines.append(window_ends)
        refilling = now < self._refill_until and oldest.params == self._refill_params
        if refilling and len(companions) < self._refill_target:
            deadlines.append(self._refill_until)

    async def _next_arrival(self, timeout: float) -> None:
        """Wait until a request arrives or `timeout` passes; either way the collector looks at the queue again."""
        assert self._arrival is not None
        self._arrival.clear()
        try:
            await asyncio.wait_for(self._arrival.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._arrival.set()

    async def _run(self, batch: list[_Job]) -> None:
        assert self._loop is not None
        started = self._loop.time()
        self._running = len(batch)
        self._batch = batch
        if self._on_batch is not None:
            self._on_batch(len(batch))
        if self._on_wait is not None:
            for job in batch:
                self._on_wait(started - job.enqueued_at)
        conversations = [job.conversation for job in batch]
        streams = [job.stream for job in batch]
        stops = [job.stop for job in batch]
        unwanted = [self._unwanted(job) for job in batch]
        try:
            assert self._executor is not None
            self._generating = self._executor.submit(
                self._generate, conversations, batch[0].params, streams, stops, unwanted)
            outcomes = await asyncio.wrap_future(self._generating)
        except Exception as error:  # the executor itself failed (e.g. shut down): fail the whole batch
            logger.exception("the model worker failed")
            outcomes = [error] * len(batch)
        finally:
            self._running = 0
            self._batch = []
        ended = self._loop.time()
        self._refill_params = batch[0].params
        waiting = sum(1 for job in self._pending if job.params == self._refill_params and not job.future.done())
        self._refill_target = min(len(batch) + waiting, self.max_batch_size)
        self._refill_until = ended + self.refill_fraction * (ended - started)
        for job, outcome in zip(batch, outcomes):
            if job.future.done():  # the client gave up (timeout, disconnect)
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _unwanted(self, job: _Job) -> Callable[[], bool]:
        # Read on the worker thread: a racy read of two flags is fine, the next token reads them again.
        return lambda: self._closing or job.future.done()

    def _generate(
        self,
        conversations: list[Conversation],
        params: SamplingParams,
        streams: list[_StreamRelay | None],
        stops: list[tuple[str, ...]],
        unwanted: list[Callable[[], bool]],
    ) -> list[Any]:
        """Runs on the worker thread. One failing conversation must not fail its batch-mates, so a failed
        batch is retried one conversation at a time to find the culprit."""
        try:
            replies = list(self._call_chat(conversations, params, streams, stops, unwanted))
            if len(replies) != len(conversations):
                raise RuntimeError(f"chat returned {len(replies)} replies for {len(conversations)} conversations")
        except Exception as error:
            if len(conversations) == 1:
                logger.exception("generation failed")
                return [error]
            logger.warning("a batch of %d failed (%s); retrying one by one", len(conversations), error)
            return [self._generate([c], params, [s], [t], [u])[0]
                    for c, s, t, u in zip(conversations, streams, stops, unwanted)]
        if not self._chat_streams:
            # The chat function cannot stream: hand each streaming request its whole answer now.
            for stream, reply in zip(streams, replies):
                if stream is not None:
                    stream.start(list(getattr(reply, "transcripts", None) or []))
                    stream.text(str(getattr(reply, "text", "")))
        return replies

    def _call_chat(
        self,
        conversations: list[Conversation],
        params: SamplingParams,
        streams: list[_StreamRelay | None],
        stops: list[tuple[str, ...]],
        unwanted: list[Callable[[], bool]],
    ) -> Sequence[Any]:
        extra: dict[str, Any] = {}
        if self._chat_stop_requests:
            extra[STOP_REQUESTED] = unwanted
        if self._chat_stops and any(stops):
            extra[STOP_STRINGS] = [list(stop) for stop in stops]
        if self._chat_streams and any(stream is not None for stream in streams):
            for stream in streams:
                if stream is not None:
                    stream.new_attempt()
            extra["on_text"] = [stream.text if stream is not None else None for stream in streams]
            extra["on_start"] = [stream.start if stream is not None else None for stream in streams]
        return self._chat(conversations, params, **extra)
