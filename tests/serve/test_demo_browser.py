"""The web demo in a real headless Chromium: upload clips, ask, read the answer and transcripts, follow up."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from desta_audio.audio import load_audio
from tests.serve.helpers import FakeReply, free_port, tone_wav

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("DESTA_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts" / "tests"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ClipCounter:
    """Answers with what reached it: the number of turns, the clips' lengths, the question."""

    def __init__(self) -> None:
        self.conversations: list[list[dict]] = []

    def __call__(self, conversation: list[dict], on_text=None, on_start=None) -> FakeReply:
        self.conversations.append(conversation)
        clips = [audio["audio"] for message in conversation for audio in message.get("audios", [])]
        seconds = [round(load_audio(clip).size / 16_000, 2) for clip in clips]
        question = conversation[-1]["content"].split("\n")[-1]
        turns = sum(message["role"] == "user" for message in conversation)
        reply = FakeReply(f"Turn {turns}: {len(clips)} clips of {seconds} s; you asked '{question}'.",
                          [f"words of clip {i + 1}" for i in range(len(clips))])
        if on_start is not None:
            on_start(reply.transcripts)
        for start in range(0, len(reply.text), 8) if on_text is not None else ():
            on_text(reply.text[start:start + 8])
        return reply


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def launch(answer) -> tuple[object, str]:
    from desta_audio.serve.demo import build_demo, theme

    demo = build_demo(answer)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, theme=theme())
    return demo, f"http://127.0.0.1:{port}/"


def ask_in_page(page, question: str, clips: list[Path], expected: str) -> None:
    from playwright.sync_api import expect

    if clips:
        page.locator("#clips input[type=file]").set_input_files([str(c) for c in clips])
        # uploaded files are listed with their sizes once the upload finished
        for clip in clips:
            expect(page.locator("#clips")).to_contain_text(clip.stem, timeout=30_000)
        expect(page.locator("#clips")).to_contain_text("KB", timeout=30_000)
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    page.locator("#conversation").get_by_text(expected).wait_for(timeout=60_000)


def test_upload_ask_and_follow_up(browser, tmp_path):
    one, two = tmp_path / "one.wav", tmp_path / "two.wav"
    one.write_bytes(tone_wav(1.0))
    two.write_bytes(tone_wav(0.5, 300.0))
    answer = ClipCounter()
    demo, url = launch(answer)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="domcontentloaded")
        expected = "Turn 1: 2 clips of [1.0, 0.5] s; you asked 'Which clip is longer?'."
        ask_in_page(page, "Which clip is longer?", [one, two], expected)
        transcripts = page.locator("#transcripts").inner_text()
        assert "one.wav" in transcripts and "words of clip 2" in transcripts

        follow_up = "Turn 2: 2 clips of [1.0, 0.5] s; you asked 'And the pitch?'."
        ask_in_page(page, "And the pitch?", [], follow_up)
        page.screenshot(path=str(artifacts_dir() / "demo-fake-model.png"), full_page=True)
        assert page.locator("#conversation").get_by_text(expected).count() == 1  # history stays on the page
        assert [m["role"] for m in answer.conversations[-1]] == ["user", "assistant", "user"]
    finally:
        demo.close()


def test_the_answer_streams_onto_the_page(browser):
    from playwright.sync_api import expect

    halfway = threading.Event()

    def answer(conversation, on_text=None, on_start=None):
        on_start([])
        on_text("The first half of the answer,")
        assert halfway.wait(timeout=60), "the page never showed the first half"
        on_text(" then the rest.")
        return FakeReply("The first half of the answer, then the rest.", [])

    demo, url = launch(answer)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="domcontentloaded")
        page.locator("#question textarea").fill("Tell me something.")
        page.locator("#ask").click()
        expect(page.locator("#conversation")).to_contain_text("The first half of the answer,", timeout=60_000)
        assert "then the rest" not in page.locator("#conversation").inner_text()
        halfway.set()
        expect(page.locator("#conversation")).to_contain_text("answer, then the rest.", timeout=60_000)
    finally:
        halfway.set()
        demo.close()


def test_demo_mounted_next_to_the_api_logs_in_and_answers_through_the_batcher(browser, tmp_path, tiny):
    from desta_audio.serve.api import ServeSettings, create_app
    from desta_audio.serve.demo import mount_demo
    from tests.serve.helpers import running_server

    clip = tmp_path / "beep.wav"
    clip.write_bytes(tone_wav(0.5))
    app = create_app(tiny, ServeSettings(model_id="tiny", api_key="sekret"))
    mount_demo(app, max_new_tokens=12)
    question = "what did the speaker say"
    conversation = [{"role": "user", "content": f"<|AUDIO|>\n{question}", "audios": [{"audio": str(clip), "text": None}]}]
    expected = tiny.chat([conversation], max_new_tokens=12)[0].text
    with running_server(app) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/demo/", wait_until="domcontentloaded")
        # With an API key the demo opens on a login page that takes the key as the password.
        page.locator("input[type=password]").fill("sekret")
        page.locator("input[type=text]").fill("me")
        page.get_by_role("button", name="Login").click()
        page.locator("#clips input[type=file]").set_input_files([str(clip)])
        from playwright.sync_api import expect

        expect(page.locator("#clips")).to_contain_text("KB", timeout=30_000)
        page.locator("#question textarea").fill(question)
        page.locator("#ask").click()
        expect(page.locator("#transcripts")).to_contain_text("beep.wav", timeout=60_000)
        # the answer streams in after the transcripts show
        expect(page.locator("#conversation")).to_contain_text(" ".join(expected.split())[:20], timeout=60_000)
        page.screenshot(path=str(artifacts_dir() / "demo-mounted.png"), full_page=True)
        assert app.state.metrics.batch_size._sum.get() >= 1  # the answer went through the API's batcher
        bot_text = " ".join(page.locator("#conversation").inner_text().split())
        page.close()  # drop the page's open event stream before the server stops
        assert expected.strip() and " ".join(expected.split())[:20] in bot_text
