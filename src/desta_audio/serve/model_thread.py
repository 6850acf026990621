"""Keep a server's model work on one thread.

PyTorch's OpenMP runtime on Linux (libgomp) keeps a team of helper threads for every thread that has run a parallel
region, for as long as that thread lives. Once the process holds more of them than there are CPU cores, libgomp stops
spinning between parallel regions and every region pays a sleep and a wake-up. On 2 cores, loading the model on the
main thread and generating on a worker made small products 2.3x slower and a batched chat 1.6x slower
(`benchmarks/bench_serve.py` measures the server). So the servers load the model on a thread that then exits, taking
its team with it, and run every generate on one long-lived worker thread.

That worker is a daemon thread: `concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter
exits, so a generate still running at Ctrl-C would hold the process until it ended (minutes for a long answer).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def load_on_passing_thread(load: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`load(*args, **kwargs)` on a thread that has ended when this returns (its exceptions are raised here).
    The thread is a daemon, so Ctrl-C during a long load ends the process at once instead of waiting for it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = load(*args, **kwargs)
        except BaseException as error:  # handed to the caller, which raises it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="desta-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class ModelWorker(concurrent.futures.Executor):
    """One daemon thread that runs the submitted calls in order (the model is not re-entrant)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable[..., Any], tuple, dict] | None] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run more calls: the model worker is shut down")
            self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        call = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if call is not None:
                        call[0].cancel()
            self._calls.put(None)
        if wait:
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the thread to end (after `shutdown`); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
            else:
                future.set_result(result)


def model_worker(name: str = "desta-generate") -> ModelWorker:
    """The one thread that runs the model's calls, in the order they are submitted."""
    return ModelWorker(name)
