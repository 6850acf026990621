import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from desta_audio.data.annotate import (
    AnnotationCache,
    annotate_item,
    band,
    build_annotators,
    dbfs,
    estimate_snr,
    yin_f0,
    VOLUME_BANDS,
)
from desta_audio.data.sources import SourceItem, read_source

RATE = 16_000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def _harmonic(f0: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (amplitude * wave / np.abs(wave).max()).astype(np.float32)


def _espeak(path, *args, text="The quick brown fox jumps over the lazy dog near the river bank."):
    subprocess.run(["espeak-ng", *args, "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.mark.parametrize("f0", [90.0, 150.0, 240.0, 380.0])
def test_yin_finds_the_fundamental(f0):
    estimates = yin_f0(_harmonic(f0))
    assert estimates.size > 50
    assert np.median(estimates) == pytest.approx(f0, rel=0.02)


def test_yin_ignores_noise_and_silence():
    assert yin_f0(np.zeros(RATE, dtype=np.float32)).size == 0
    noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    assert yin_f0(noise).size < 10


def test_levels_and_bands():
    t = np.arange(RATE) / RATE
    assert dbfs(0.1 * np.sin(2 * np.pi * 440 * t)) == pytest.approx(-23.0, abs=0.1)
    assert band(-50, VOLUME_BANDS) == "Very low" and band(-5, VOLUME_BANDS) == "Very high"


def test_snr_from_vad_segments():
    rng = np.random.default_rng(1)
    speech = _harmonic(200, 2.0)
    noise_power = np.mean(speech.astype(np.float64) ** 2) / 10 ** (10 / 10)  # 10 dB
    padded = np.concatenate([np.zeros(RATE // 2), speech, np.zeros(RATE // 2)])
    noisy = (padded + rng.standard_normal(padded.size) * np.sqrt(noise_power)).astype(np.float32)
    assert estimate_snr(noisy, [[0.5, 2.5]]) == pytest.approx(10.0, abs=0.5)
    assert estimate_snr(padded.astype(np.float32), [[0.5, 2.5]]) == 60.0  # digital silence: capped


def test_unknown_annotator_is_named():
    with pytest.raises(ValueError, match="loudnes"):
        build_annotators(["loudnes"])


def test_dependencies_are_added_in_order():
    assert [a.name for a in build_annotators(["pitch"])] == ["vad", "pitch"]


def test_a_clip_without_speech_gets_no_speaker_attributes(tmp_path):
    """VAD finds no speech in a tone and the source has no transcript: no pitch or volume of a speaker (a beep's YIN
    pitch is not one), while the measurements and the recording's own noise level are kept."""
    t = np.arange(2 * RATE) / RATE
    sf.write(tmp_path / "beep.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RATE)
    item = SourceItem(id="beep.wav", dataset="t", audio=str(tmp_path / "beep.wav"))
    row = annotate_item(item, build_annotators(["duration", "loudness", "pitch", "snr"]))
    assert row["speech_segments"] == [] and row["f0_median_hz"] == pytest.approx(440, rel=0.02)
    assert "Pitch" not in row["attributes"] and "Volume" not in row["attributes"]
    assert "Noise level" in row["attributes"] and row["duration"] == pytest.approx(2.0)
    # A source transcript says there is speech that VAD missed: the speaker's attributes are kept.
    spoken = annotate_item(SourceItem(id="beep.wav", dataset="t", audio=str(tmp_path / "beep.wav"), transcript="hi"),
                           build_annotators(["loudness", "pitch"]))
    assert spoken["attributes"]["Pitch"] == "Very high" and "Volume" in spoken["attributes"]


@needs_espeak
def test_espeak_controls_move_the_categories(tmp_path):
    annotators = build_annotators(["duration", "loudness", "pitch", "rate", "snr"])
    rows = {}
    for name, args in {"quiet": ["-a", "10"], "loud": ["-a", "200"], "low": ["-v", "en+m3", "-p", "0"],
                       "high": ["-v", "en+f3", "-p", "99"], "slow": ["-s", "80"], "fast": ["-s", "350"]}.items():
        path = _espeak(tmp_path / f"{name}.wav", *args)
        item = SourceItem(id=path.name, dataset="t", audio=str(path),
                          transcript="The quick brown fox jumps over the lazy dog near the river bank.")
        rows[name] = annotate_item(item, annotators)
    labels = {name: row["attributes"] for name, row in rows.items()}
    assert labels["quiet"]["Volume"] == "Very low" and labels["loud"]["Volume"] in ("High", "Very high")
    assert labels["low"]["Pitch"] == "Very low" and labels["high"]["Pitch"] == "Very high"
    assert labels["slow"]["Speaking speed"] in ("Very slow", "Slow")
    assert labels["fast"]["Speaking speed"] == "Very fast"
    assert rows["quiet"]["speech_seconds"] > 1.5 and rows["quiet"]["speech_segments"]
    assert labels["quiet"]["Noise level"] == "Very low"  # synthetic speech over digital silence


@needs_espeak
def test_cache_hits_and_invalidates_when_the_file_changes(tmp_path):
    path = _espeak(tmp_path / "a.wav", "-a", "50")
    item = SourceItem(id="a.wav", dataset="t", audio=str(path))
    annotators = build_annotators(["loudness"])
    with AnnotationCache(tmp_path / "cache.sqlite") as cache:
        first = annotate_item(item, annotators, cache)
        assert cache.hits == 0
        assert annotate_item(item, annotators, cache) == first
        assert cache.hits == 2  # vad + loudness
        audio, rate = sf.read(path)
        sf.write(path, audio * 0.05, rate)  # same name, new content
        changed = annotate_item(item, annotators, cache)
        assert cache.hits == 2 and changed["volume_dbfs"] < first["volume_dbfs"] - 20


def test_source_metadata_wins_unless_overwrite(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, _harmonic(150, 1.0), RATE)
    item = SourceItem(id="tone.wav", dataset="t", audio=str(path), duration=9.0, attributes={"Pitch": "High"},
                      transcript="a hum")  # the source says it is speech, though VAD hears none in a tone
    annotators = build_annotators(["duration", "pitch"])
    kept = annotate_item(item, annotators)
    assert kept["duration"] == 9.0 and kept["attributes"] == {"Pitch": "High"}
    assert kept["f0_median_hz"] == pytest.approx(150, rel=0.02)
    replaced = annotate_item(item, annotators, overwrite=True)
    assert replaced["duration"] == 1.0 and replaced["attributes"] == {"Pitch": "Normal"}


def test_annotated_rows_keep_every_attribute_for_describe(tmp_path):
    """Attributes the default mapping does not know (or knows under another column) survive annotation."""
    sf.write(tmp_path / "a.wav", _harmonic(150, 1.0), RATE)
    (tmp_path / "m.jsonl").write_text(json.dumps({"file": "a.wav", "words": "hello there", "spk_accent": "Scottish",
                                                  "n_spk": 2, "sex": "Male"}) + "\n")  # fmt: skip
    (tmp_path / "map.yaml").write_text("audio_column: file\ntranscript_column: words\nattributes: {sex: Gender, "
                                       "spk_accent: Regional accent, n_spk: Number of speakers}\n")
    (tmp_path / "plain.jsonl").write_text(json.dumps({"audio": "a.wav", "num_speakers": 1}) + "\n")
    expected = {
        "m.jsonl": "[00:00-00:01] hello there (Gender: Male, Regional accent: Scottish, Number of speakers: 2, "
                   "Pitch: Normal, Duration: 1s)",
        "plain.jsonl": "[00:00-00:01] (Number of speakers: 1, Duration: 1s)",  # a tone, no transcript: no pitch
    }  # fmt: skip
    cli = [sys.executable, "-m", "desta_audio.data.cli"]
    for source, mapping in (("m.jsonl", ["-m", str(tmp_path / "map.yaml")]), ("plain.jsonl", [])):
        annotated = tmp_path / f"annotated-{source}"
        subprocess.run([*cli, "annotate", str(tmp_path / source), *mapping, "-o", str(annotated), "--annotators",
                        "duration,pitch"], check=True, capture_output=True)  # fmt: skip
        described = subprocess.run([*cli, "describe", str(annotated)], check=True, capture_output=True, text=True)
        assert json.loads(described.stdout)["seed_description"] == expected[source]


@needs_espeak
def test_cli_annotate_then_describe(tmp_path):
    _espeak(tmp_path / "a.wav", "-v", "en+f3", "-p", "80")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "the quick brown fox", "gender": "Female"}) + "\n")
    cli = [sys.executable, "-m", "desta_audio.data.cli"]
    subprocess.run([*cli, "annotate", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "annotated.jsonl"),
                    "--annotators", "duration,loudness,pitch,snr"], check=True, capture_output=True)  # fmt: skip
    row = json.loads((tmp_path / "annotated.jsonl").read_text())
    assert row["id"] == "a.wav" and row["attributes"]["Gender"] == "Female"
    assert row["attributes"]["Pitch"] in ("High", "Very high")
    assert (tmp_path / "annotated.cache.sqlite").exists()
    item = next(read_source(tmp_path / "annotated.jsonl"))
    assert item.id == "a.wav" and item.audio == str(tmp_path / "a.wav")
    described = subprocess.run([*cli, "describe", str(tmp_path / "annotated.jsonl")], check=True,
                               capture_output=True, text=True).stdout  # fmt: skip
    description = json.loads(described)["seed_description"]
    assert description.startswith("[00:00-00:0") and "the quick brown fox (Gender: Female, Pitch: " in description
    assert "Volume: " in description and "Noise level: " in description and "Duration: " in description


@pytest.mark.integration
@needs_espeak
def test_whisper_transcript_and_language(tmp_path):
    path = _espeak(tmp_path / "a.wav", text="The quick brown fox jumps over the lazy dog.")
    item = SourceItem(id="a.wav", dataset="t", audio=str(path))
    row = annotate_item(item, build_annotators(["asr", "rate"]))
    assert row["attributes"]["Language"] == "English"
    assert "fox" in row["transcript"].lower()
    assert row["attributes"]["Speaking speed"] in ("Slow", "Normal", "Fast")
