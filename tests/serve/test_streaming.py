"""Real token streaming through the API: deltas leave while the batch generates, batches are still shared, stop
strings work across deltas, and failures after the start arrive as error events."""

from __future__ import annotations

import concurrent.futures
import random

import httpx
import openai
import pytest

from desta_audio.audio import AudioError
from desta_audio.serve.api import ServeSettings, create_app
from desta_audio.serve.stop_strings import StopStringFilter, apply_stop
from tests.serve.helpers import StreamingFakeModel, audio_part, running_server, tone_wav, wait_until

MODEL = "desta-test"


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def streamed_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_first_delta_arrives_before_generation_finishes():
    fake = StreamingFakeModel(hold=True)  # generation pauses after its first token until the test resumes it
    with running_server(create_app(fake, ServeSettings(model_id=MODEL, batch_window_ms=0))) as url:
        api = client(url)
        events: list[tuple[str, object]] = []
        stream = api.chat.completions.create(model=MODEL, messages=user("tell me a story"), temperature=0,
                                             stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not events:
                    events.append(("first delta, generation running", fake.generating == 1))
                    fake.resume.set()
                events.append(("text", chunk.choices[0].delta.content))
            elif chunk.usage is not None:
                events.append(("usage", chunk.usage.completion_tokens))
        plain = api.chat.completions.create(model=MODEL, messages=user("tell me a story"), temperature=0)
    assert not fake.resume_timed_out
    assert events[0] == ("first delta, generation running", True)
    texts = [value for kind, value in events if kind == "text"]
    assert len(texts) > 2 and "".join(texts) == plain.choices[0].message.content
    assert events[-1] == ("usage", plain.usage.completion_tokens)


def test_transcripts_come_in_a_chunk_before_the_text():
    fake = StreamingFakeModel()
    with running_server(create_app(fake, ServeSettings(model_id=MODEL))) as url:
        content = [audio_part(tone_wav(0.5)), audio_part(tone_wav(0.25), transcript="known words"),
                   {"type": "text", "text": "compare"}]
        chunks = list(client(url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert deltas[1].model_extra["transcripts"] == ["clip of 8000 samples", "known words"] and not deltas[1].content
    assert all("transcripts" not in (d.model_extra or {}) for d in deltas[2:])
    assert streamed_text(chunks).endswith("audio_samples=[8000,4000]")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_and_plain_requests_share_a_batch():
    fake = StreamingFakeModel(hold=True)
    settings = ServeSettings(model_id=MODEL, max_batch_size=8, batch_window_ms=0)
    with running_server(create_app(fake, settings)) as url:
        api = client(url)

        def streamed(text: str) -> str:
            return streamed_text(api.chat.completions.create(model=MODEL, messages=user(text), temperature=0,
                                                             stream=True))

        def plain(text: str) -> str:
            reply = api.chat.completions.create(model=MODEL, messages=user(text), temperature=0)
            return reply.choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            blocker = pool.submit(streamed, "first")  # holds the worker while the others queue up
            wait_until(lambda: fake.generating == 1, "the first batch to start")
            others = [pool.submit(streamed, "one"), pool.submit(streamed, "two"), pool.submit(plain, "three")]
            wait_until(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 3, "three queued requests")
            fake.resume.set()
            answers = [blocker.result()] + [future.result() for future in others]
        metrics = httpx.get(f"{url}/metrics").text
    assert fake.batches == [1, 3]
    assert answers == [f"roles=user last=[{q}] audio_samples=[]" for q in ("first", "one", "two", "three")]
    assert "desta_batch_size_count 2.0" in metrics


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["r last"], "roles=use"),  # spans the words "roles=user" and " last=[x"
        (["zzz", "=[x y"], "roles=user last"),  # spans " last=[x" and " y]"
        (["user lastX"], "roles=user last=[x y] audio_samples=[]"),  # starts to match, then does not
        (["]"], "roles=user last=[x y"),
    ],
)
def test_stop_strings_across_delta_boundaries(stop, expected):
    fake = StreamingFakeModel()
    with running_server(create_app(fake, ServeSettings(model_id=MODEL))) as url:
        api = client(url)
        chunks = list(api.chat.completions.create(model=MODEL, messages=user("x y"), temperature=0, stream=True,
                                                  stop=stop, stream_options={"include_usage": True}))
        plain = api.chat.completions.create(model=MODEL, messages=user("x y"), temperature=0, stop=stop)
    assert streamed_text(chunks) == expected == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stop_string_filter_matches_the_whole_text_cut():
    rng = random.Random(0)
    for attempt in range(3000):
        alphabet = "ab" if attempt % 2 else "ab \n"  # two letters: overlapping stops of different lengths
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 8))))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        stop_filter = StopStringFilter(stops)
        sent = "".join(stop_filter.feed(piece) for piece in pieces) + stop_filter.flush()
        assert (sent, stop_filter.stopped) == apply_stop(text, stops), (text, stops, pieces)
    stop_filter = StopStringFilter(["b", "aba"])  # "b" completes first, but "aba" starts earlier and wins
    assert stop_filter.feed("ab") + stop_filter.feed("a") + stop_filter.flush() == "" and stop_filter.stopped


