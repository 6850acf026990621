"""The API against a real uvicorn server on loopback, driven by the official openai client (fake model)."""

from __future__ import annotations

import concurrent.futures
import io
import socket
import time
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from desta_audio.serve.api import ServeSettings, create_app
from tests.serve.helpers import (
    FakeModel,
    audio_part,
    b64,
    chat_request_bytes,
    raw_connection,
    running_server,
    tone_wav,
)

MODEL = "desta-test"


@pytest.fixture
def fake() -> FakeModel:
    return FakeModel()


@pytest.fixture
def served(fake):
    settings = ServeSettings(model_id=MODEL, max_request_mb=1, max_audio_seconds=10, batch_window_ms=5)
    with running_server(create_app(fake, settings)) as url:
        yield url


def client(url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def test_plain_text_chat(served, fake):
    reply = client(served).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], temperature=0, max_tokens=32
    )
    assert reply.choices[0].message.content == "roles=user last=[Hello there] audio_samples=[]"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(reply.choices[0].message.content.split())
    assert fake.calls == [{"max_new_tokens": 32, "do_sample": False}]


def test_audio_parts_become_placeholders_in_order(served):
    one, two = tone_wav(0.5), tone_wav(1.0, 220.0)
    content = [
        {"type": "text", "text": "Compare"},
        audio_part(one),
        {"type": "text", "text": "with"},
        audio_part(two, transcript="known words"),
        {"type": "text", "text": "Which is longer?"},
    ]
    reply = client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                                   temperature=0)
    message = reply.choices[0].message
    assert message.content == "roles=user last=[Compare <|AUDIO|> with <|AUDIO|> Which is longer?] audio_samples=[8000,16000]"
    assert message.model_extra["transcripts"] == ["clip of 8000 samples", "known words"]


def test_mp3_and_resampling(served):
    mp3 = tone_wav(1.0, rate=44_100, fmt="MP3")
    reply = client(served).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [audio_part(mp3, "mp3"), {"type": "text", "text": "?"}]}],
        temperature=0,
    )
    samples = int(reply.choices[0].message.content.split("audio_samples=[")[1].rstrip("]"))
    assert abs(samples - 16_000) < 2_000  # mp3 frames pad a little; the rate is 16 kHz whatever came in


def test_multi_turn_history(served):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [audio_part(tone_wav(0.25)), {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A tone."},
        {"role": "user", "content": "How long is it?"},
    ]
    reply = client(served).chat.completions.create(model=MODEL, messages=messages, temperature=0)
    assert reply.choices[0].message.content == "roles=system,user,assistant,user last=[How long is it?] audio_samples=[4000]"


def test_streaming_from_a_model_without_hooks_sends_the_answer_when_its_batch_is_done(served):
    stream = client(served).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "stream me please"}], temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "roles=user last=[stream me please] audio_samples=[]"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 1
    assert [c.choices[0].delta.model_extra.get("transcripts") for c in chunks if c.choices][1] == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(text.split())


def test_sampling_parameters_reach_the_model(served, fake):
    client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                           temperature=0.5, top_p=0.8, max_tokens=7, seed=3)
    assert fake.calls[-1] == {"max_new_tokens": 7, "do_sample": True, "temperature": 0.5, "top_p": 0.8, "seed": 3}


def test_stop_sequence_cuts_the_answer(served):
    reply = client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                   temperature=0, stop=["last="])
    assert reply.choices[0].message.content == "roles=user "
    as_many_as_allowed = [f"absent{i}" for i in range(15)] + ["last="]
    reply = client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                   temperature=0, stop=as_many_as_allowed)
    assert reply.choices[0].message.content == "roles=user "


class StopStringFakeModel(FakeModel):
    """A fake whose chat takes stop strings (but no streaming hooks); it answers in full, as a model that found
    no stop string early would."""

    def chat(self, conversations, *, stop_strings=None, **generation):
        return super().chat(conversations, stop_strings=stop_strings, **generation)


def test_stop_strings_reach_a_model_that_takes_them():
    fake = StopStringFakeModel()
    with running_server(create_app(fake, ServeSettings(model_id=MODEL, batch_window_ms=0))) as url:
        api = client(url)
        cut = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=0,
                                          stop="last=")
        whole = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=0)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("roles=user ", "stop")
    assert whole.choices[0].message.content == "roles=user last=[x] audio_samples=[]"
    assert [call.get("stop_strings") for call in fake.calls] == [[["last="]], None]


