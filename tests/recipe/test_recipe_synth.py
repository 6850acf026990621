import random

import numpy as np
import pytest

from desta_audio.audio import SAMPLE_RATE
from desta_audio.recipe import attributes as attr
from desta_audio.recipe import synth
from desta_audio.recipe.split import leaks, normalise_text
from desta_audio.recipe.texts import TEMPLATES, english_sentences, sentence_pool
from tests.recipe.conftest import needs_espeak


def _octave_slope_db(noise: np.ndarray) -> float:
    """Power change (dB) from the 500-1000 Hz octave to the 2000-4000 Hz octave, per octave."""
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(noise.size, 1 / SAMPLE_RATE)

    def band(lo, hi):
        return spectrum[(freqs >= lo) & (freqs < hi)].sum()

    return 10 * np.log10(band(2000, 4000) / band(500, 1000)) / 2


@pytest.mark.parametrize(("colour", "slope"), [("white", 3.0), ("pink", 0.0), ("brown", -3.0)])
def test_noise_colours_have_their_spectral_slope(colour, slope):
    # Band power per octave: white rises 3 dB/octave, pink is flat, brown falls 3 dB/octave.
    noise = synth.coloured_noise(colour, SAMPLE_RATE * 4, np.random.default_rng(0))
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-3)
    assert _octave_slope_db(noise) == pytest.approx(slope, abs=0.5)


def test_mix_at_snr_is_exact_and_bounded():
    rng = np.random.default_rng(1)
    speech = (0.9 * np.sin(np.linspace(0, 800, 32000))).astype(np.float32)
    noise = rng.standard_normal(40000).astype(np.float32)
    for snr in (-5.0, 0.0, 12.5, 30.0):
        mixture, gain = synth.mix_at_snr(speech, noise, snr)
        assert mixture.size == speech.size and np.max(np.abs(mixture)) <= 0.95 + 1e-6
        residual = mixture / gain - speech
        assert 10 * np.log10(synth.power(speech) / synth.power(residual)) == pytest.approx(snr, abs=0.01)


@pytest.mark.parametrize("waveform", synth.WAVEFORMS)
def test_tone_fundamental_is_the_strongest_partial(waveform):
    audio = synth.tone(523.0, 2.0, waveform, peak=0.5)
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / audio.size
    assert peak_hz == pytest.approx(523.0, abs=1.0)
    assert np.max(np.abs(audio)) == pytest.approx(0.5, abs=0.01)


def test_chord_contains_each_note():
    notes = [60, 64, 67]
    audio = synth.chord(notes, 2.0, "organ")
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(audio.size, 1 / SAMPLE_RATE)
    floor = np.median(spectrum)
    for note in notes:
        near = spectrum[np.abs(freqs - synth.midi_to_hz(note)) < 2]
        assert near.max() > 100 * floor


def test_english_pool_is_several_hundred_distinct_sentences():
    sentences = english_sentences()
    texts = [s.text for s in sentences]
    assert len(texts) >= 300 and len(set(texts)) == len(texts)
    held = {s.text for s in sentences if s.heldout}
    assert held and len(held) < len(texts) / 3
    held_templates = [t for t, h in TEMPLATES if h]
    assert all(any(t.split("{")[0] in text for t in held_templates) for text in held)


def test_every_language_has_train_and_heldout_sentences():
    for code, sentences in sentence_pool().items():
        assert any(s.heldout for s in sentences) and any(not s.heldout for s in sentences), code
    assert all(s.spoken for s in sentence_pool()["zh"])  # pinyin for the synthesizer


def test_leak_check_finds_each_kind_of_leak():
    heldout = [{"id": "h", "text": "Turn left after the park."}]
    train = [
        {"id": "a", "text": "turn left after the PARK", "voice_variant": "m1"},
        {"id": "b", "text": "Fine.", "voice_variant": "f5"},
        {"id": "c", "noise_colour": "brown"},
        {"id": "d", "origin": "alsa"},
        {"id": "e", "text": "Fine.", "voice_variant": "m2", "noise_colour": "pink"},
    ]
    found = leaks(train, heldout)
    assert [f.split(":")[0] for f in found] == ["a", "b", "c", "d"]
    assert normalise_text("Où est-il ?") == normalise_text("où est il")


def test_labels_pick_settings_inside_their_ranges():
    rng = random.Random(0)
    assert attr.noise_level(3.0) == "Very high" and attr.noise_level(25.0) == "Low"
    assert attr.noise_level(40.0) == "Very low"
    picked = [attr.pick_label(attr.SPEED_LABELS, rng) for _ in range(600)]
    assert set(picked) == set(attr.SPEED_LABELS) and picked.count("Normal") > picked.count("Fast")


@needs_espeak
def test_espeak_volume_labels_are_ordered_by_measured_level():
    text = "The quick brown fox jumps over the lazy dog."
    levels = []
    for label in attr.VOLUME_LABELS:
        low, high = attr.ESPEAK_AMPLITUDE[label]
        audio = synth.espeak(text, "en-us+m3", amplitude=(low + high) // 2)
        levels.append(synth.active_level_dbfs(audio))
    assert levels == sorted(levels) and levels[-1] - levels[0] > 15
    assert np.max(np.abs(synth.espeak(text, "en-us+f2", amplitude=100))) <= 1.0


@needs_espeak
def test_espeak_pitch_setting_moves_f0_within_a_gender():
    from desta_audio.data.annotate import yin_f0

    text = "The quick brown fox jumps over the lazy dog."
    for voice in ("en-us+m2", "en-us+f3"):
        f0 = [np.median(yin_f0(synth.espeak(text, voice, pitch=sum(attr.ESPEAK_PITCH[label]) // 2)))
              for label in attr.PITCH_LABELS]  # fmt: skip
        assert f0 == sorted(f0), voice


@needs_espeak
def test_unknown_espeak_voice_is_a_clear_error():
    with pytest.raises(synth.SynthesisError, match="xx-nope"):
        synth.espeak("hello", "xx-nope+m1")


@pytest.mark.skipif(not synth.piper_available(), reason="piper-tts not installed (pip install -e .[recipe])")
def test_piper_is_reproducible_from_its_seed():
    first = synth.piper("Turn left at the bakery.", length_scale=1.0, volume=0.5, seed=11)
    again = synth.piper("Turn left at the bakery.", length_scale=1.0, volume=0.5, seed=11)
    other = synth.piper("Turn left at the bakery.", length_scale=1.0, volume=0.5, seed=12)
    assert np.array_equal(first, again)
    assert first.size != other.size or not np.array_equal(first, other)
    assert np.max(np.abs(first)) == pytest.approx(0.5, abs=0.02)
    slow = synth.piper("Turn left at the bakery.", length_scale=1.6, seed=11)
    assert slow.size > 1.3 * first.size
