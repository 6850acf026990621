"""`desta ask` and `desta chat`: bad settings and model references fail up front in one line (exit 2), and the
audio limit given on the command line reaches the model."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from typer.testing import CliRunner

from desta_audio import cli_ask
from desta_audio.audio import SAMPLE_RATE
from desta_audio.modeling import DeSTAModel
from tests.conftest import tone
from tests.test_modeling import stub_encoder
from tests.tiny import tiny_model

app = typer.Typer()
cli_ask.register(app)


def run(*arguments, stdin=None):
    return CliRunner().invoke(app, [str(a) for a in arguments], input=stdin)


def assert_one_line_error(result, expected):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def command(name, clip, *options):
    """The same options for either command; ask also takes a clip and a question."""
    return ("ask", clip, "What is this?", *options) if name == "ask" else ("chat", *options)


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(1.0), SAMPLE_RATE)
    return path


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    """The hub as on a machine without network: nothing cached, downloads refused."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.fixture()
def no_loading(monkeypatch):
    monkeypatch.setattr(DeSTAModel, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize("name", ["ask", "chat"])
@pytest.mark.parametrize("options,expected", [
    (["--max-new-tokens", "0"], "max_new_tokens (--max-new-tokens) must be a whole number of at least 1"),
    (["--sample", "--temperature", "-1"], "temperature (--temperature) must be above 0"),
    (["--sample", "--top-p", "2"], "top_p (--top-p) must be above 0 and at most 1"),
    (["--max-audio-seconds", "0"], "--max-audio-seconds must be above 0"),
    (["--sample", "--seed", str(2**64)], "--seed must fit in 64 bits"),
])
def test_bad_settings_fail_before_loading(no_loading, clip, name, options, expected):
    assert_one_line_error(run(*command(name, clip, *options), stdin=""), expected)


@pytest.mark.parametrize("size", ["inf", "nan", "-1"])
def test_a_bad_audio_cache_size_fails_before_loading(no_loading, size):
    assert_one_line_error(run("chat", "--audio-cache-mb", size, stdin=""), "--audio-cache-mb must be a size in MB")


@pytest.mark.parametrize("name", ["ask", "chat"])
def test_bad_model_references_fail_in_one_line(offline_hub, clip, tmp_path, name):
    (tmp_path / "empty").mkdir()
    cases = {
        "nonexistent-model": "nonexistent-model: not a preset (desta-mini, desta-tiny",
        str(tmp_path / "no" / "such" / "folder"): "folder: no such folder",
        str(tmp_path / "empty"): "empty: no config.json",
        "foo/bar": "foo/bar: the download from the Hugging Face hub failed",
        "": "the model name is empty",
        # A preset's hub adapter is not a mistyped name: the error says which preset needs the network.
        "desta2.5-llama3.1-8b": "preset desta2.5-llama3.1-8b: DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B: the download",
    }
    for model, expected in cases.items():
        assert_one_line_error(run(*command(name, clip, "--model", model), stdin=""), expected)


def test_a_component_only_on_the_hub_fails_in_one_line_offline(offline_hub, clip, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "config.json").write_text(json.dumps({"encoder_model_id": "openai/whisper-tiny",
                                                     "llm_model_id": "openai/some-llm"}))
    assert_one_line_error(run(*command("ask", clip, "--model", adapter)),
                          "openai/whisper-tiny: not in the local cache, and the Hugging Face hub download failed")


def test_a_damaged_converted_model_names_the_command_that_rebuilds_it(clip, tmp_path, monkeypatch):
    from desta_audio import zoo

    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    (zoo.models_dir() / "smollm2-135m-instruct").mkdir(parents=True)
    folder = zoo.models_dir() / "whisper-base"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "whisper"')  # cut short after its marker checked out
    monkeypatch.setattr(zoo, "prepare_packaged", lambda name, **_: zoo.models_dir() / name)
    result = run("ask", clip, "What is this?", "--model", "desta-tiny")
    assert_one_line_error(result, f"{folder}: cannot load this converted model (")
    assert "run `desta models prepare whisper-base` to check and convert it again" in result.stderr


@pytest.mark.parametrize("name", ["ask", "chat"])
def test_bad_devices_fail_in_one_line(no_loading, clip, name):
    assert_one_line_error(run(*command(name, clip, "--device", "bogus"), stdin=""), "device 'bogus' is not one of")
    if not torch.cuda.is_available():
        assert_one_line_error(run(*command(name, clip, "--device", "cuda"), stdin=""),
                              "device 'cuda': this machine's torch has no usable cuda device")


@pytest.fixture()
def long_clip(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(21 * 60 * SAMPLE_RATE, np.int16), SAMPLE_RATE)  # 21 minutes, past the default limit
    return path


@pytest.fixture()
def tiny_loaded(monkeypatch):
    """`--model` loads a tiny random model (its encoder pass skipped: these tests are about the limit)."""
    model = tiny_model()
    stub_encoder(model, monkeypatch)
    monkeypatch.setattr(DeSTAModel, "from_pretrained", lambda *a, **k: model)
    return model


def test_ask_raises_the_audio_limit_end_to_end(tiny_loaded, long_clip):
    result = run("ask", long_clip, "What?", "--max-audio-seconds", "2000", "--max-new-tokens", "2", "--no-stream")
    assert result.exit_code == 0, result.output
    assert tiny_loaded.max_audio_seconds == 2000
    refused = run("ask", long_clip, "What?", "--max-new-tokens", "2")
    assert_one_line_error(refused, "long.wav: 1260.0 s is longer than the 1200 s limit")


def test_chat_raises_the_audio_limit_end_to_end(tiny_loaded, long_clip):
    result = run("chat", "--max-audio-seconds", "2000", "--max-new-tokens", "2", "--no-stream",
                 stdin=f"/audio {long_clip}\nWhat is it?\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "(attached long.wav)" in result.stderr and "error" not in result.stderr
    assert result.stdout.count("desta> ") == 1


def scripted_input(monkeypatch, *lines):
    """What the user types at each `you>` prompt; an exception class is raised there instead (Ctrl-C, Ctrl-D),
    and the script ends with Ctrl-D."""
    queue = list(lines)

    def typed(prompt=""):
        item = queue.pop(0) if queue else EOFError
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    monkeypatch.setattr("builtins.input", typed)


def test_chat_commands_are_answered_without_the_model(tiny_loaded, monkeypatch):
    monkeypatch.setattr(tiny_loaded, "chat", lambda *a, **k: pytest.fail("a command reached the model"))
    scripted_input(monkeypatch, "/help", "/hlep", "/audio", "/system Be brief.", "/system")
    result = run("chat", "--no-stream")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("/help shows this") == 2  # at the start and for /help
    assert "error: unknown command /hlep; the commands are /audio, /system, /reset, /help, /quit" in result.stderr
    assert "error: give the clips to attach: /audio PATH [PATH...]" in result.stderr
    assert "(system prompt set)" in result.stderr and "(system prompt: the model's own)" in result.stderr
    assert "desta>" not in result.stdout


def test_chat_keeps_the_conversation_through_interruptions(tiny_loaded, monkeypatch, clip, tmp_path):
    second = tmp_path / "second.wav"
    sf.write(second, tone(2.0, 880), SAMPLE_RATE)
    asked: list[list[tuple[str, str, int]]] = []  # per model call: (role, content, clips) of each message
    answer = tiny_loaded.chat

    def chat(conversations, **settings):
        asked.append([(m["role"], m["content"], len(m.get("audios") or [])) for m in conversations[0]])
        if len(asked) == 2:  # Ctrl-C while the second answer is being generated
            raise KeyboardInterrupt
        return answer(conversations, **settings)

    monkeypatch.setattr(tiny_loaded, "chat", chat)
    scripted_input(monkeypatch, f"/audio {clip}", "What is this?", KeyboardInterrupt, f"/audio {second}",
                   "And this?", "Place them: <|AUDIO|> <|AUDIO|>", "And this, again?")
    result = run("chat", "--no-stream", "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert "(Ctrl-D or /quit leaves)" in result.stderr  # Ctrl-C at the prompt: the session goes on
    assert "(stopped; the turn is dropped; 1 clip(s) still attached to your next message)" in result.stderr
    assert "error: your message has 2 <|AUDIO|> but 1 clip(s) are attached" in result.stderr
    first_turn = [("user", "<|AUDIO|>\nWhat is this?", 1)]
    assert asked[0] == first_turn
    assert asked[2][:1] == first_turn and asked[2][1][0] == "assistant"
    assert asked[2][2] == ("user", "<|AUDIO|>\nAnd this, again?", 1)  # the clip stayed attached
    assert len(asked) == 3 and result.stdout.count("desta> ") == 2


def test_chat_expands_a_home_folder_in_attached_paths(tiny_loaded, monkeypatch, clip):
    monkeypatch.setenv("HOME", str(clip.parent))
    monkeypatch.setattr(tiny_loaded, "chat", lambda *a, **k: pytest.fail("a command reached the model"))
    scripted_input(monkeypatch, "/audio ~/clip.wav")
    result = run("chat", "--no-stream")
    assert result.exit_code == 0, result.output
    assert "(attached clip.wav)" in result.stderr and "error" not in result.stderr


def test_ask_checks_the_question_s_audio_places_before_loading(no_loading, clip):
    result = run("ask", clip, clip, "Compare <|AUDIO|> with the other.")
    assert_one_line_error(result, "the question has 1 <|AUDIO|> for 2 audio file(s); put one <|AUDIO|> per file")


def test_ask_without_a_question_does_not_take_the_last_clip_as_one(no_loading, clip):
    assert_one_line_error(run("ask", clip, clip), f"the last argument, {clip}, is a file, but it is taken as the "
                          "question")


def test_ctrl_c_while_a_clip_is_attached_keeps_the_session(tiny_loaded, monkeypatch, clip, tmp_path):
    from desta_audio import audio

    slow = tmp_path / "slow.wav"
    sf.write(slow, tone(1.0), SAMPLE_RATE)
    load = audio.load_audio

    def interrupted(path, *args, **kwargs):  # Ctrl-C while a long clip is being decoded
        if str(path) == str(slow):
            raise KeyboardInterrupt
        return load(path, *args, **kwargs)

    monkeypatch.setattr(audio, "load_audio", interrupted)
    asked = []
    monkeypatch.setattr(tiny_loaded, "chat", lambda conversations, **_: asked.append(conversations) or
                        [type("Reply", (), {"text": "ok"})()])
    scripted_input(monkeypatch, f"/audio {clip}", f"/audio {slow}", "What is it?")
    result = run("chat", "--no-stream")
    assert result.exit_code == 0, result.output
    assert "(stopped attaching; 1 clip(s) attached to your next message)" in result.stderr
    assert len(asked) == 1 and len(asked[0][0][-1]["audios"]) == 1


def test_ask_stops_generating_once_its_reader_has_gone(tiny_loaded, monkeypatch, clip):
    written = []

    def closed_after_one(text):  # `desta ask ... | head -c 20`: the pipe closes after the first piece
        if written:
            raise BrokenPipeError(32, "Broken pipe")
        written.append(text)

    monkeypatch.setattr(cli_ask, "_print_streamed", closed_after_one)
    replies = []
    answer = tiny_loaded.chat
    monkeypatch.setattr(tiny_loaded, "chat", lambda *a, **k: replies.extend(answer(*a, **k)) or replies)
    result = run("ask", clip, "What is this?", "--max-new-tokens", "40")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(written) == 1 and len(replies[0].token_ids) < 10