def test_models_health_and_metrics(served):
    assert [m.id for m in client(served).models.list()] == [MODEL]
    assert httpx.get(f"{served}/health").json()["status"] == "ok"
    client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=0)
    metrics = httpx.get(f"{served}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'desta_requests_total{route="/v1/chat/completions",status="200"} 1.0' in metrics.text
    assert "desta_batch_size_count 1.0" in metrics.text
    assert "desta_queue_wait_seconds_count 1.0" in metrics.text


def huge_float_wav() -> bytes:
    """Finite samples of 1e30: they used to overflow Whisper's spectra into a 500."""
    buffer = io.BytesIO()
    sf.write(buffer, np.full(1600, 1e30, np.float32), 16_000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        (audio_part(b"definitely not audio"), "cannot decode"),
        ({"type": "input_audio", "input_audio": {"data": "%%%not base64%%%", "format": "wav"}}, "not valid base64"),
        (audio_part(b""), "empty"),
        (audio_part(tone_wav(11.0)), "limit"),
        (audio_part(huge_float_wav()), "float audio should lie within [-1, 1]"),
        ({"type": "audio_url", "audio_url": {"url": "file:///etc/passwd"}}, "does not read server-side files"),
        ({"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}}, "does not fetch audio URLs"),
    ],
)
def test_bad_audio_gets_400_with_a_message(served, part, expected):
    with pytest.raises(openai.BadRequestError) as caught:
        client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [part]}])
    assert expected in caught.value.message
    assert "Traceback" not in caught.value.message


def test_data_url_audio_is_accepted(served):
    url = "data:audio/wav;base64," + b64(tone_wav(0.5))
    reply = client(served).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": url}}]}],
        temperature=0,
    )
    assert reply.choices[0].message.content.endswith("audio_samples=[8000]")


def test_oversize_request_gets_413(served):
    big = tone_wav(9.0, rate=48_000)  # ~1.7 MB of wav, over the 1 MB limit of this server
    with pytest.raises(openai.APIStatusError) as caught:
        client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [audio_part(big)]}])
    assert caught.value.status_code == 413
    assert "larger than" in caught.value.message


def test_malformed_requests_get_400(served):
    response = httpx.post(f"{served}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "invalid request" in response.json()["error"]["message"]
    response = httpx.post(f"{served}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert response.status_code == 400
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.BadRequestError, match="must not contain"):
        client(served).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "<|AUDIO|> hi"}])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client(served).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("body", "headers", "expected"), [
    (b"{not json", {"content-type": "application/json"},
     "invalid request: the body is not valid JSON (Expecting property name enclosed in double quotes); "
     "send a JSON object"),
    # curl -d without -H sends a form content type
    (f'{{"model": "{MODEL}", "messages": []}}'.encode(), {"content-type": "application/x-www-form-urlencoded"},
     "invalid request: the body must be a JSON object sent with 'Content-Type: application/json', "
     'like {"model": ..., "messages": [...]}'),
    (f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "What is it?"}}, '
     '{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}'.encode(),
     {"content-type": "application/json"},
     "invalid request: messages[0].content[1]: content parts must be of type text, input_audio or audio_url "
     "(images and files are not supported)"),
    (f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": [{{"type": "input_audio", '
     '"input_audio": {"format": "wav"}}]}]}'.encode(), {"content-type": "application/json"},
     "invalid request: messages[0].content[0].input_audio.data: Field required"),
])
def test_malformed_requests_get_one_clear_line(served, body, headers, expected):
    response = httpx.post(f"{served}/v1/chat/completions", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == expected


def test_a_wrong_url_or_method_says_where_the_api_is(served):
    # the usual mistake: a base_url without /v1
    with pytest.raises(openai.NotFoundError) as caught:
        openai.OpenAI(base_url=served, api_key="unused", max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.message.endswith("Invalid URL (POST /chat/completions); this server answers POST "
                                    "/v1/chat/completions and GET /v1/models (a client's base_url ends in /v1)")
    wrong_method = httpx.get(f"{served}/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"].startswith("Invalid URL (GET /v1/chat/completions); ")


def test_explicit_nulls_mean_the_defaults(served):
    # OpenAI takes null for every optional field, and clients that serialise unset fields send it.
    nulls = dict.fromkeys(["n", "stream", "stop", "temperature", "top_p", "seed", "max_tokens", "tools", "logprobs",
                           "response_format", "presence_penalty", "user"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], **nulls}
    response = httpx.post(f"{served}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].endswith("last=[Hello] audio_samples=[]")
    streamed = httpx.post(f"{served}/v1/chat/completions",
                          json={**body, "stream": True, "stream_options": {"include_usage": None}})
    assert streamed.status_code == 200, streamed.text
    assert streamed.text.endswith("data: [DONE]\n\n") and '"usage"' not in streamed.text


def test_model_failure_is_500_without_internals():
    settings = ServeSettings(model_id=MODEL)
    with running_server(create_app(FakeModel(fail_on="explode"), settings)) as url:
        with pytest.raises(openai.InternalServerError) as caught:
            client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "explode"}])
        assert "secret" not in str(caught.value.body) and "Traceback" not in str(caught.value.body)
        # the server keeps working afterwards
        ok = client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fine"}])
        assert ok.choices[0].message.content.startswith("roles=user")


