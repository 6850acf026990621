"""Model work stays on one thread per server process (see desta_audio.serve.model_thread for why)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from desta_audio.serve.demo import model_answer_function
from desta_audio.serve.model_thread import load_on_passing_thread
from tests.serve.helpers import FakeReply


def test_load_runs_on_a_thread_that_has_ended_by_the_time_it_returns():
    seen: list[threading.Thread] = []

    def load(name: str, *, size: int) -> str:
        seen.append(threading.current_thread())
        return f"{name}-{size}"

    assert load_on_passing_thread(load, "model", size=3) == "model-3"
    assert seen[0] is not threading.main_thread()
    assert not seen[0].is_alive()


def test_load_errors_reach_the_caller():
    def load() -> None:
        raise FileNotFoundError("no such model: nowhere")

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_on_passing_thread(load)


class _ThreadRecordingModel:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def chat(self, conversations, **kwargs):
        self.threads.append(threading.get_ident())
        on_text = kwargs["on_text"][0]
        if on_text is not None:
            on_text("hi")
        return [f"reply {len(self.threads)}"]


def test_demo_answers_run_one_at_a_time_on_one_worker_thread():
    model = _ThreadRecordingModel()
    answer = model_answer_function(model, max_new_tokens=4)
    callers = [threading.Thread(target=answer, args=([{"role": "user", "content": "hello"}],)) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    deltas: list[str] = []
    assert answer([{"role": "user", "content": "again"}], on_text=deltas.append) == "reply 4"
    assert deltas == ["hi"]
    assert len(set(model.threads)) == 1
    assert model.threads[0] not in {threading.main_thread().ident, *(c.ident for c in callers)}


def test_the_worker_is_a_daemon_thread_and_shutdown_drops_calls_not_started():
    from desta_audio.serve.model_thread import model_worker

    worker = model_worker("test-worker")
    assert worker.submit(threading.current_thread).result(timeout=10).daemon  # a running generate cannot hold exit
    release = threading.Event()
    running = worker.submit(release.wait, 10)
    waiting = worker.submit(lambda: "never")
    while not running.running():
        threading.Event().wait(0.01)
    worker.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert running.result(timeout=10) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        worker.submit(print)


class _EndlessModel:
    """Generates until its stopping criteria say stop, as a long answer would."""

    llm_model = SimpleNamespace(generate=lambda **kwargs: None)

    def __init__(self) -> None:
        self.generating = threading.Event()

    def chat(self, conversations, **kwargs):
        import torch

        self.generating.set()
        while not bool(kwargs["stopping_criteria"](torch.zeros((1, 1), dtype=torch.long), None)[0]):
            time.sleep(0.001)
        return [FakeReply("stopped early", [])]


def test_closing_the_demo_stops_the_running_answer_and_ends_its_thread():
    # Ctrl-C on `desta demo` mid-answer: exiting while the worker is still inside torch aborts the process.
    model = _EndlessModel()
    answer = model_answer_function(model, max_new_tokens=100_000)
    replies: list = []
    caller = threading.Thread(target=lambda: replies.append(answer([{"role": "user", "content": "go on"}])))
    caller.start()
    assert model.generating.wait(10)
    assert answer.close(wait_s=5)
    caller.join(5)
    assert [reply.text for reply in replies] == ["stopped early"]
