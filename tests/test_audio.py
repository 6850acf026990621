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


def test_unreadable_file_is_a_permission_problem_not_a_format_one(tmp_path, monkeypatch):
    import desta_audio.audio as audio_module

    path = tmp_path / "locked.wav"
    sf.write(path, tone(1.0), SAMPLE_RATE)

    def refused(file, *args, **kwargs):  # chmod 000 does not stop root, who may run the tests
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(audio_module, "open", refused, raising=False)
    with pytest.raises(AudioError, match=r"locked.wav: cannot read the file \(Permission denied\); check its perm"):
        load_audio(path)


def test_a_pipe_is_not_called_an_empty_file(tmp_path):
    import os

    fifo = tmp_path / "stream.wav"  # what `desta ask <(ffmpeg ...) "..."` hands over
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match="stream.wav: not a regular file .*; save the audio to a file"):
        load_audio(fifo)
    with pytest.raises(AudioError, match="-: no such audio file; audio is read from files only, not from standard"):
        load_audio("-")


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


def test_integer_channels_are_scaled_before_mixing():
    pcm = (tone(0.5) * 32767).astype(np.int16)
    for samples in (np.stack([pcm, pcm], axis=1), np.stack([pcm, pcm], axis=0)):
        assert np.abs(load_audio(samples)).max() == pytest.approx(0.3, abs=0.01)
    unsigned = (tone(0.5) * 127 + 128).astype(np.uint8)  # 8-bit PCM is unsigned, centred on 128
    mixed = load_audio(np.stack([unsigned, unsigned], axis=1))
    assert abs(float(mixed.mean())) < 0.01 and np.abs(mixed).max() == pytest.approx(0.3, abs=0.01)


def test_channels_first_arrays_are_transposed_and_absurd_layouts_refused():
    left, right = tone(1.0, 440), np.zeros(SAMPLE_RATE, np.float32)
    channels_last = load_audio(np.stack([left, right], axis=1))
    channels_first = load_audio(np.stack([left, right], axis=0))  # librosa / torchaudio layout
    assert channels_first.size == SAMPLE_RATE
    np.testing.assert_array_equal(channels_first, channels_last)
    with pytest.raises(AudioError, match="would be 500 channels"):
        load_audio(np.zeros((1000, 500), np.float32))


@pytest.mark.parametrize("rate", [0, -16000, 22050.5, "16000", True])
def test_array_sample_rate_must_be_a_positive_integer(rate):
    with pytest.raises(AudioError, match="sample rate must be a positive integer"):
        load_audio(tone(0.5), sample_rate=rate)


def test_a_file_carries_its_own_rate(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(0.5), SAMPLE_RATE)
    with pytest.raises(AudioError, match="applies to arrays only"):
        load_audio(path, sample_rate=22050)


def wav_file(path, seconds=3.0):
    sf.write(path, tone(seconds), SAMPLE_RATE, subtype="PCM_16")
    return path.read_bytes()


@pytest.mark.parametrize("keep", [60, 0.5])
def test_truncated_wav_is_refused(tmp_path, keep):
    data = wav_file(tmp_path / "whole.wav")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    held = "0.00" if keep == 60 else "1.50"
    with pytest.raises(AudioError, match=rf"cut.wav: truncated: header declares 3.00 s, file holds {held} s"):
        load_audio(cut)


@pytest.mark.parametrize("declared", [0, 0xFFFFFFFF])
def test_streamed_wav_with_unknown_data_size_is_read_whole(tmp_path, declared):
    data = wav_file(tmp_path / "whole.wav")
    offset = data.index(b"data") + 4  # the data chunk's size field, which a streaming writer leaves unfilled
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(data[:offset] + declared.to_bytes(4, "little") + data[offset + 4:])
    np.testing.assert_allclose(load_audio(streamed), load_audio(tmp_path / "whole.wav"), atol=1e-6)


def test_wav_with_trailing_chunks_is_whole(tmp_path):
    data = wav_file(tmp_path / "whole.wav")
    tagged = tmp_path / "tagged.wav"
    tagged.write_bytes(data + b"LIST" + (5).to_bytes(4, "little") + b"INFO\x00\x00")  # odd size, padded
    assert load_audio(tagged).size == 3 * SAMPLE_RATE


def test_cut_mp3_decoding_short_of_its_declared_length_is_refused(tmp_path):
    path = tmp_path / "clip.mp3"
    sf.write(path, tone(3.0), SAMPLE_RATE, format="MP3")
    assert load_audio(path).size >= 3 * SAMPLE_RATE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(AudioError, match="clip.mp3: truncated: header declares 3.00 s"):
        load_audio(path)


def test_flac_written_to_a_pipe_without_its_length_is_read_whole(tmp_path):
    path = tmp_path / "streamed.flac"
    sf.write(path, tone(3.0), SAMPLE_RATE, format="FLAC")
    data = bytearray(path.read_bytes())
    # STREAMINFO's 36-bit total sample count (bytes 21-25 of the file), which a writer to a pipe leaves at 0.
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    path.write_bytes(bytes(data))
    assert load_audio(path).size == 3 * SAMPLE_RATE
    with pytest.raises(AudioError, match=r"streamed.flac: at least 3.0 s is longer than the 2 s limit"):
        load_audio(path, max_seconds=2)


def test_mp3_without_a_length_header_is_not_taken_as_truncated(tmp_path):
    path = tmp_path / "vbr.mp3"
    clip = np.concatenate([np.zeros(2 * SAMPLE_RATE, np.float32), tone(4.0)])
    sf.write(path, clip, SAMPLE_RATE, format="MP3", bitrate_mode="VARIABLE")
    data = path.read_bytes()
    # Drop the first frame, which holds the Xing header: the length is then guessed from the size and the first
    # (quiet, low bit rate) frame, too long.
    path.write_bytes(data[data.index(data[:2], 4):])
    assert sf.info(path).frames > 1.1 * len(clip)
    assert abs(load_audio(path).size - len(clip)) < 0.1 * SAMPLE_RATE  # encoder padding


def test_float_samples_far_beyond_full_scale_are_refused(tmp_path):
    path = tmp_path / "huge.wav"
    sf.write(path, tone(1.0) * 1e30, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="samples reach .*e\\+29; float audio should lie within"):
        load_audio(path)
    hot = tone(1.0, amplitude=1.5)  # a hot mix just over full scale stays usable
    assert np.abs(load_audio(hot)).max() == pytest.approx(1.5, rel=1e-3)


@pytest.mark.parametrize("source,message", [
    (None, "audio: expected a file path or a numpy array, got NoneType$"),
    (3, "got int$"),
    ([0.0, 0.1], r"got list \(use np.asarray\(samples, dtype=np.float32\)\)"),
    ("", "audio: the file path is empty"),
])
def test_sources_that_are_neither_path_nor_array_are_named(source, message):
    with pytest.raises(AudioError, match=message):
        load_audio(source)


def test_64_bit_integer_samples_are_refused_not_silenced():
    pcm = np.array([int(x) for x in (tone(0.5) * 32767).astype(np.int16)])  # numpy widens a list of ints to int64
    with pytest.raises(AudioError, match=r"int64 samples; give int16 or int32 PCM \(e.g. samples.astype"):
        load_audio(pcm)
    assert np.abs(load_audio(pcm.astype(np.int16))).max() == pytest.approx(0.3, abs=0.01)
