"""The model core on real packaged weights (desta-tiny: Whisper-base + SmolLM2-135M-Instruct)."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import tone

pytestmark = [pytest.mark.integration]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def desta_tiny():
    from desta_audio.modeling import DeSTAModel

    return DeSTAModel.from_pretrained("desta-tiny")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "spoken.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path),
                    "The quick brown fox jumps over the lazy dog."], check=True)
    return path


def words(text):
    return {w.strip(".,!?").lower() for w in text.split()}


@needs_espeak
def test_real_speech_is_transcribed_and_answered(desta_tiny, spoken):
    import logging

    warned: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        reply = desta_tiny.ask([str(spoken)], "What did the speaker say?", max_new_tokens=32)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert {"quick", "brown", "fox", "lazy", "dog"} <= words(reply.transcripts[0])
    assert reply.text.strip()
    # Whisper's generate() warns about its own internals on every call; library users must not see that.
    assert [r.getMessage() for r in warned] == []


@needs_espeak
def test_batch_with_speech_tone_and_text_only(desta_tiny, spoken):
    conversations = [
        [{"role": "user", "content": "<|AUDIO|>\nRepeat what was said.", "audios": [{"audio": str(spoken)}]}],
        [{"role": "user", "content": "<|AUDIO|>\nWhat is this sound?", "audios": [{"audio": tone(2.0)}]}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    batched = desta_tiny.chat(conversations, max_new_tokens=16)
    assert "fox" in words(batched[0].transcripts[0])
    assert batched[1].transcripts == [" "]  # VAD: no speech in a pure tone
    assert batched[2].transcripts == []
    single = [desta_tiny.chat([c], max_new_tokens=16)[0] for c in conversations]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]


def desta_cli(*arguments, **run):
    return subprocess.run([sys.executable, "-m", "desta_audio.cli", *arguments], capture_output=True, text=True,
                          timeout=300, **run)


@needs_espeak
def test_cli_ask_json_and_streamed_answers_agree(spoken):
    question = [str(spoken), "What was said?", "--model", "desta-tiny", "--max-new-tokens", "16"]
    result = desta_cli("ask", *question, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert "fox" in words(payload["transcripts"][0]) and payload["answer"]
    assert {"model_load_s", "encode_s", "asr_s", "generate_s"} <= set(payload["timings"])
    streamed = desta_cli("ask", *question)  # text mode prints the answer as it is generated
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == payload["answer"] + "\n"


def test_cli_ask_rejects_bad_audio_before_loading(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = subprocess.run([sys.executable, "-m", "desta_audio.cli", "ask", str(bad), "What?", "--model",
                             "desta-tiny"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bad.wav: cannot decode as audio" in result.stderr and "Traceback" not in result.stderr


@needs_espeak
def test_cli_chat_multi_turn(spoken, tmp_path):
    second = tmp_path / "second clip.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(second), "Seven green bottles."], check=True)
    script = (f"/audio {spoken}\nWhat was said?\nSay it again in one word.\n"
              f"/audio '{second}'\nAnd in this clip?\n/quit\n")
    result = desta_cli("chat", "--model", "desta-tiny", "--max-new-tokens", "12", input=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("desta> ") == 3
    transcripts = [line for line in result.stderr.splitlines() if line.startswith("(transcript of")]
    assert len(transcripts) == 2  # each clip is transcribed once, when it is attached
    assert transcripts[0].startswith("(transcript of spoken.wav:") and "fox" in transcripts[0].lower()
    assert transcripts[1].startswith("(transcript of second clip.wav:") and "bottles" in transcripts[1].lower()
