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


@needs_espeak
def test_cli_ask_json(spoken):
    result = subprocess.run([sys.executable, "-m", "desta_audio.cli", "ask", str(spoken), "What was said?",
                             "--model", "desta-tiny", "--json", "--max-new-tokens", "16"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert "fox" in words(payload["transcripts"][0]) and payload["answer"]
    assert {"model_load_s", "encode_s", "asr_s", "generate_s"} <= set(payload["timings"])


def test_cli_ask_rejects_bad_audio_before_loading(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = subprocess.run([sys.executable, "-m", "desta_audio.cli", "ask", str(bad), "What?", "--model",
                             "desta-tiny"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bad.wav: cannot decode as audio" in result.stderr and "Traceback" not in result.stderr


@needs_espeak
def test_cli_chat_multi_turn(spoken):
    script = f"/audio {spoken}\nWhat was said?\nSay it again in one word.\n/quit\n"
    result = subprocess.run([sys.executable, "-m", "desta_audio.cli", "chat", "--model", "desta-tiny",
                             "--max-new-tokens", "12"], input=script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("desta> ") == 2
    assert "transcript of spoken.wav" in result.stderr and "fox" in result.stderr.lower()
