import json

import pytest

from desta_audio.data.describe import describe, format_duration, format_timestamp, parse_attributes
from desta_audio.data.sources import Segment, SourceItem, SourceMapping, read_source


def test_timestamps_and_durations():
    assert format_timestamp(0) == "00:00"
    assert format_timestamp(65.4) == "01:05"
    assert format_timestamp(65.4, round_up=True) == "01:06"
    assert format_timestamp(2.0, round_up=True) == "00:02"
    assert format_timestamp(3725) == "62:05"
    assert format_duration(2.0) == "2s"
    assert format_duration(4.74) == "4.7s"


def test_speech_line_has_transcript_then_attributes_then_duration():
    item = SourceItem(id="a.wav", dataset="d", audio="a.wav", duration=2.0, transcript="Excuse me?",
                      attributes={"Emotion": "Neutral", "Gender": "Female", "Pitch": "Very high"})
    assert describe(item) == "[00:00-00:02] Excuse me? (Emotion: Neutral, Gender: Female, Pitch: Very high, Duration: 2s)"


def test_non_verbal_and_sound_label():
    command = SourceItem(id="s.wav", dataset="sc", audio="s.wav", duration=1.0, attributes={"Command": "silence"})
    assert describe(command) == "[00:00-00:01] (Command: silence, Duration: 1s)"
    sound = SourceItem(id="k.wav", dataset="esc", audio="k.wav", kind="sound", duration=5.0,
                       attributes={"Audio category": "door_wood_knock"})
    assert describe(sound) == "[00:00-00:05] (Audio category: door_wood_knock, Duration: 5s)"


def test_caption_only_and_music():
    caption = SourceItem(id="c.wav", dataset="ac", audio="c.wav", kind="sound", duration=None,
                         caption="Plastic crinkling as people talk")
    caption.duration = 10.0
    assert describe(caption) == "[00:00-00:10] (Plastic crinkling as people talk) (Duration: 10s)"
    music = SourceItem(id="m.wav", dataset="nsynth", audio="m.wav", kind="music", duration=4.0,
                       attributes={"Family": "bass", "Source": "electronic", "MIDI Note": "022"})
    assert describe(music) == "[00:00-00:04] (Family: bass, Source: electronic, MIDI Note: 022, Duration: 4s)"


def test_multi_speaker_one_line_per_segment():
    item = SourceItem(
        id="dlg.wav", dataset="dailytalk", audio="dlg.wav", duration=7.2, attributes={"Number of speakers": "2"},
        segments=[
            Segment(3.1, 7.2, "Fine, thanks.", "Bob", {"Emotion": "Happy"}),
            Segment(0.0, 3.0, "How are you?", "Alice", {"Gender": "Female"}),
        ],
    )
    item.segments.sort(key=lambda s: s.start)
    assert describe(item).splitlines() == [
        "[00:00-00:08] (Number of speakers: 2, Duration: 7.2s)",
        "[00:00-00:03] Alice: How are you? (Gender: Female)",
        "[00:03-00:08] Bob: Fine, thanks. (Emotion: Happy)",
    ]


def test_describe_is_deterministic_and_precomputed_wins():
    item = SourceItem(id="a", dataset="d", audio="a", duration=1.0, transcript="hi", attributes={"Gender": "Male"})
    assert describe(item) == describe(item)
    item.seed_description = "[00:00-00:01] given"
    assert describe(item) == "[00:00-00:01] given"


def test_parse_attributes_reads_back_the_groups():
    found = parse_attributes("[00:00-00:02] Hi. (Gender: Female, Emotion: Sad)\n[00:02-00:04] Yo (Gender: Male)")
    assert found == {"Gender": ["Female", "Male"], "Emotion": ["Sad"]}


def test_csv_manifest_with_segments_and_yaml_mapping(tmp_path):
    segments = json.dumps([{"start": 1.5, "end": 3, "text": "bye", "speaker": "B", "sex": "M"},
                           {"start": 0, "end": 1.4, "text": "hi", "speaker": "A", "sex": "F"}])
    (tmp_path / "m.csv").write_text(
        "path,sex,mood,segments,len\n" f'x/1.wav,F,calm,"{segments.replace(chr(34), chr(34) * 2)}",3.0\n'
        "x/2.wav,M,,,1\n"
    )
    (tmp_path / "map.yaml").write_text(
        "dataset: corpus\naudio_column: path\nduration_column: len\nattributes: {sex: Gender, mood: Emotion}\n"
    )
    items = list(read_source(tmp_path / "m.csv", SourceMapping.from_yaml(tmp_path / "map.yaml")))
    assert [i.id for i in items] == ["x/1.wav", "x/2.wav"]
    assert items[0].audio == str(tmp_path / "x/1.wav")  # relative paths resolve against the manifest's folder
    assert items[0].dataset == "corpus"
    assert [s.speaker for s in items[0].segments] == ["A", "B"]  # sorted by start time
    assert items[0].segments[0].attributes == {"Gender": "F"}
    assert items[1].attributes == {"Gender": "M"}  # empty cells are not attributes
    assert describe(items[1]) == "[00:00-00:01] (Gender: M, Duration: 1s)"


def test_mapping_rejects_unknown_keys(tmp_path):
    (tmp_path / "map.yaml").write_text("audio_colum: path\n")
    with pytest.raises(ValueError, match="audio_colum"):
        SourceMapping.from_yaml(tmp_path / "map.yaml")


def test_missing_audio_column_names_the_row(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"file": "a.wav"}\n')
    with pytest.raises(ValueError, match="row 0.*audio_column"):
        list(read_source(tmp_path / "m.jsonl"))


def test_hf_parquet_and_save_to_disk_sources(tmp_path):
    import datasets

    from tests.data.conftest import write_tone

    write_tone(tmp_path / "a.wav", 0.2), write_tone(tmp_path / "b.wav", 0.2)
    table = datasets.Dataset.from_dict({
        "audio": [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")], "text": ["one", "two"],
        "emotion": ["Happy", "Sad"],
    })
    table.to_parquet(str(tmp_path / "train.parquet"))
    from_parquet = list(read_source(tmp_path / "train.parquet"))
    assert [(i.transcript, i.attributes["Emotion"]) for i in from_parquet] == [("one", "Happy"), ("two", "Sad")]
    table.cast_column("audio", datasets.Audio(decode=False)).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="extract_audio_to"):  # save_to_disk embedded the bytes
        list(read_source(tmp_path / "saved"))
    mapping = SourceMapping(extract_audio_to=str(tmp_path / "extracted"))
    from_disk = list(read_source(tmp_path / "saved", mapping))
    assert [i.audio for i in from_disk] == [str(tmp_path / "extracted/saved/a.wav"), str(tmp_path / "extracted/saved/b.wav")]
    assert (tmp_path / "extracted/saved/a.wav").read_bytes() == (tmp_path / "a.wav").read_bytes()