def test_api_key_is_required_when_set():
    settings = ServeSettings(model_id=MODEL, api_key="s3cret")
    with running_server(create_app(FakeModel(), settings)) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        assert [m.id for m in client(url, api_key="s3cret").models.list()] == [MODEL]
        assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open
        assert httpx.get(f"{url}/metrics").status_code == 401


def test_cors_is_off_by_default(served):
    response = httpx.options(f"{served}/v1/models", headers={"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in response.headers


def test_full_queue_answers_503_and_recovers():
    fake = FakeModel(delay_s=0.5)
    settings = ServeSettings(model_id=MODEL, max_batch_size=1, max_queue=2, batch_window_ms=0)
    with running_server(create_app(fake, settings)) as url:
        def one(i: int) -> int:
            try:
                client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])
                return 200
            except openai.APIStatusError as error:
                assert "busy" in error.message
                assert error.response.headers.get("retry-after") == "1"
                return error.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(8)))
        # At least the queue's 2 get through (3 when the first was already running before the others arrived).
        assert statuses.count(503) >= 1 and statuses.count(200) >= 2
        assert set(statuses) <= {200, 503}
        assert one(99) == 200


def test_request_timeout_gives_504():
    settings = ServeSettings(model_id=MODEL, request_timeout_s=0.2)
    with running_server(create_app(FakeModel(delay_s=1.0), settings)) as url:
        with pytest.raises(openai.APIStatusError) as caught:
            client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "slow"}])
        assert caught.value.status_code == 504


def test_32_concurrent_clients_are_batched_and_answered(fake):
    fake.delay_s = 0.05
    settings = ServeSettings(model_id=MODEL, max_batch_size=16, batch_window_ms=20)
    with running_server(create_app(fake, settings)) as url:
        api = client(url)

        def ask(i: int) -> str:
            return api.chat.completions.create(
                model=MODEL, temperature=0,
                messages=[{"role": "user", "content": [audio_part(tone_wav(0.1 + i / 100)), {"type": "text", "text": f"q{i}"}]}],
            ).choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, range(32)))
    assert answers == [f"roles=user last=[<|AUDIO|> q{i}] audio_samples=[{int((0.1 + i / 100) * 16000)}]" for i in range(32)]
    assert sum(fake.batches) == 32 and max(fake.batches) > 1


def test_oversize_chunked_body_without_length_gets_413(served):
    def body():
        yield b'{"model": "desta-test", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 32_768  # 1.25 MB in all, over the 1 MB limit, with no Content-Length
        yield b'"}]}'

    response = httpx.post(f"{served}/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]


def test_a_failing_request_gets_a_json_500_and_its_batch_mates_their_answers():
    settings = ServeSettings(model_id=MODEL, max_batch_size=8, batch_window_ms=200)
    with running_server(create_app(FakeModel(fail_on="explode"), settings)) as url:
        def ask(text: str) -> httpx.Response:
            return httpx.post(f"{url}/v1/chat/completions", timeout=30,
                              json={"model": MODEL, "messages": [{"role": "user", "content": text}]})

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            failed, *fine = pool.map(ask, ["explode", "one", "two"])
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert "secret" not in failed.text and "Traceback" not in failed.text
    assert [r.json()["choices"][0]["message"]["content"] for r in fine] == [
        "roles=user last=[one] audio_samples=[]", "roles=user last=[two] audio_samples=[]"]


def test_413_names_the_real_limit_and_carries_cors_headers():
    origin = "http://a.example"
    settings = ServeSettings(model_id=MODEL, max_request_mb=0.5, cors_origins=[origin])
    with running_server(create_app(FakeModel(), settings)) as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 700_000,
                              headers={"content-type": "application/json", "origin": origin})
    assert response.status_code == 413
    assert "limit of 0.5 MB" in response.json()["error"]["message"]
    assert response.headers["access-control-allow-origin"] == origin
    with running_server(create_app(FakeModel(), ServeSettings(model_id=MODEL, max_request_mb=0.01))) as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 20_000,
                              headers={"content-type": "application/json"})
    assert "limit of 0.01 MB" in response.json()["error"]["message"]  # not the byte rounding's 0.00999928


