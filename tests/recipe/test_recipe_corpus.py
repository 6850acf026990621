import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from desta_audio.audio import SAMPLE_RATE
from desta_audio.recipe import attributes as attr
from desta_audio.recipe import split as splits
from desta_audio.recipe import synth
from desta_audio.recipe.corpus import Availability, build_corpus, plan_corpus
from tests.recipe.conftest import needs_espeak

SPEECH_COLUMNS = ("text", "language", "voice")


def _rows(result):
    return result.train + result.heldout


def test_both_splits_written_and_disjoint(tiny_corpus):
    out = tiny_corpus.out_dir
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert train == tiny_corpus.train and heldout == tiny_corpus.heldout
    assert len(train) >= 20 and len(heldout) >= 8
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in heldout} == {"heldout"}
    assert splits.leaks(train, heldout) == []
    # The promise, spelled out: no held-out voice or text in train...
    held_texts = {splits.normalise_text(r["text"]) for r in heldout if r.get("text")}
    assert not {splits.normalise_text(r["text"]) for r in train if r.get("text")} & held_texts
    assert not {r.get("voice_variant") for r in train} & splits.HELDOUT_VOICES
    # ...and the held-out split really holds the unseen voices and sound types.
    assert {r.get("voice_variant") for r in heldout} & splits.HELDOUT_VOICES
    assert {r.get("noise_colour") for r in heldout if r["origin"] == "noise"} == {"brown"}
    assert {r["waveform"] for r in heldout if r["origin"] == "tones"} == {"sawtooth"}
    assert {r["chord_type"] for r in heldout if r["origin"] == "chords"} == {"augmented"}
    assert len({r["id"] for r in _rows(tiny_corpus)}) == len(_rows(tiny_corpus))


