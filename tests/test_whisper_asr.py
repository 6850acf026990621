import shutil
import subprocess

import pytest
import torch

real_speech = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SENTENCES = {
    "en-us": "The weather in Paris is sunny today.",
    "fr": "Bonjour, je voudrais un café au lait, s'il vous plaît.",
    "de": "Guten Morgen, heute ist das Wetter sehr schön.",
}


@pytest.fixture(scope="module")
def whisper_base():
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from desta_audio import zoo

    folder = str(zoo.resolve_component("whisper-base"))
    return WhisperForConditionalGeneration.from_pretrained(folder).eval(), WhisperProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def encoded(whisper_base, tmp_path_factory):
    from desta_audio.audio import SAMPLE_RATE, load_audio
    from desta_audio.whisper_asr import whisper_encode

    model, processor = whisper_base
    folder = tmp_path_factory.mktemp("speech")
    clips = []
    for voice, text in SENTENCES.items():
        path = folder / f"{voice}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
        clips.append(load_audio(str(path)))
    features = processor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    return whisper_encode(model, features)


@pytest.mark.integration
@real_speech
def test_same_tokens_as_whisper_generate_with_one_key_value_projection(whisper_base, encoded):
    from transformers.modeling_outputs import BaseModelOutput

    from desta_audio.whisper_asr import transcribe_encoded

    model, processor = whisper_base
    projections = []
    hooks = [layer.encoder_attn.k_proj.register_forward_hook(lambda module, args, out: projections.append(out.shape))
             for layer in model.model.decoder.layers]  # fmt: skip
    try:
        with torch.no_grad():
            reference = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), max_new_tokens=64,
                                       do_sample=False, task="transcribe", return_timestamps=False)  # fmt: skip
        assert len(projections) == 2 * len(hooks)  # generate(): once to detect the language, once to decode
        projections.clear()
        heard = transcribe_encoded(model, processor.tokenizer, encoded, max_new_tokens=64)
        assert len(projections) == len(hooks)
    finally:
        for hook in hooks:
            hook.remove()
    expected = [text.strip() for text in processor.batch_decode(reference, skip_special_tokens=True)]
    assert [h.text for h in heard] == expected
    assert [h.language for h in heard] == ["en", "fr", "de"]
    assert "paris" in heard[0].text.lower() and "today" in heard[0].text.lower()


@pytest.mark.integration
@real_speech
def test_batch_equals_single_windows_and_leaves_the_model_config_alone(whisper_base, encoded):
    from desta_audio.whisper_asr import transcribe_encoded

    model, processor = whisper_base
    batched = transcribe_encoded(model, processor.tokenizer, encoded, max_new_tokens=64)
    singles = [transcribe_encoded(model, processor.tokenizer, encoded[i:i + 1], max_new_tokens=64)[0]
               for i in reversed(range(len(encoded)))][::-1]  # fmt: skip
    assert batched == singles
    assert getattr(model.generation_config, "language", None) is None  # a detected language does not stick


def test_english_only_model_gets_no_language_or_task():
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from desta_audio.whisper_asr import transcribe_encoded

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=120, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_target_positions=64, decoder_start_token_id=100, eos_token_id=101, pad_token_id=101)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=100, eos_token_id=101, pad_token_id=101,
                                               no_timestamps_token_id=102, is_multilingual=False)

    class Digits:
        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(str(i) for i in row.tolist() if i < 100) for row in ids]

    heard = transcribe_encoded(model, Digits(), torch.randn(2, 1500, 16), max_new_tokens=5)
    assert [h.language for h in heard] == [None, None] and all(h.text for h in heard)
