import numpy as np
import pytest
import soundfile as sf

from desta_audio.audio import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    AudioError,
    load_audio,
    num_windows,
    split_windows,
)
from tests.conftest import tone


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)])
def test_decodes_common_formats_to_16k_mono(tmp_path, fmt, subtype):
    stereo = np.stack([tone(1.0, 440, rate=44_100), tone(1.0, 440, rate=44_100)], axis=1)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, stereo, 44_100, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - SAMPLE_RATE) < 0.01 * SAMPLE_RATE + 1200  # mp3 adds encoder padding
    assert 0.1 < np.abs(audio).max() < 0.5


def test_array_resampled_and_mixed():
    stereo = np.stack([tone(2.0, rate=8000), np.zeros(16000, np.float32)], axis=1)
    audio = load_audio(stereo, 8000)
    assert audio.size == 2 * SAMPLE_RATE
    assert np.abs(audio).max() == pytest.approx(0.15, abs=0.02)  # mean of the two channels


def test_integer_arrays_are_scaled():
    pcm = (tone(0.5) * 32767).astype(np.int16)
    assert np.abs(load_audio(pcm)).max() == pytest.approx(0.3, abs=0.01)


def test_missing_empty_corrupt_and_directory(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(tmp_path / "junk.wav")
    (tmp_path / "notes.mp3").write_text("hello, this is text\n")
    with pytest.raises(AudioError, match=r"cannot decode as audio \(not a recognised audio format, or corrupt\)"):
        load_audio(tmp_path / "notes.mp3")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(3.0), SAMPLE_RATE, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioError):
        load_audio(path)


def test_nan_inf_empty_and_shape_errors():
    bad = tone(1.0)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_audio(bad)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="shape"):
        load_audio(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(AudioError, match="dtype"):
        load_audio(np.array(["a", "b"]))


def test_over_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(SAMPLE_RATE * 5, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="longer than the 3 s limit"):
        load_audio(path, max_seconds=3)
    assert load_audio(path, max_seconds=None).size == SAMPLE_RATE * 5


def test_silence_is_valid_audio():
    assert load_audio(np.zeros(1600, np.float32)).size == 1600


def test_windows():
    assert num_windows(np.zeros(10, np.float32)) == 1
    assert num_windows(np.zeros(WINDOW_SAMPLES, np.float32)) == 1
    assert num_windows(np.zeros(WINDOW_SAMPLES + 1, np.float32)) == 2
    parts = split_windows(np.arange(int(2.5 * WINDOW_SAMPLES), dtype=np.float32))
    assert [p.size for p in parts] == [WINDOW_SAMPLES, WINDOW_SAMPLES, WINDOW_SAMPLES // 2]
    assert parts[1][0] == WINDOW_SAMPLES
