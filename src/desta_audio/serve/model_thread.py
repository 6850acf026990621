"""Keep a server's model work on one thread.

PyTorch's OpenMP runtime on Linux (libgomp) keeps a team of helper threads for every thread that has run a parallel
region, for as long as that thread lives. Once the process holds more of them than there are CPU cores, libgomp stops
spinning between parallel regions and every region pays a sleep and a wake-up. On 2 cores, loading the model on the
main thread and generating on a worker made small products 2.3x slower and a batched chat 1.6x slower
(`benchmarks/bench_serve.py` measures the server). So the servers load the model on a thread that then exits, taking
its team with it, and run every generate on one long-lived worker thread.
"""

from __future__ import annotations

import concurrent.futures
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


def model_worker(name: str = "desta-generate") -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that runs the model's calls, in the order they are submitted (the model is not re-entrant)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