def metric_lines(url: str, name: str) -> list[str]:
    return sorted(line for line in httpx.get(f"{url}/metrics", headers={"authorization": "Bearer k"}).text.splitlines()
                  if line.startswith(name))


def test_every_api_response_is_counted_once_by_route_and_status():
    settings = ServeSettings(model_id=MODEL, api_key="k", max_request_mb=0.5)
    key = {"authorization": "Bearer k"}
    chat = "/v1/chat/completions"
    user = [{"role": "user", "content": "x"}]
    with running_server(create_app(FakeModel(), settings)) as url:
        for body in ({"model": MODEL, "messages": []}, {"model": MODEL, "messages": user, "temperature": -1},
                     {"model": MODEL, "messages": user, "top_p": 0}, [1, 2],
                     {"model": MODEL, "messages": [{"role": "user", "content": [
                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}):
            assert httpx.post(f"{url}{chat}", json=body, headers=key).status_code == 400
        assert httpx.post(f"{url}{chat}", json={"model": MODEL, "messages": user}).status_code == 401
        assert httpx.post(f"{url}{chat}", content=b"x" * 600_000, headers=key).status_code == 413
        assert httpx.post(f"{url}{chat}", json={"model": MODEL, "messages": user}, headers=key).status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=key).status_code == 200
        assert metric_lines(url, "desta_requests_total") == [
            'desta_requests_total{route="/v1/chat/completions",status="200"} 1.0',
            'desta_requests_total{route="/v1/chat/completions",status="400"} 5.0',
            'desta_requests_total{route="/v1/chat/completions",status="401"} 1.0',
            'desta_requests_total{route="/v1/chat/completions",status="413"} 1.0',
            'desta_requests_total{route="/v1/models",status="200"} 1.0',
            'desta_requests_total{route="/v1/models",status="401"} 1.0',
        ]


@pytest.mark.parametrize(("extra", "param", "expected"), [
    ({"logprobs": True, "top_logprobs": 3}, "logprobs", "logprobs are not supported"),
    ({"top_logprobs": 2}, "top_logprobs", "logprobs are not supported"),
    ({"tool_choice": "required"}, "tool_choice", "function calling"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "function calling"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format",
     "json_schema"),
    ({"response_format": {"type": "json_object"}}, "response_format", "json_object"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    ({"presence_penalty": -1}, "presence_penalty", "not supported"),
    ({"logit_bias": {"42": 100}}, "logit_bias", "not supported"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities", "text only"),
    ({"stop": [f"s{i}" for i in range(17)]}, "stop", "17 stop strings is more than this server's limit of 16"),
])
def test_fields_that_would_change_the_answer_are_refused(served, extra, param, expected):
    response = httpx.post(f"{served}/v1/chat/completions",
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and expected in response.json()["error"]["message"]


def test_fields_that_change_nothing_are_accepted(served):
    reply = client(served).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], user="u1", metadata={"k": "v"}, store=False,
        tool_choice="none", response_format={"type": "text"}, presence_penalty=0, frequency_penalty=0,
        logprobs=False, seed=1, parallel_tool_calls=False)
    assert reply.choices[0].message.content == "roles=user last=[x] audio_samples=[]"


@pytest.mark.parametrize("content", ["", "  \n", None, [], [{"type": "text", "text": ""}]])
def test_an_empty_user_message_is_refused_by_its_index(served, content):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": content}]
    response = httpx.post(f"{served}/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert response.status_code == 400
    assert "messages[2]" in response.json()["error"]["message"] and "empty" in response.json()["error"]["message"]


def test_audio_at_an_absurd_sample_rate_is_refused_before_decoding(served):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((655_350, 8), np.int16), 655_350, format="FLAC")  # 1 s, 8 channels of silence
    with pytest.raises(openai.BadRequestError) as caught:
        client(served).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [audio_part(buffer.getvalue(), "flac")]}])
    assert "655350 Hz" in caught.value.message and "192000 Hz" in caught.value.message


