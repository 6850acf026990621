import numpy as np
import pytest

from desta_audio.eval.records import AudioRef, EvalItem, audio_message, read_jsonl, text_message
from desta_audio.eval.runner import run_inference
from desta_audio.eval.systems import Cascade, TextBackbone

from tests.tiny import tiny_llm, tiny_tokenizer


@pytest.fixture(scope="module")
def backbone():
    tokenizer = tiny_tokenizer()
    return TextBackbone(tiny_llm(len(tokenizer)).eval(), tokenizer, name="tiny")


def test_text_backbone_batched_equals_single(backbone):
    conversations = [text_message("Follow the given instructions.", "Speech Input: hello\n\nRepeat it."),
                     text_message("", "what did the speaker say in the audio clip and why")]
    batched = backbone.chat(conversations, max_new_tokens=6)
    single = [backbone.chat([c], max_new_tokens=6)[0] for c in conversations]
    assert [r.text for r in batched] == [r.text for r in single]
    with pytest.raises(ValueError, match="text-only backbone got a conversation with audio"):
        backbone.chat([audio_message("", "<|AUDIO|>", [np.zeros(160, np.float32)])])


def test_cascade_replaces_audio_with_transcripts(backbone, tmp_path):
    heard = []
    cascade = Cascade(lambda audios: [heard.append(a.shape) or "the dog barks" for a in audios], backbone)
    seen = []
    original = backbone.chat
    backbone.chat = lambda convs, **g: seen.extend(convs) or original(convs, **g)
    item = EvalItem(id="1", conversation=audio_message("sys", "<|AUDIO|>\nWhat animal?",
                                                       [AudioRef(array=np.zeros(8000, np.float32), sample_rate=8000)]))
    out = run_inference(cascade, [item], tmp_path / "c.predictions.jsonl", generation={"max_new_tokens": 3})
    backbone.chat = original
    assert heard == [(16000,)]  # resampled to 16 kHz before ASR
    assert seen[0][1] == {"role": "user", "content": "the dog barks\nWhat animal?"}
    assert read_jsonl(out)[0]["transcripts"] == ["the dog barks"]


def test_cascade_transcribes_a_whole_batch_in_one_call_and_given_text_wins(backbone):
    calls = []

    def transcribe(audios):
        calls.append([a.size for a in audios])
        return [f"clip of {a.size}" for a in audios]

    cascade = Cascade(transcribe, backbone)
    one = audio_message("", "<|AUDIO|> then <|AUDIO|>", [np.zeros(1600, np.float32), np.zeros(3200, np.float32)])
    two = [{"role": "user", "content": "<|AUDIO|> and <|AUDIO|>",
            "audios": [{"audio": np.zeros(4800, np.float32), "text": "known words"},
                       {"audio": np.zeros(6400, np.float32), "text": None}]}]
    replies = cascade.chat([one, two], max_new_tokens=2)
    assert calls == [[1600, 3200, 6400]]  # one call, in order, the clip with a given transcript left out
    assert replies[0].transcripts == ["clip of 1600", "clip of 3200"]
    assert replies[1].transcripts == ["known words", "clip of 6400"]


@pytest.mark.integration
def test_whisper_asr_hears_past_30_seconds_and_batches_like_single_calls(tmp_path):
    import shutil

    from desta_audio import zoo
    from desta_audio.audio import load_audio
    from desta_audio.eval.systems import WhisperASR
    from tests.eval.helpers import write_speech

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    first = load_audio(str(write_speech(tmp_path / "a.wav", "The cat sleeps on the warm sofa.")))
    second = load_audio(str(write_speech(tmp_path / "b.wav", "Tomorrow we travel to London by train.")))
    long_clip = np.concatenate([first, np.zeros(16_000 * 32 - first.size, np.float32), second])  # 2nd after 32 s
    asr = WhisperASR(zoo.resolve_component("whisper-base"))
    batched = asr.transcribe([first, long_clip, second])
    assert batched == [asr(first), asr(long_clip), asr(second)]
    assert "cat" in batched[1].lower() and "london" in batched[1].lower()  # both windows of the long clip


def test_desta_systems_encode_a_clip_shared_by_several_items_once(monkeypatch, tmp_path):
    from desta_audio.eval import systems
    from desta_audio.modeling import DeSTAModel
    from tests.tiny import tiny_model

    monkeypatch.setattr(DeSTAModel, "from_pretrained", classmethod(lambda cls, reference, **_: tiny_model()))
    model = systems.load_desta("tiny")
    encoded = []
    model.perception.encoder.register_forward_hook(lambda _m, inputs, _o: encoded.append(len(inputs[0])))
    clip = (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    items = [EvalItem(id=str(i), conversation=audio_message("sys", f"<|AUDIO|>\nquestion {i}",
                                                            [AudioRef(array=clip, sample_rate=16000)]))
             for i in range(3)]
    run_inference(model, items[:2], tmp_path / "a.predictions.jsonl", generation={"max_new_tokens": 2}, batch_size=1)
    run_inference(model, items[2:], tmp_path / "b.predictions.jsonl", generation={"max_new_tokens": 2})
    assert encoded == [1]  # three items, one 30 s window encoded


def test_a_desta_run_manifest_describes_the_model(monkeypatch, tmp_path):
    import json

    from desta_audio.eval import systems
    from desta_audio.eval.runner import manifest_path
    from desta_audio.modeling import DeSTAModel
    from tests.tiny import tiny_model

    monkeypatch.setattr(DeSTAModel, "from_pretrained", classmethod(lambda cls, reference, **_: tiny_model()))
    model = systems.load_desta("desta-tiny")
    item = EvalItem(id="0", conversation=audio_message("sys", "<|AUDIO|>\nq", [
        AudioRef(array=np.zeros(1600, np.float32), sample_rate=16000)]))
    out = run_inference(model, [item], tmp_path / "d.predictions.jsonl", generation={"max_new_tokens": 1})
    described = json.loads(manifest_path(out).read_text())["system"]
    config = model.config
    assert described["kind"] == "desta" and described["model"] == "desta-tiny"
    assert described["dtype"] == "float32" and described["asr"] == model.use_asr
    assert described["encoder"]["id"] == config.encoder_model_id and described["llm"]["id"] == config.llm_model_id
    assert described["adapter"]["taps"] == model.perception.tap_layers
    assert described["adapter"]["qformer_layers"] == config.qformer_num_hidden_layers
    assert described["adapter"]["prompt_size"] == config.prompt_size