def test_timeout_after_the_start_is_an_error_event():
    fake = StreamingFakeModel(hold=True)
    settings = ServeSettings(model_id=MODEL, request_timeout_s=0.5, batch_window_ms=0)
    with running_server(create_app(fake, settings)) as url:
        received: list[str] = []
        with pytest.raises(openai.APIError, match="timeout") as caught:
            for chunk in client(url).chat.completions.create(model=MODEL, messages=user("slow one"), temperature=0,
                                                             stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        fake.resume.set()
        assert received == ["roles=user"]  # the text before the timeout did arrive
        assert caught.value.body["code"] == "timeout"


class _AudioFailure(StreamingFakeModel):
    """Refuses conversations that mention "unusable" as the model does a clip it cannot use."""

    attempts: list[int]

    def chat(self, conversations, *, on_text=None, on_start=None, **generation):
        self.attempts = getattr(self, "attempts", []) + [len(conversations)]
        if any("unusable" in m["content"] for c in conversations for m in c):
            raise AudioError("audio #0: no usable samples")
        return super().chat(conversations, on_text=on_text, on_start=on_start, **generation)


def test_failures_during_generation_are_error_events_and_spare_batch_mates():
    fake = _AudioFailure(hold=True, fail_on="explode")
    settings = ServeSettings(model_id=MODEL, max_batch_size=8, batch_window_ms=0)
    with running_server(create_app(fake, settings)) as url:
        api = client(url)

        def outcome(text: str) -> str:
            try:
                return streamed_text(api.chat.completions.create(model=MODEL, messages=user(text), temperature=0,
                                                                 stream=True))
            except openai.APIError as error:
                return f"error {error.body['code']}: {error.message}"

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            blocker = pool.submit(outcome, "first")
            wait_until(lambda: fake.generating == 1, "the first batch to start")
            queued = [pool.submit(outcome, text) for text in ("fine", "explode", "unusable")]
            wait_until(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 3, "three queued requests")
            fake.resume.set()
            fine, explode, unusable = (future.result() for future in queued)
        assert blocker.result() == "roles=user last=[first] audio_samples=[]"
    assert fine == "roles=user last=[fine] audio_samples=[]"
    assert explode.startswith("error None: internal server error") and "secret" not in explode
    assert unusable.startswith("error invalid_audio:") and "no usable samples" in unusable
    assert fake.attempts[:2] == [1, 3]  # the shared batch failed, then each was retried alone


def test_client_disconnect_leaves_batch_mates_streaming():
    fake = StreamingFakeModel(hold=True, token_delay_s=0.05)
    settings = ServeSettings(model_id=MODEL, max_batch_size=8, batch_window_ms=0)
    with running_server(create_app(fake, settings)) as url:
        api = client(url)

        def leave_after_first_delta() -> str:
            stream = api.chat.completions.create(model=MODEL, messages=user("leaving early"), temperature=0,
                                                 stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    stream.close()
                    return chunk.choices[0].delta.content
            return ""

        def stay() -> str:
            return streamed_text(api.chat.completions.create(model=MODEL, messages=user("staying"), temperature=0,
                                                             stream=True))

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(stay)
            wait_until(lambda: fake.generating == 1, "the first batch to start")
            leaver, stayer = pool.submit(leave_after_first_delta), pool.submit(stay)
            wait_until(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 2, "two queued requests")
            fake.resume.set()
            assert leaver.result() == "roles=user"
            assert stayer.result() == "roles=user last=[staying] audio_samples=[]"
            blocker.result()
        again = streamed_text(api.chat.completions.create(model=MODEL, messages=user("after"), temperature=0,
                                                          stream=True))
    assert fake.batches[1] == 2
    assert again == "roles=user last=[after] audio_samples=[]"


def test_full_queue_is_refused_before_the_stream_starts():
    fake = StreamingFakeModel(hold=True)
    settings = ServeSettings(model_id=MODEL, max_batch_size=1, max_queue=1, batch_window_ms=0)
    with running_server(create_app(fake, settings)) as url:
        api = client(url)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(lambda: streamed_text(api.chat.completions.create(
                model=MODEL, messages=user("running"), temperature=0, stream=True)))
            wait_until(lambda: fake.generating == 1, "the first batch to start")
            queued = pool.submit(lambda: streamed_text(api.chat.completions.create(
                model=MODEL, messages=user("queued"), temperature=0, stream=True)))
            wait_until(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 1, "one queued request")
            with pytest.raises(openai.APIStatusError) as caught:
                api.chat.completions.create(model=MODEL, messages=user("too many"), temperature=0, stream=True)
            fake.resume.set()
            assert running.result().endswith("[running] audio_samples=[]")
            assert queued.result().endswith("[queued] audio_samples=[]")
    assert caught.value.status_code == 503 and "busy" in caught.value.message