def test_the_default_answer_length_never_exceeds_the_limit():
    fake = FakeModel()
    with running_server(create_app(fake, ServeSettings(model_id=MODEL, max_tokens_limit=100))) as url:
        client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=0)
    assert fake.calls[-1]["max_new_tokens"] == 100


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_an_answer_length_over_the_limit_is_refused_naming_the_field_sent(field):
    with running_server(create_app(FakeModel(), ServeSettings(model_id=MODEL, max_tokens_limit=100))) as url:
        with pytest.raises(openai.BadRequestError) as caught:
            client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                **{field: 101})
    assert caught.value.message.endswith(f"{field}=101 is above this server's limit of 100")
    assert caught.value.param == field


def test_the_server_audio_limit_reaches_the_model():
    model = FakeModel()
    model.max_audio_seconds = 1200.0
    create_app(model, ServeSettings(model_id=MODEL, max_audio_seconds=2400))
    assert model.max_audio_seconds == 2400


def closed_within(sock: socket.socket, limit_s: float) -> bytes:
    """What the server sent before closing the connection; fails when it is still open after `limit_s`."""
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except socket.timeout:
        raise AssertionError(f"the connection is still open after {limit_s} s (got {received[:80]!r})") from None
    finally:
        sock.close()
    return received


def test_a_body_that_never_finishes_gets_408_and_the_connection_closes():
    settings = ServeSettings(model_id=MODEL, request_timeout_s=0.5)
    with running_server(create_app(FakeModel(), settings)) as url:
        whole = chat_request_bytes({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        started = time.monotonic()
        answer = closed_within(raw_connection(url, whole[:-10]), 5)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer
        assert time.monotonic() - started < 3
        closing = whole.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        assert b"HTTP/1.1 200" in closed_within(raw_connection(url, closing), 5)  # a whole body in time is served


def test_connections_that_never_finish_their_headers_are_closed():
    with running_server(create_app(FakeModel(), ServeSettings(model_id=MODEL)), headers_timeout_s=0.5) as url:
        silent = raw_connection(url)
        half = raw_connection(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n")
        assert closed_within(silent, 5) == b"" and closed_within(half, 5) == b""
        # A kept-alive connection is watched again from the first byte of its next request.
        kept = raw_connection(url, b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += kept.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        assert closed_within(kept, 5) == b""


class _WordTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [word for message in messages for word in message["content"].split()]

    def encode(self, text, add_special_tokens=False):
        return text.split()


class _SmallContextModel(FakeModel):
    tokenizer = _WordTokenizer()
    llm_model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=100))


def test_a_request_beyond_the_llm_context_is_refused_naming_the_limit():
    model = _SmallContextModel()
    with running_server(create_app(model, ServeSettings(model_id=MODEL))) as url:
        api = client(url)
        fits = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w " * 90}],
                                           max_tokens=10)
        assert fits.usage.prompt_tokens == 90
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w " * 91}],
                                            max_tokens=10, stream=stream)
            assert "context is 100 tokens" in caught.value.message and "101 (91 in the messages" in caught.value.message
            assert caught.value.code == "context_length_exceeded"
        # Without max_tokens, the default answer length shrinks to what the context leaves.
        api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w " * 95}])
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w " * 100}])
        assert "(100 in the messages' text" in caught.value.message
    assert model.batches == [1, 1]
    assert model.calls[1]["max_new_tokens"] == 5


def test_connections_beyond_the_limit_get_503_at_once():
    with running_server(create_app(FakeModel(), ServeSettings(model_id=MODEL)), max_connections=2) as url:
        slow = [raw_connection(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: "
                                    b"application/json\r\nContent-Length: 1000\r\n\r\n{") for _ in range(2)]
        time.sleep(0.3)  # both uploads are now open, and hold their connections
        refused = httpx.get(f"{url}/health", timeout=10)
        assert refused.status_code == 503
        for sock in slow:
            sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health", timeout=10).status_code != 200:  # the slots come back once they leave
            assert time.monotonic() < deadline
            time.sleep(0.1)
