"""Request audio is checked from its header before decoding, and decoded without holding every channel."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from desta_audio.audio import AudioError, load_audio
from desta_audio.serve.audio_input import AudioPolicy, decode_audio_bytes, decode_base64_audio


def encoded(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def test_multichannel_audio_decodes_as_load_audio_mixes_it():
    rng = np.random.default_rng(0)
    samples = (0.2 * rng.standard_normal((100_000, 3))).astype(np.float32)  # more than one decoding block
    data = encoded(samples, 44_100, "FLAC")
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    expected = load_audio(decoded, sample_rate=rate)
    np.testing.assert_array_equal(decode_audio_bytes(data, "flac", AudioPolicy(), "clip"), expected)


def test_a_sample_rate_above_the_cap_is_refused():
    data = encoded(np.zeros((1_000, 1), np.int16), 384_000)
    with pytest.raises(AudioError, match="384000 Hz is above this server's limit of 192000 Hz"):
        decode_audio_bytes(data, "wav", AudioPolicy(), "clip")


def test_more_samples_than_the_duration_limit_allows_at_8_channels_are_refused():
    # 0.06 s within a 0.1 s limit, but 64 channels at 48 kHz: 184,320 samples, over 0.1 s x 192 kHz x 8.
    data = encoded(np.zeros((2_880, 64), np.int16), 48_000)
    with pytest.raises(AudioError, match="64 channels x 2880 frames .* limit of 153600 samples"):
        decode_audio_bytes(data, "wav", AudioPolicy(max_seconds=0.1), "clip")
    assert decode_audio_bytes(encoded(np.zeros((2_880, 8), np.int16), 48_000), "wav",
                              AudioPolicy(max_seconds=0.1), "clip").size == 960


def test_base64_wrapped_in_lines_decodes_and_other_junk_is_refused():
    import base64

    data = encoded(np.zeros(1600, np.float32), 16_000)
    wrapped = base64.encodebytes(data).decode()  # 76-character lines, as the `base64` command writes
    assert "\n" in wrapped
    decoded = decode_base64_audio(wrapped, "wav", AudioPolicy(), "clip")
    np.testing.assert_array_equal(decoded, decode_audio_bytes(data, "wav", AudioPolicy(), "clip"))
    with pytest.raises(AudioError, match="not valid base64"):
        decode_base64_audio("data:audio/wav;base64," + wrapped, "wav", AudioPolicy(), "clip")
