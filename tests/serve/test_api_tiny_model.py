"""The API over a real (tiny, random-weight) DeSTAModel: batched answers equal one-at-a-time answers."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest

from desta_audio.serve.api import ServeSettings, create_app
from tests.serve.helpers import audio_part, running_server, tone_wav

MODEL = "desta-tiny-random"
QUESTIONS = ["what did the speaker say", "describe the sound", "is the speaker happy", "hello world"]


def request(i: int) -> list[dict]:
    content = [audio_part(tone_wav(0.3 + 0.2 * (i % 3), 200.0 + 50 * i), transcript="hello world" if i % 2 else None),
               {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]
    return [{"role": "user", "content": content if i % 4 else QUESTIONS[i % len(QUESTIONS)]}]


@pytest.fixture(autouse=True)
def no_audio_cache_afterwards(tiny):
    yield
    tiny.enable_audio_cache(0)  # the app turns it on in the shared model


def test_concurrent_batched_answers_equal_sequential_ones(tiny):
    settings = ServeSettings(model_id=MODEL, max_batch_size=16, batch_window_ms=30)
    with running_server(create_app(tiny, settings)) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def ask(i: int) -> str:
            reply = api.chat.completions.create(model=MODEL, messages=request(i), temperature=0, max_tokens=6)
            return reply.choices[0].message.content

        sequential = [ask(i) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            concurrent_answers = list(pool.map(ask, [i % 8 for i in range(16)]))
        metrics = httpx.get(f"{url}/metrics").text
    assert concurrent_answers == sequential * 2
    assert any(sequential)  # random weights still produce some tokens
    count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("desta_batch_size_count")))
    assert count < 8 + 16  # some of the 16 concurrent requests shared a batch


def test_streamed_answers_equal_plain_ones_and_arrive_in_pieces(tiny):
    settings = ServeSettings(model_id=MODEL, max_batch_size=16, batch_window_ms=30)
    with running_server(create_app(tiny, settings)) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def plain(i: int) -> str:
            return api.chat.completions.create(model=MODEL, messages=request(i), temperature=0,
                                               max_tokens=16).choices[0].message.content

        def streamed(i: int) -> list[str]:
            chunks = api.chat.completions.create(model=MODEL, messages=request(i), temperature=0, max_tokens=16,
                                                 stream=True)
            return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]

        expected = [plain(i) for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pieces = list(pool.map(streamed, range(4)))
    assert ["".join(p) for p in pieces] == expected
    assert any(len(p) > 1 for p in pieces)  # token by token, not the whole answer at once


def test_stop_strings_end_generation_early_without_changing_answers(tiny):
    import functools
    import threading
    from types import SimpleNamespace

    from desta_audio.serve.stop_strings import apply_stop
    from tests.serve.helpers import stop_string_in

    calls: list[tuple[object, list[int]]] = []  # (stop_strings given to chat, generated tokens per row)
    lock = threading.Lock()

    @functools.wraps(tiny.chat)  # keeps chat's signature, so the server passes hooks and stop strings as to tiny
    def recording_chat(*args, **kwargs):
        replies = tiny.chat(*args, **kwargs)
        with lock:
            calls.append((kwargs.get("stop_strings"), [len(reply.token_ids) for reply in replies]))
        return replies

    model = SimpleNamespace(chat=recording_chat, tokenizer=tiny.tokenizer)
    settings = ServeSettings(model_id=MODEL, max_batch_size=16, batch_window_ms=200)
    with running_server(create_app(model, settings)) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = request(1)
        baseline = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24)
        full = baseline.choices[0].message.content
        stop = stop_string_in(full)
        expected, found = apply_stop(full, [stop])
        assert found and expected != full

        def plain():
            return api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24)

        def stopped():
            return api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24,
                                               stop=[stop, "\x00never"])

        def streamed():
            return list(api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24,
                                                    stop=stop, stream=True, stream_options={"include_usage": True}))

        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # one batch: the plain row runs on past the stops
            jobs = [pool.submit(plain), pool.submit(stopped), pool.submit(streamed)]
            other, cut, chunks = (job.result() for job in jobs)

    assert other.choices[0].message.content == full
    assert other.usage.completion_tokens == baseline.usage.completion_tokens
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == len(tiny.tokenizer.encode(expected, add_special_tokens=False))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == cut.usage.completion_tokens
    generated = {True: [], False: []}  # rows with stop strings, rows without
    for stop_strings, lengths in calls:
        for row, length in enumerate(lengths):
            generated[bool(stop_strings and stop_strings[row])].append(length)
    assert len(generated[True]) == 2 and max(generated[True]) < min(generated[False])


def test_a_multi_turn_chat_encodes_its_clip_once_and_answers_as_without_the_cache(tiny):
    clip = audio_part(tone_wav(1.5, 330.0))

    def conversation(api) -> list[str]:
        messages = [{"role": "user", "content": [clip, {"type": "text", "text": "describe the sound"}]}]
        answers = []
        for follow_up in ["is the speaker happy", "hello world"]:
            reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6)
            answers.append(reply.choices[0].message.content)
            messages += [{"role": "assistant", "content": answers[-1]}, {"role": "user", "content": follow_up}]
        return answers

    answers, lookups = {}, {}
    for cache_mb in (0, 64):
        with running_server(create_app(tiny, ServeSettings(model_id=MODEL, audio_cache_mb=cache_mb))) as url:
            answers[cache_mb] = conversation(openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0))
            lookups[cache_mb] = [line for line in httpx.get(f"{url}/metrics").text.splitlines()
                                 if line.startswith("desta_audio_cache_lookups_total")]
    assert answers[64] == answers[0]
    assert lookups[0] == ['desta_audio_cache_lookups_total{result="hit"} 0.0',
                          'desta_audio_cache_lookups_total{result="miss"} 0.0']
    assert lookups[64] == ['desta_audio_cache_lookups_total{result="hit"} 1.0',
                           'desta_audio_cache_lookups_total{result="miss"} 1.0']


def test_a_text_prompt_beyond_the_llm_context_is_a_400_at_once(tiny):
    limit = tiny.llm_model.config.max_position_embeddings
    with running_server(create_app(tiny, ServeSettings(model_id=MODEL))) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello " * limit}],
                                        max_tokens=4, temperature=0)
    assert f"context is {limit} tokens" in caught.value.message


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hello world"}],  # the model adds its own system prompt, not the tokenizer's
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}],
])
def test_usage_counts_the_prompt_the_model_reads(tiny, messages):
    with running_server(create_app(tiny, ServeSettings(model_id=MODEL))) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)
    batch, _, _ = tiny.build_batch([messages])
    assert reply.usage.prompt_tokens == batch.input_ids.shape[1]


def test_clips_count_in_usage_and_a_clip_past_the_context_is_a_400(tiny, monkeypatch):
    messages = [{"role": "user", "content": [audio_part(tone_wav(0.5, 300.0), transcript="hello world"),
                                             {"type": "text", "text": "what is said"}]}]
    with running_server(create_app(tiny, ServeSettings(model_id=MODEL))) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)
        assert reply.usage.prompt_tokens > tiny.config.prompt_size  # the clip's audio tokens are in the prompt
        # A context that holds the text but not the clip: the model finds out once the clip is in the prompt.
        monkeypatch.setattr(tiny.llm_model.config, "max_position_embeddings", reply.usage.prompt_tokens)
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)
    assert caught.value.code == "context_length_exceeded"
    assert f"- its prompt is {reply.usage.prompt_tokens} tokens" in caught.value.message  # no row number
