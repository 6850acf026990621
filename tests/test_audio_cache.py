import numpy as np
import pytest
import torch

from desta_audio.audio_cache import AudioCache
from tests.conftest import tone
from tests.tiny import tiny_model


def ask(content, *audios, text=None):
    return [{"role": "user", "content": content, "audios": [{"audio": a, "text": text} for a in audios]}]


@pytest.fixture()
def model():
    model = tiny_model()
    model.enable_audio_cache(64)
    return model


@pytest.fixture()
def encoder_calls(model):
    calls = []
    handle = model.perception.encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    yield calls
    handle.remove()


@pytest.fixture()
def fake_asr(model, monkeypatch):
    """ASR on (no VAD), with a fake Whisper decode that records how many windows it was given."""
    heard = []

    def transcribe(encoder_states):
        heard.append(len(encoder_states))
        return [f"words {len(heard)}"] * len(encoder_states)

    model.use_asr = True
    monkeypatch.setattr(model, "transcribe_windows", transcribe)
    return heard


def test_a_clip_sent_again_skips_the_encoder_and_answers_the_same(model, encoder_calls):
    reference = tiny_model()  # same weights, no cache
    turn = ask("<|AUDIO|>\nwhat did the speaker say", tone(3.0), text="hello")
    first = model.chat([turn], max_new_tokens=8)[0]
    assert encoder_calls == [1]
    follow_up = turn + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "and then"}]
    second = model.chat([follow_up, ask("<|AUDIO|>", tone(3.0), text="hello")], max_new_tokens=8)
    assert encoder_calls == [1]  # both rows found the clip
    assert model.audio_cache.hits == 1 and model.audio_cache.misses == 1  # one look-up per distinct clip
    expected = reference.chat([follow_up, ask("<|AUDIO|>", tone(3.0), text="hello")], max_new_tokens=8)
    assert [r.token_ids for r in second] == [r.token_ids for r in expected]


def test_only_new_clips_of_a_batch_are_encoded(model, encoder_calls):
    model.chat([ask("<|AUDIO|>", tone(2.0, 220), text="a")], max_new_tokens=2)
    model.chat([ask("<|AUDIO|> <|AUDIO|>", tone(2.0, 220), tone(31.0, 880), text="a")], max_new_tokens=2)
    assert encoder_calls == [1, 1, 1]  # the second call encoded only the 31 s clip's two windows


def test_transcripts_are_kept_and_the_callers_still_win(model, encoder_calls, fake_asr):
    clip = tone(2.0)
    assert model.chat([ask("<|AUDIO|>", clip, text="mine")], max_new_tokens=2)[0].transcripts == ["mine"]
    assert fake_asr == []
    # Tokens are known but no ASR transcript yet: the clip is worked on again, this time with ASR.
    assert model.chat([ask("<|AUDIO|>", clip)], max_new_tokens=2)[0].transcripts == ["words 1"]
    assert fake_asr == [1] and len(encoder_calls) == 2
    assert model.chat([ask("<|AUDIO|>", clip)], max_new_tokens=2)[0].transcripts == ["words 1"]
    assert model.chat([ask("<|AUDIO|>", clip, text="other")], max_new_tokens=2)[0].transcripts == ["other"]
    assert fake_asr == [1] and len(encoder_calls) == 2


def test_changed_weights_empty_the_cache(model, encoder_calls):
    conversation = ask("<|AUDIO|>", tone(2.0), text="x")
    with torch.inference_mode():
        before = model.build_batch([conversation])[1]
        model.build_batch([conversation])
        assert len(encoder_calls) == 1
    with torch.no_grad():  # what an optimizer step or a loaded adapter does
        for parameter in model.connector.parameters():
            parameter.add_(0.01)
    with torch.inference_mode():
        after = model.build_batch([conversation])[1]
    assert len(encoder_calls) == 2
    assert not torch.allclose(before, after)


def test_training_never_reads_or_fills_the_cache(model, encoder_calls):
    conversation = ask("<|AUDIO|>", tone(2.0), text="x")
    model.chat([conversation], max_new_tokens=2)
    record = conversation + [{"role": "assistant", "content": "a tone"}]
    _, tokens, _ = model.build_batch([record], for_training=True)  # gradients enabled
    assert tokens.requires_grad and len(encoder_calls) == 2
    assert model.audio_cache.hits == 0


def test_zero_megabytes_turns_it_off(model, encoder_calls):
    model.enable_audio_cache(0)
    assert model.audio_cache is None
    for _ in range(2):
        model.chat([ask("<|AUDIO|>", tone(2.0), text="x")], max_new_tokens=2)
    assert len(encoder_calls) == 2


def test_least_recently_used_entries_go_first_within_the_byte_budget():
    entry = torch.zeros(100, dtype=torch.float32)  # 400 bytes
    cache = AudioCache(1000)
    cache.put("a", entry, "ta")
    cache.put("b", entry, None)
    assert cache.get("a").transcript == "ta"  # a is now the most recent
    cache.put("c", entry, "tc")
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and cache.nbytes <= 1000
    cache.put("a", entry, None)  # tokens again without a transcript keep the earlier transcript
    assert cache.get("a").transcript == "ta"
    cache.put("huge", torch.zeros(1000), "t")  # over the whole budget: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2
    with pytest.raises(ValueError, match="positive size"):
        AudioCache(0)


def test_the_key_is_the_waveform():
    audio = tone(1.0)
    assert AudioCache.key(audio) == AudioCache.key(audio.copy()) == AudioCache.key(audio.astype(np.float64))
    assert AudioCache.key(audio) != AudioCache.key(audio[:-1])
    changed = audio.copy()
    changed[100] += 1e-3
    assert AudioCache.key(audio) != AudioCache.key(changed)


def test_a_clip_repeated_within_one_call_is_worked_on_once(model, encoder_calls, fake_asr):
    clip = tone(2.0)
    replies = model.chat([ask("<|AUDIO|> <|AUDIO|>", clip, clip), ask("<|AUDIO|>", clip, text="given")],
                         max_new_tokens=2)
    assert encoder_calls == [1] and fake_asr == [1]
    assert [r.transcripts for r in replies] == [["words 1", "words 1"], ["given"]]
