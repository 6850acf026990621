"""The web demo's HTTP API (what a script, not the page, can send): the API key, server-side files, timeouts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from desta_audio.serve.api import ServeSettings, create_app
from desta_audio.serve.demo import NOT_UPLOADED, mount_demo
from tests.serve.helpers import FakeModel, FakeReply, StreamingFakeModel, TokenLoopChat, running_server, tone_wav
from tests.serve.test_demo_browser import launch

pytest.importorskip("gradio")


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def ask(base: str, question: str, clips: list[dict] | None = None, **request) -> tuple[str, object]:
    """Call the demo's `ask` event; returns its last event's kind and data."""
    response = httpx.post(f"{base}/gradio_api/call/ask", json={"data": [question, clips, None, []]}, **request)
    response.raise_for_status()
    events = httpx.get(f"{base}/gradio_api/call/ask/{response.json()['event_id']}", timeout=60, **request)
    lines = [line for line in events.text.splitlines() if line]
    return lines[-2].removeprefix("event: "), json.loads(lines[-1].removeprefix("data: "))


@pytest.fixture
def mounted():
    app = create_app(StreamingFakeModel(), ServeSettings(model_id="m", api_key="sekret"))
    mount_demo(app)
    with running_server(app) as url:
        yield f"{url}/demo"


def test_with_an_api_key_the_demo_needs_a_login_with_it(mounted):
    refused = httpx.post(f"{mounted}/gradio_api/call/ask", json={"data": ["hello", None, None, []]})
    assert refused.status_code == 401
    assert "API key" in httpx.get(f"{mounted}/config").text  # the login page says what to enter
    assert httpx.post(f"{mounted}/login", data={"username": "me", "password": "wrong"}).status_code == 400
    login = httpx.post(f"{mounted}/login", data={"username": "me", "password": "sekret"})
    assert login.status_code == 200
    kind, data = ask(mounted, "hello", cookies=login.cookies)
    assert kind == "complete" and "last=[hello]" in json.dumps(data)


@pytest.fixture(params=["mounted", "standalone"])
def demo_url(request):
    """The demo in both modes; yields its URL and the conversations that reached the model."""
    if request.param == "standalone":
        asked: list = []
        demo, url = launch(lambda conversation, **hooks: asked.append(conversation))
        yield url.rstrip("/"), asked
        demo.close()
        return
    model = FakeModel()
    app = create_app(model, ServeSettings(model_id="m"))
    mount_demo(app)
    with running_server(app) as url:
        yield f"{url}/demo", model.calls


def test_files_not_uploaded_through_the_page_are_refused_alike(demo_url, tmp_path):
    url, reached_the_model = demo_url
    secret = tmp_path / "secret.wav"
    secret.write_bytes(tone_wav(0.2))
    for path in (str(secret), str(tmp_path / "missing.wav"), "http://127.0.0.1:9/clip.wav"):
        kind, data = ask(url, "what is said?", [file_data(path)])
        assert (kind, data["error"]) == ("error", NOT_UPLOADED)
    assert reached_the_model == []


def test_an_uploaded_file_is_accepted(tmp_path):
    clip = tmp_path / "beep.wav"
    clip.write_bytes(tone_wav(0.5))

    class ClipNames:
        def chat(self, conversations, **generation):
            names = [Path(a["audio"]).name for c in conversations for m in c for a in m.get("audios", [])]
            return [FakeReply(f"clips: {names}", [])]

    app = create_app(ClipNames(), ServeSettings(model_id="m"))
    mount_demo(app)
    with running_server(app) as url:
        uploaded = httpx.post(f"{url}/demo/gradio_api/upload", files={"files": clip.open("rb")}).json()
        kind, data = ask(f"{url}/demo", "what is said?", [file_data(uploaded[0])])
    assert kind == "complete" and "clips: ['beep.wav']" in json.dumps(data)


def test_an_answer_past_the_request_timeout_says_so_and_stops_generating():
    chat = TokenLoopChat(words=5000)
    app = create_app(FakeModel(), ServeSettings(model_id="m", request_timeout_s=0.5), chat=chat)
    mount_demo(app)
    with running_server(app) as url:
        kind, data = ask(f"{url}/demo", "talk for a long time")
        assert kind == "error" and "0.5 s time limit" in data["error"]
        deadline = time.monotonic() + 5
        while chat.stopped_early == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert chat.stopped_early == 1


def test_an_upload_at_an_absurd_sample_rate_is_refused_before_decoding(tmp_path):
    # 1 s of 8-channel silence at 655,350 Hz: a small file that decodes to 5 M samples a second
    clip = tmp_path / "huge.flac"
    sf.write(clip, np.zeros((655_350, 8), np.int16), 655_350, format="FLAC")
    model = FakeModel()
    app = create_app(model, ServeSettings(model_id="m"))
    mount_demo(app)
    with running_server(app) as url:
        uploaded = httpx.post(f"{url}/demo/gradio_api/upload", files={"files": clip.open("rb")}).json()
        kind, data = ask(f"{url}/demo", "what is said?", [file_data(uploaded[0])])
    assert kind == "error" and "655350 Hz is above this server's limit of 192000 Hz" in data["error"]
    assert model.calls == []
