import pytest

from desta_audio.processing import (
    IGNORE_INDEX,
    ConversationEncoder,
    ConversationError,
    audio_refs,
    collate,
    mark_audio,
)
from tests.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def encoder():
    return ConversationEncoder(tiny_tokenizer(), system_prompt="Focus on the audio clips and instructions.",
                               placeholder_id=0)


def user(content, *audios):
    return {"role": "user", "content": content, "audios": [{"audio": a, "text": None} for a in audios]}


def test_locators_must_match_audios():
    with pytest.raises(ConversationError, match="1 <\\|AUDIO\\|> locator\\(s\\) but 2 audio"):
        audio_refs([user("<|AUDIO|> hi", "a.wav", "b.wav")])
    with pytest.raises(ConversationError, match="'content' must be a string"):
        audio_refs([{"role": "user", "content": None}])
    refs = audio_refs([user("<|AUDIO|> and <|AUDIO|>", "a.wav", "b.wav"), user("<|AUDIO|>", "c.wav")])
    assert [r.audio for r in refs] == ["a.wav", "b.wav", "c.wav"]


def test_audio_entries_take_a_rate_and_refuse_unknown_keys():
    refs = audio_refs([{"role": "user", "content": "<|AUDIO|>",
                        "audios": [{"audio": "a.wav", "text": None, "sampling_rate": 22050}]}])
    assert refs[0].sample_rate == 22050
    with pytest.raises(ConversationError, match=r"unknown audio key\(s\) \['sample_rate'\]; .*'sampling_rate'"):
        audio_refs([{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": "a.wav", "sample_rate": 8000}]}])


def test_audio_entries_must_be_a_list_with_string_transcripts():
    with pytest.raises(ConversationError, match="message 0: 'audios' must be a list .* got dict"):
        audio_refs([{"role": "user", "content": "<|AUDIO|>", "audios": {"audio": "a.wav"}}])
    with pytest.raises(ConversationError, match="message 0: an audio's 'text' must be its transcript .* got int"):
        audio_refs([{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": "a.wav", "text": 5}]}])
    refs = audio_refs([{"role": "user", "content": "<|AUDIO|><|AUDIO|>", "audios": ("a.wav", "b.wav")}])
    assert [r.audio for r in refs] == ["a.wav", "b.wav"]


def test_markers_wrap_bare_locators_once():
    assert mark_audio("x <|AUDIO|> y") == "x <start_audio><|AUDIO|><end_audio> y"
    assert mark_audio("<start_audio><|AUDIO|><end_audio>") == "<start_audio><|AUDIO|><end_audio>"


def test_audio_slots_hold_placeholders_then_transcript(encoder):
    tokenizer = encoder.tokenizer
    transcript = tokenizer.encode("hello world", add_special_tokens=False)
    encoded = encoder.encode([user("<|AUDIO|>\ndescribe", "a.wav")], [8], [transcript])
    (start, size), = encoded.audio_slots
    assert size == 8
    assert encoded.input_ids[start:start + 8] == [0] * 8
    assert encoded.input_ids[start + 8:start + 8 + len(transcript)] == transcript
    text = tokenizer.decode(encoded.input_ids[:start])
    assert text.endswith("<start_audio>") and "Focus on the audio clips" in text
    after = tokenizer.decode(encoded.input_ids[start + 8 + len(transcript):])
    assert after.startswith("<end_audio>") and after.endswith("<|im_start|>assistant\n")


def test_training_labels_cover_each_assistant_turn_and_its_end_token(encoder):
    tokenizer = encoder.tokenizer
    conversation = [user("<|AUDIO|> what", "a.wav"), {"role": "assistant", "content": "yes"},
                    user("and <|AUDIO|>?", "b.wav"), {"role": "assistant", "content": "no maybe"}]
    encoded = encoder.encode(conversation, [4, 4], [[], []], for_training=True)
    supervised = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert supervised == (tokenizer.encode("yes", add_special_tokens=False) + [end]
                          + tokenizer.encode("no maybe", add_special_tokens=False) + [end])
    assert all(label == IGNORE_INDEX or label == token for token, label in zip(encoded.input_ids, encoded.labels))
    with pytest.raises(ConversationError, match="must end with an assistant"):
        encoder.encode([user("hi")], [], [], for_training=True)


def test_no_double_bos_with_a_bos_template():
    from transformers import PreTrainedTokenizerFast

    base = tiny_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}"
                                                      "<|im_end|>{% endfor %}")
    encoder = ConversationEncoder(tokenizer, system_prompt=None, placeholder_id=0)
    ids = encoder.encode([user("hello <|AUDIO|>", "a.wav")], [2], [[]]).input_ids
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_collate_left_pads_and_keeps_audio_order(encoder):
    short = encoder.encode([user("<|AUDIO|>", "a.wav")], [3], [[]])
    long = encoder.encode([user("<|AUDIO|> and <|AUDIO|> describe both", "a.wav", "b.wav")], [3, 5], [[], []])
    batch = collate([short, long], pad_id=7)
    assert batch.input_ids.shape[1] == len(long.input_ids)
    pad = len(long.input_ids) - len(short.input_ids)
    assert batch.attention_mask[0, :pad].sum() == 0 and batch.attention_mask[0, pad:].all()
    assert batch.audio_mask.sum(1).tolist() == [3, 8]
    assert batch.labels is None
