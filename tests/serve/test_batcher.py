"""The dynamic batcher on its own: grouping, bounds, failure isolation, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from desta_audio.serve.batcher import DynamicBatcher, QueueFullError, SamplingParams

GREEDY = SamplingParams(max_new_tokens=8)
SAMPLED = SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9)


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[tuple[list[str], SamplingParams]] = []
        self.delay_s, self.fail_on = delay_s, fail_on
        self.threads: set[str] = set()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, conversations, params):
        self.threads.add(threading.current_thread().name)
        self.release.wait(5)
        time.sleep(self.delay_s)
        names = [c[0]["content"] for c in conversations]
        self.batches.append((names, params))
        if self.fail_on in names:
            raise ValueError(f"cannot answer {self.fail_on}")
        return [f"answer to {name}" for name in names]


def ask(name: str) -> list[dict]:
    return [{"role": "user", "content": name}]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_a_batch_per_sampling_setting():
    chat = Recorder()

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        jobs = [batcher.submit(ask(f"g{i}"), GREEDY) for i in range(5)]
        jobs += [batcher.submit(ask(f"s{i}"), SAMPLED) for i in range(3)]
        answers = await asyncio.gather(*jobs)
        await batcher.stop()
        return answers

    answers = run(main())
    assert answers == [f"answer to g{i}" for i in range(5)] + [f"answer to s{i}" for i in range(3)]
    assert chat.batches == [([f"g{i}" for i in range(5)], GREEDY), ([f"s{i}" for i in range(3)], SAMPLED)]
    assert len(chat.threads) == 1 and threading.main_thread().name not in chat.threads


def test_seeded_sampling_requests_run_alone_and_greedy_ones_still_share():
    # Rows of a batch draw from one random generator, so a seed reproduces an answer only in a batch of its own.
    chat = Recorder()
    seeded = SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=7)
    greedy_with_seed = SamplingParams(max_new_tokens=8, seed=7)

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        jobs = [batcher.submit(ask(f"s{i}"), seeded) for i in range(3)]
        jobs += [batcher.submit(ask(f"g{i}"), greedy_with_seed) for i in range(2)]
        await asyncio.gather(*jobs)
        await batcher.stop()

    run(main())
    assert chat.batches == [(["s0"], seeded), (["s1"], seeded), (["s2"], seeded), (["g0", "g1"], greedy_with_seed)]


def test_batches_never_exceed_the_maximum():
    chat = Recorder()

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=4, window_s=0.02)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(ask(str(i)), GREEDY) for i in range(10)))
        await batcher.stop()

    run(main())
    assert [len(names) for names, _ in chat.batches] == [4, 4, 2]


def test_full_queue_is_refused_immediately():
    chat = Recorder()
    chat.release.clear()  # hold the first batch in the worker so the queue fills

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=1, window_s=0, max_queue=2)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(ask("running"), GREEDY))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit(ask(f"w{i}"), GREEDY)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="max_queue=2"):
            await batcher.submit(ask("one too many"), GREEDY)
        chat.release.set()
        answers = await asyncio.gather(first, *waiting)
        await batcher.stop()
        return answers

    assert run(main()) == ["answer to running", "answer to w0", "answer to w1"]


def test_a_failing_conversation_does_not_fail_its_batch_mates():
    chat = Recorder(fail_on="bad")

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(ask(n), GREEDY) for n in ["a", "bad", "c"]),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    good_a, bad, good_c = run(main())
    assert (good_a, good_c) == ("answer to a", "answer to c")
    assert isinstance(bad, ValueError) and "bad" in str(bad)


def test_cancelled_requests_are_dropped_before_they_run():
    chat = Recorder()
    chat.release.clear()

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=1, window_s=0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(ask("first"), GREEDY))
        await asyncio.sleep(0.05)
        abandoned = asyncio.create_task(batcher.submit(ask("abandoned"), GREEDY))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        chat.release.set()
        await first
        await asyncio.sleep(0.05)
        await batcher.stop()

    run(main())
    assert [names for names, _ in chat.batches] == [["first"]]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_queue"):
        DynamicBatcher(Recorder(), max_queue=0)


class StreamingRecorder:
    """Streams each answer in two halves through the hooks; fails a whole batch that contains `fail_on`."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.batches: list[tuple[list[str], list[bool]]] = []

    def __call__(self, conversations, params, *, on_text=None, on_start=None):
        names = [c[0]["content"] for c in conversations]
        self.batches.append((names, [hook is not None for hook in on_text or [None] * len(names)]))
        for name, hook in zip(names, on_start or []):
            if hook is not None:
                hook([f"transcript of {name}"])
        answers = [f"answer to {name}" for name in names]
        for half in (0, 1):
            for answer, hook in zip(answers, on_text or []):
                if hook is not None:
                    hook(answer[: len(answer) // 2] if half == 0 else answer[len(answer) // 2:])
            if half == 0 and self.fail_on in names:
                raise ValueError(f"cannot finish {self.fail_on}")  # after some text went out
        return answers


def _streams(batcher: DynamicBatcher, names: list[str], streaming: list[bool]):
    received = {name: [] for name in names}
    jobs = []
    for name, streams in zip(names, streaming):
        hooks = {"on_text": received[name].append, "on_start": received[name].append} if streams else {}
        jobs.append(batcher.submit(ask(name), GREEDY, **hooks))
    return jobs, received


def test_streaming_and_plain_requests_share_a_batch_and_hooks_reach_the_chat_function():
    chat = StreamingRecorder()

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        jobs, received = _streams(batcher, ["a", "b", "c"], [True, False, True])
        answers = await asyncio.gather(*jobs)
        await batcher.stop()
        return answers, received

    answers, received = run(main())
    assert answers == ["answer to a", "answer to b", "answer to c"]
    assert chat.batches == [(["a", "b", "c"], [True, False, True])]
    assert received["a"] == [["transcript of a"], "answe", "r to a"] and received["b"] == []


def test_a_chat_function_without_hooks_still_serves_streaming_requests_after_the_batch():
    class Reply:
        def __init__(self, text: str) -> None:
            self.text, self.transcripts = text, [f"heard {text}"]

    def chat(conversations, params):  # no on_text / on_start parameters
        return [Reply(c[0]["content"].upper()) for c in conversations]

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        jobs, received = _streams(batcher, ["x", "y"], [True, False])
        await asyncio.gather(*jobs)
        await batcher.stop()
        return received

    assert run(main()) == {"x": [["heard X"], "X"], "y": []}


def test_a_retried_batch_does_not_send_text_twice():
    chat = StreamingRecorder(fail_on="bad")

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        jobs, received = _streams(batcher, ["good", "bad"], [True, True])
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return outcomes, received

    (good, bad), received = run(main())
    assert good == "answer to good" and isinstance(bad, ValueError)
    # "good" saw its first half in the failed batch; the retry adds only the rest, and on_start ran once.
    assert received["good"] == [["transcript of good"], "answer ", "to good"]
    assert "".join(received["bad"][1:]) == "answer"  # the text that went out before the failure
    assert [names for names, _ in chat.batches] == [["good", "bad"], ["good"], ["bad"]]


class StopRecorder:
    """A chat function that takes stop strings, as DeSTAModel's does; fails a batch of several holding "bad"."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], object]] = []

    def __call__(self, conversations, params, *, stop_strings=None):
        names = [c[0]["content"] for c in conversations]
        self.calls.append((names, stop_strings))
        if "bad" in names and len(names) > 1:
            raise ValueError("one of them is bad")
        return [f"answer to {name}" for name in names]


def test_stop_strings_reach_a_chat_function_that_takes_them_and_do_not_split_batches():
    chat = StopRecorder()

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        answers = await asyncio.gather(batcher.submit(ask("a"), GREEDY, stop=["x"]), batcher.submit(ask("b"), GREEDY),
                                       batcher.submit(ask("c"), GREEDY, stop=["y", "", "z"]))
        answers += await asyncio.gather(batcher.submit(ask("plain"), GREEDY))
        answers += await asyncio.gather(batcher.submit(ask("d"), GREEDY, stop=["s"]),
                                        batcher.submit(ask("bad"), GREEDY, stop=["t"]))
        await batcher.stop()
        return answers

    assert run(main()) == ["answer to a", "answer to b", "answer to c", "answer to plain", "answer to d",
                           "answer to bad"]
    assert chat.calls == [
        (["a", "b", "c"], [["x"], [], ["y", "z"]]),
        (["plain"], None),  # nobody asked for stop strings: the keyword is left out
        (["d", "bad"], [["s"], ["t"]]),
        (["d"], [["s"]]), (["bad"], [["t"]]),  # the one-by-one retry keeps each request's own stop strings
    ]


def test_stop_strings_are_not_passed_to_a_chat_function_without_them():
    chat = Recorder()  # (conversations, params) only: stop strings must not reach it

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.05)
        await batcher.start()
        answers = await asyncio.gather(batcher.submit(ask("a"), GREEDY, stop=["x"]), batcher.submit(ask("b"), GREEDY))
        await batcher.stop()
        return answers

    assert run(main()) == ["answer to a", "answer to b"]
    assert chat.batches == [(["a", "b"], GREEDY)]


async def _closed_loop_clients(batcher: DynamicBatcher, starts: list[float], rounds: int, think_s: list[float],
                               params: list[SamplingParams] | None = None):
    """Clients that each send a request, wait for its answer, pause `think_s[i]`, and send the next one."""

    async def client(index: int) -> None:
        await asyncio.sleep(starts[index])
        for round_ in range(rounds):
            await batcher.submit(ask(f"c{index}r{round_}"), params[index] if params else GREEDY)
            await asyncio.sleep(think_s[index])

    await asyncio.gather(*(client(i) for i in range(len(starts))))


@pytest.mark.parametrize("refill_fraction", [0.0, 2.0])
def test_clients_that_come_back_together_after_a_batch_share_the_next_one(refill_fraction):
    # Two cohorts from the start (3 requests, then 5 after the 20 ms window has closed); after each batch the
    # clients return over 10-70 ms. Without refill the cohorts alternate for good; with it they merge.
    chat = Recorder(delay_s=0.15)

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.02, refill_fraction=refill_fraction)
        await batcher.start()
        await _closed_loop_clients(batcher, starts=[0.0] * 3 + [0.06] * 5, rounds=4,
                                   think_s=[0.01 + 0.01 * i for i in range(8)])
        await batcher.stop()

    run(main())
    sizes = [len(names) for names, _ in chat.batches]
    assert sum(sizes) == 32
    if refill_fraction:
        assert sizes == [3, 8, 8, 8, 5]  # the late cohort joins the first cohort's second round
    else:
        assert 8 not in sizes  # the cohorts never merged


def test_a_lone_client_is_never_held_back_by_the_refill_wait():
    # A refill wait this long (100x the batch time) would stall the test if a lone client's next request waited.
    chat = Recorder(delay_s=0.05)

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.0, refill_fraction=100.0)
        await batcher.start()
        await asyncio.wait_for(_closed_loop_clients(batcher, starts=[0.0], rounds=5, think_s=[0.0]), timeout=4)
        await batcher.stop()

    run(main())
    assert [len(names) for names, _ in chat.batches] == [1] * 5


def test_the_refill_wait_never_holds_back_a_batch_with_other_sampling_settings():
    # Greedy and sampled clients alternate batches; waiting for the other kind to come back would stall the test.
    chat = Recorder(delay_s=0.05)

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.0, refill_fraction=100.0)
        await batcher.start()
        await asyncio.wait_for(_closed_loop_clients(batcher, starts=[0.0, 0.0, 0.01, 0.01], rounds=3,
                                                    think_s=[0.0] * 4, params=[GREEDY, GREEDY, SAMPLED, SAMPLED]),
                               timeout=4)
        await batcher.stop()

    run(main())
    assert sum(len(names) for names, _ in chat.batches) == 12
    for names, params in chat.batches:
        assert {name[1] for name in names} <= ({"0", "1"} if params == GREEDY else {"2", "3"})


def test_each_request_reports_how_long_it_waited_for_its_batch():
    chat, waits = Recorder(delay_s=0.1), []

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.0, on_wait=waits.append)
        await batcher.start()
        first = batcher.enqueue(ask("first"), GREEDY)
        await asyncio.sleep(0.02)  # the first batch is running: the second request waits for it to end
        await asyncio.gather(first, batcher.submit(ask("second"), GREEDY))
        await batcher.stop()

    run(main())
    assert [names for names, _ in chat.batches] == [["first"], ["second"]]
    assert len(waits) == 2 and 0 <= waits[0] < 0.05 < waits[1]


def test_a_request_with_other_settings_after_a_batch_waits_only_its_window():
    chat = Recorder(delay_s=0.05)

    async def main():
        batcher = DynamicBatcher(chat, max_batch_size=8, window_s=0.02, refill_fraction=100.0)
        await batcher.start()
        await batcher.submit(ask("greedy"), GREEDY)  # its clients might come back for 5 s...
        await asyncio.wait_for(batcher.submit(ask("sampled"), SAMPLED), timeout=2)  # ...which is not this one's wait
        await batcher.stop()

    run(main())
    assert [names for names, _ in chat.batches] == [["greedy"], ["sampled"]]
