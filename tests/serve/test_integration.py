"""The real server and demo on the real `desta-tiny` model (packaged weights, converted once into the cache)."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from desta_audio.serve.api import ServeSettings, create_app
from tests.serve.helpers import audio_part, running_server

pytestmark = pytest.mark.integration
MODEL = "desta-tiny"
MAX_TOKENS = 24


def speech(folder: Path, name: str, text: str) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt-get install espeak-ng)")
    path = folder / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def model():
    from desta_audio.modeling import DeSTAModel

    return DeSTAModel.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speech")
    return {"weather": speech(folder, "weather", "The weather is sunny and warm today."),
            "numbers": speech(folder, "numbers", "One two three four five.")}


@pytest.fixture(scope="module")
def api(model):
    settings = ServeSettings(model_id=MODEL, max_batch_size=16, batch_window_ms=20)
    with running_server(create_app(model, settings)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(api, content, **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    return api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


def test_audio_question_gets_transcript_and_answer(api, clips):
    reply = ask(api, [audio_part(clips["weather"].read_bytes()), {"type": "text", "text": "What did the speaker say?"}])
    message = reply.choices[0].message
    assert "sunny" in message.model_extra["transcripts"][0].lower()
    assert message.content.strip()
    assert reply.usage.completion_tokens > 0


def test_streaming_equals_the_plain_answer(api, clips):
    content = [audio_part(clips["numbers"].read_bytes()), {"type": "text", "text": "Repeat what you heard."}]
    plain = ask(api, content).choices[0].message
    chunks = [c for c in ask(api, content, stream=True) if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == plain.content
    assert len(pieces) > 1  # token by token
    assert chunks[1].choices[0].delta.model_extra["transcripts"] == plain.model_extra["transcripts"]


def test_concurrent_streams_equal_plain_answers(api, clips):
    questions = ["What did the speaker say?", "Name a primary colour.", "How many words were spoken?"]

    def content(i: int):
        if i == 1:
            return questions[i]
        return [audio_part(clips["weather" if i else "numbers"].read_bytes()), {"type": "text", "text": questions[i]}]

    plain = [ask(api, content(i)).choices[0].message.content for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        streamed = list(pool.map(
            lambda i: "".join(c.choices[0].delta.content or "" for c in ask(api, content(i), stream=True) if c.choices),
            range(3)))
    assert streamed == plain


def test_several_clips_keep_their_order(api, clips):
    content = [{"type": "text", "text": "First clip:"}, audio_part(clips["numbers"].read_bytes()),
               {"type": "text", "text": "Second clip:"}, audio_part(clips["weather"].read_bytes()),
               {"type": "text", "text": "Which clip talks about the weather?"}]
    transcripts = ask(api, content).choices[0].message.model_extra["transcripts"]
    assert len(transcripts) == 2
    assert "weather" not in transcripts[0].lower() and "weather" in transcripts[1].lower()


def test_multi_turn_and_text_only(api, model, clips):
    messages = [{"role": "user", "content": [audio_part(clips["weather"].read_bytes()),
                                             {"type": "text", "text": "What did the speaker say?"}]},
                {"role": "assistant", "content": "The speaker talked about the weather."},
                {"role": "user", "content": "Answer in one word: was it about rain or sun?"}]
    reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content.strip()
    text_only = ask(api, "Name a primary colour.").choices[0].message.content
    direct = model.chat([[{"role": "user", "content": "Name a primary colour."}]], max_new_tokens=MAX_TOKENS)[0].text
    assert text_only == direct


def test_32_concurrent_clients_match_single_requests(api, clips):
    questions = ["What did the speaker say?", "Is the speaker male or female?", "Summarise the clip.",
                 "How many words were spoken?"]

    def request(i: int):
        clip = clips["weather" if i % 2 else "numbers"].read_bytes()
        if i % 4 == 3:  # a text-only request among the audio ones
            return f"Write the number {i} in words."
        return [audio_part(clip), {"type": "text", "text": questions[i % len(questions)]}]

    def answer(i: int) -> str:
        return ask(api, request(i)).choices[0].message.content

    single = [answer(i) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(answer, [i % 8 for i in range(32)]))
    assert together == [single[i % 8] for i in range(32)]


def test_malformed_audio_is_refused(api):
    with pytest.raises(openai.BadRequestError, match="cannot decode"):
        ask(api, [audio_part(b"RIFF\x00\x00garbage")])


def test_demo_in_chromium_answers_like_the_model(model, clips, tmp_path):
    from tests.serve.test_demo_browser import CHROMIUM, CHROMIUM_ARGS, artifacts_dir, ask_in_page, launch

    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium")
    from playwright.sync_api import sync_playwright

    from desta_audio.serve.demo import model_answer_function

    question = "What did the speaker say?"
    conversation = [{"role": "user", "content": f"<|AUDIO|>\n{question}",
                     "audios": [{"audio": str(clips["weather"]), "text": None}]}]
    expected = model.chat([conversation], max_new_tokens=MAX_TOKENS)[0]
    demo, url = launch(model_answer_function(model, max_new_tokens=MAX_TOKENS))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            ask_in_page(page, question, [clips["weather"]], expected.text.splitlines()[0][:60])
            page.screenshot(path=str(artifacts_dir() / "demo-desta-tiny.png"), full_page=True)
            assert "weather" in page.locator("#transcripts").inner_text().lower()
            browser.close()
    finally:
        demo.close()
