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
    cascade = Cascade(lambda audio: heard.append(audio.shape) or "the dog barks", backbone)
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