def test_every_clip_is_16k_mono_16bit_with_its_duration(tiny_corpus):
    for row in _rows(tiny_corpus):
        info = sf.info(str(tiny_corpus.out_dir / row["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16"), row["id"]
        assert row["duration"] == pytest.approx(info.frames / SAMPLE_RATE, abs=1e-3)
        assert 0.2 < row["duration"] <= 30.0, row["id"]
        audio, _ = sf.read(str(tiny_corpus.out_dir / row["audio"]))
        if row.get("audio_category") != "silence":
            assert np.max(np.abs(audio)) > 1e-3, f"{row['id']} is silent"


def test_metadata_columns_match_the_synthesis_settings(tiny_corpus):
    rows = _rows(tiny_corpus)
    for row in rows:
        assert row["kind"] in ("speech", "sound", "music")
        if row["kind"] == "speech":
            assert all(row.get(c) for c in SPEECH_COLUMNS), row
            assert "level_dbfs" in row
        else:
            assert row.get("caption"), row
    espeak_rows = [r for r in rows if r.get("synthesis", {}).get("engine") == "espeak-ng"]
    assert len(espeak_rows) >= 15
    for row in espeak_rows:
        setting = row["synthesis"]
        assert setting["voice"].endswith("+" + row["voice_variant"])
        assert row["gender"] == attr.variant_gender(row["voice_variant"])
        low, high = attr.ESPEAK_PITCH[row["pitch"]]
        assert low <= setting["pitch"] <= high
        low, high = attr.ESPEAK_SPEED[row["speaking_speed"]]
        assert low <= setting["speed"] <= high
        if "volume" in row:
            low, high = attr.ESPEAK_AMPLITUDE[row["volume"]]
            assert low <= setting["amplitude"] <= high
    for row in rows:
        if "snr_db" in row:
            assert row["noise_level"] == attr.noise_level(row["snr_db"])
        if row["origin"] == "reverb_speech":
            reverberance = int(row["reverb_setting"].split()[2])
            assert attr.REVERB[row["reverberation"]][0][0] <= reverberance <= attr.REVERB[row["reverberation"]][0][1]


def test_tone_frequency_measured_by_fft_equals_the_label(tiny_corpus):
    tones = [r for r in _rows(tiny_corpus) if r["origin"] == "tones"]
    assert tones
    for row in tones:
        audio, rate = sf.read(str(tiny_corpus.out_dir / row["audio"]))
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
        measured = np.argmax(spectrum) * rate / audio.size
        assert measured == pytest.approx(row["frequency_hz"], abs=1.0), row["id"]
        assert str(row["frequency_hz"]) in row["caption"]


def test_noisy_speech_snr_measured_within_1_db_of_the_label(tiny_corpus):
    mixtures = [r for r in _rows(tiny_corpus) if r["origin"] == "noisy_speech"]
    assert mixtures
    for row in mixtures:
        mixture, _ = sf.read(str(tiny_corpus.out_dir / row["audio"]), dtype="float32")
        settings = {k: v for k, v in row["synthesis"].items() if k != "engine"}
        clean = synth.espeak(**settings)  # espeak-ng is deterministic: the exact speech that was mixed
        assert clean.size == mixture.size
        noise = mixture / row["mix_gain"] - clean
        measured = 10 * np.log10(synth.power(clean) / synth.power(noise))
        assert measured == pytest.approx(row["snr_db"], abs=1.0), row["id"]


def test_volume_labels_follow_the_measured_level(tiny_corpus):
    by_label: dict[str, list[float]] = {}
    for row in _rows(tiny_corpus):
        if row.get("volume") and row["origin"] == "espeak":
            by_label.setdefault(row["volume"], []).append(row["level_dbfs"])
    assert by_label
    for label, levels in by_label.items():
        assert max(levels) < -12 and (label != "Very low" or max(levels) < -33), (label, levels)
        assert label != "High" or min(levels) > -26, (label, levels)


def test_manifests_read_by_the_data_module_and_described(tiny_corpus, tmp_path):
    from desta_audio.data.cli import app as data_app
    from desta_audio.data.sources import read_source

    for name, rows in (("train.jsonl", tiny_corpus.train), ("heldout.jsonl", tiny_corpus.heldout)):
        items = list(read_source(tiny_corpus.out_dir / name))
        assert [i.id for i in items] == [r["id"] for r in rows]
        for item, row in zip(items, rows, strict=True):
            assert sf.info(item.audio).samplerate == SAMPLE_RATE
            assert item.kind == row["kind"] and item.transcript == row.get("text")
            if row.get("gender"):
                assert item.attributes["Gender"] == row["gender"]
            assert "Family" not in item.attributes and "Source" not in item.attributes
        described = tmp_path / f"{name}.described.jsonl"
        result = CliRunner().invoke(data_app, ["describe", str(tiny_corpus.out_dir / name), "--out", str(described)])
        assert result.exit_code == 0, result.output
        descriptions = [json.loads(line)["seed_description"] for line in described.read_text().splitlines()]
        assert len(descriptions) == len(rows)
        for description, row in zip(descriptions, rows, strict=True):
            assert description.startswith("[00:00-")
            if row.get("text"):
                assert row["text"] in description
            if row.get("language"):
                assert f"Language: {row['language']}" in description
            if row.get("noise_level"):
                assert f"Noise level: {row['noise_level']}" in description


def test_summary_counts_and_versions(tiny_corpus):
    summary = json.loads((tiny_corpus.out_dir / "corpus.json").read_text())
    assert summary["settings"]["size"] == 40 and summary["settings"]["seed"] == 7
    assert summary["train"]["clips"] == len(tiny_corpus.train)
    assert summary["heldout"]["clips"] == len(tiny_corpus.heldout)
    assert sum(summary["train"]["origin"].values()) == len(tiny_corpus.train)
    assert summary["versions"]["espeak-ng"].startswith("1.")


def test_real_recordings_used_when_installed(tiny_corpus, available):
    origins = {r["origin"] for r in _rows(tiny_corpus)}
    expected = {"espeak", "tones", "chords", "noise", "noisy_speech", "reverb_speech"}
    expected |= {name for name, ok in (("piper", available.piper), ("asterisk", available.asterisk),
                                       ("music", available.moh), ("alsa", available.alsa)) if ok}  # fmt: skip
    assert origins == expected
    if not (available.asterisk and available.moh and available.alsa):
        pytest.skip("Debian asterisk-core-sounds-en(-wav), asterisk-moh-opsound-wav, alsa-utils not installed "
                    "(setup.sh installs them)")  # fmt: skip
    music = [r for r in _rows(tiny_corpus) if r["origin"] == "music"]
    assert all(5.0 <= r["duration"] <= 15.05 for r in music)
    assert {r["track_id"] for r in music if r["split"] == "heldout"} <= splits.HELDOUT_MUSIC_TRACKS
    asterisk = [r for r in _rows(tiny_corpus) if r["origin"] == "asterisk" and r["kind"] == "speech"]
    assert asterisk and all(r["gender"] == "Female" and r["text"] for r in asterisk)
    assert all(r["split"] == "heldout" for r in _rows(tiny_corpus) if r["origin"] == "alsa")


@needs_espeak
def test_plan_is_deterministic_given_the_seed():
    first, _ = plan_corpus(40, seed=3)
    again, _ = plan_corpus(40, seed=3)
    other, _ = plan_corpus(40, seed=4)
    assert first == again
    assert [p.meta.get("text") for p in first] != [p.meta.get("text") for p in other]


@needs_espeak
def test_missing_packages_skip_their_family_only():
    plans, skipped = plan_corpus(40, seed=0, available=Availability(True, False, False, False, False))
    assert skipped == ["piper", "asterisk", "music", "alsa"]
    assert {p.family for p in plans} == {"espeak", "tones", "chords", "noise", "noisy_speech", "reverb_speech"}


@needs_espeak
def test_resume_keeps_written_clips_and_rerenders_missing_ones_identically(tmp_path):
    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    available = Availability(True, False, False, False, False)  # synthetic families only: quick
    import desta_audio.recipe.corpus as corpus_module

    original = corpus_module.Availability.detect
    corpus_module.Availability.detect = classmethod(lambda cls: available)
    try:
        first = build_corpus(tmp_path, size=16, seed=1, workers=1, progress=False)
        clips = sorted((tmp_path / "audio").rglob("*.wav"))
        before = {p: (digest(p), p.stat().st_mtime_ns) for p in clips}
        removed = next(p for p in clips if "espeak" in p.parts)
        removed.unlink()
        second = build_corpus(tmp_path, size=16, seed=1, workers=1, progress=False)
    finally:
        corpus_module.Availability.detect = original
    assert second.train == first.train and second.heldout == first.heldout
    for path, (sha, mtime) in before.items():
        assert digest(path) == sha
        if path != removed:
            assert path.stat().st_mtime_ns == mtime  # not rewritten
    with pytest.raises(ValueError, match="same --size and --seed"):
        build_corpus(tmp_path, size=17, seed=1, workers=1, progress=False)
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_builds_and_reports(tmp_path, monkeypatch):
    if not synth.espeak_available():
        pytest.skip("espeak-ng not installed (setup.sh installs it)")
    from desta_audio.recipe.cli import app

    import desta_audio.recipe.corpus as corpus_module

    monkeypatch.setattr(corpus_module.Availability, "detect",
                        classmethod(lambda cls: Availability(True, False, False, False, False)))  # fmt: skip
    result = CliRunner().invoke(app, ["corpus", str(tmp_path / "c"), "--size", "12", "--seed", "2", "--quiet",
                                      "--workers", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "heldout:" in result.output
    assert "skipped (package missing): piper, asterisk, music, alsa" in result.output
    assert (tmp_path / "c" / "train.jsonl").exists() and (tmp_path / "c" / "corpus.json").exists()


def test_cli_refuses_a_file_as_out_dir(tmp_path):
    from desta_audio.recipe.cli import app

    (tmp_path / "taken").write_text("not a folder")
    for command in ("corpus", "mini"):
        result = CliRunner().invoke(app, [command, str(tmp_path / "taken")])
        assert result.exit_code == 1 and "exists and is not a folder" in result.output, result.output
    assert (tmp_path / "taken").read_text() == "not a folder"


@needs_espeak
def test_same_seed_gives_byte_identical_corpus_whatever_the_worker_count(tmp_path):
    first = build_corpus(tmp_path / "a", size=16, seed=5, workers=2, progress=False)
    second = build_corpus(tmp_path / "b", size=16, seed=5, workers=1, progress=False)
    assert first.train == second.train and first.heldout == second.heldout
    for row in first.train + first.heldout:
        assert (tmp_path / "a" / row["audio"]).read_bytes() == (tmp_path / "b" / row["audio"]).read_bytes(), row["id"]


def test_a_size_or_worker_count_below_one_records_nothing(tmp_path):
    for options in ({"size": 0}, {"size": -5}, {"size": 12, "workers": 0}):
        with pytest.raises(ValueError, match="must be at least 1"):
            build_corpus(tmp_path / "c", **options, progress=False)
    assert not (tmp_path / "c").exists()  # no build.json to refuse the corrected rerun


@needs_espeak
def test_ctrl_c_stops_the_build_without_rendering_the_queued_clips(tmp_path, monkeypatch):
    import tqdm.auto

    import desta_audio.recipe.corpus as corpus_module

    class InterruptedBar(tqdm.auto.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt  # Ctrl-C as the first clip comes back

    monkeypatch.setattr(tqdm.auto, "tqdm", InterruptedBar)
    monkeypatch.setattr(corpus_module.Availability, "detect",
                        classmethod(lambda cls: Availability(True, False, False, False, False)))  # fmt: skip
    planned = len(plan_corpus(200, seed=3, available=Availability(True, False, False, False, False))[0])
    with pytest.raises(KeyboardInterrupt):
        build_corpus(tmp_path, size=200, seed=3, workers=2, progress=False)
    assert len(list((tmp_path / "audio").rglob("*.wav"))) < planned / 2

