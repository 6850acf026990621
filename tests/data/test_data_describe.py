import json
from pathlib import Path

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


@pytest.mark.parametrize(("text", "reason"), [
    ("kind: speach\n", "kind: Input should be 'speech', 'sound' or 'music'."),
    ("dataset: [x\n", "not valid YAML (line 2, column 1: expected ',' or ']'"),
])  # fmt: skip
def test_mapping_mistakes_are_explained_in_one_line(tmp_path, text, reason):
    (tmp_path / "map.yaml").write_text(text)
    with pytest.raises(ValueError) as raised:
        SourceMapping.from_yaml(tmp_path / "map.yaml")
    assert reason in str(raised.value) and "\n" not in str(raised.value)


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


def test_tsv_quotes_are_plain_text(tmp_path):
    (tmp_path / "cv.tsv").write_text('audio\ttext\tgender\na.wav\t"Quoted start" she said\tmale\n'
                                     'b.wav\t"Unbalanced quote here\tfemale\nc.wav\tthird row\tmale\n')
    items = list(read_source(tmp_path / "cv.tsv"))
    assert [i.transcript for i in items] == ['"Quoted start" she said', '"Unbalanced quote here', "third row"]
    assert [i.attributes["Gender"] for i in items] == ["male", "female", "male"]
    (tmp_path / "q.csv").write_text('audio,text\na.wav,"comma, inside"\n')  # CSV keeps standard quoting
    assert next(read_source(tmp_path / "q.csv")).transcript == "comma, inside"


@pytest.mark.parametrize("name, text", [("m.csv", "audio,text\na.wav,hello\n"),
                                        ("m.tsv", "audio\ttext\na.wav\thello\n"),
                                        ("m.jsonl", '{"audio": "a.wav", "text": "hello"}\n'),
                                        ("m.json", '[{"audio": "a.wav", "text": "hello"}]')])  # fmt: skip
def test_utf8_byte_order_mark_is_accepted(tmp_path, name, text):
    (tmp_path / name).write_bytes("\ufeff".encode() + text.encode())
    assert [(i.id, i.transcript) for i in read_source(tmp_path / name)] == [("a.wav", "hello")]


@pytest.mark.parametrize("name, text, line", [
    ("m.csv", "audio,text\na.wav,caf\xe9\n", 2),
    ("m.jsonl", '{"audio": "a.wav"}\n{"audio": "b.wav", "text": "caf\xe9"}\n', 2),
    ("m.json", '[{"audio": "a.wav",\n "text": "caf\xe9"}]', 2),
])  # fmt: skip
def test_other_encodings_name_the_file_and_line(tmp_path, name, text, line):
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{name}:{line} is not UTF-8 \(byte 0xe9\); save the manifest as UTF-8"):
        list(read_source(tmp_path / name))


def test_mapped_columns_that_no_row_has_are_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "hi", "sex": "F"}\n{"audio": "b.wav", "sex": "M"}\n')
    typo = SourceMapping.model_validate({"transcript_column": "words", "attributes": {"sexx": "Gender", "sex": "Sex"}})
    with pytest.raises(ValueError, match=r"'words' \(transcript_column\), 'sexx' \(attributes: Gender\); the rows "
                                         r"have \['audio', 'sex', 'text'\]"):
        list(read_source(tmp_path / "m.jsonl", typo))
    # present in some row only: fine (an empty cell); defaults are only tried; an empty source has nothing to check
    assert len(list(read_source(tmp_path / "m.jsonl", SourceMapping.model_validate({"attributes": {"sex": "G"}})))) == 2
    assert len(list(read_source(tmp_path / "m.jsonl"))) == 2
    (tmp_path / "empty.jsonl").write_text("")
    assert list(read_source(tmp_path / "empty.jsonl", typo)) == []


def test_mapped_attributes_also_match_rows_that_carry_them_by_name(tmp_path):
    """A described row (named attributes, `transcript`) read again with the mapping that made it."""
    (tmp_path / "d.jsonl").write_text(json.dumps({"audio": "a.wav", "transcript": "hi", "duration": 1,
                                                  "attributes": {"Gender": "F"}}) + "\n")  # fmt: skip
    mapping = SourceMapping.model_validate({"transcript_column": "words", "attributes": {"sex": "Gender"}})
    assert next(read_source(tmp_path / "d.jsonl", mapping)).attributes == {"Gender": "F"}


def _embedded_parquet(path, rows):
    import datasets

    table = datasets.Dataset.from_dict({"id": [r[0] for r in rows],
                                        "audio": [{"path": r[1], "bytes": r[2]} for r in rows]})  # fmt: skip
    table.cast_column("audio", datasets.Audio(decode=False)).to_parquet(str(path))


def test_embedded_audio_of_the_same_name_never_shares_a_file(tmp_path, monkeypatch):
    from tests.data.conftest import write_tone

    tones = [write_tone(tmp_path / f"t{n}.wav", 0.2, 200 + 100 * n).read_bytes() for n in range(4)]
    _embedded_parquet(tmp_path / "hf.parquet", [
        ("s1_001", "spk1/001.wav", tones[0]), ("s2_001", "spk2/001.wav", tones[1]),  # subfolders keep them apart
        ("a", "/orig/a/x.wav", tones[2]), ("b", "/orig/b/x.wav", tones[3]),  # absolute: only the name is kept
        ("a_again", "/orig/c/x.wav", tones[2]),  # same bytes, same name: the same file is fine
    ])  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    mapping = SourceMapping(extract_audio_to="extracted")  # relative to where the command runs
    items = list(read_source(tmp_path / "hf.parquet", mapping))
    assert [i.id for i in items] == ["s1_001", "s2_001", "a", "b", "a_again"]
    monkeypatch.chdir(elsewhere)  # stored paths resolve from anywhere
    audio = {i.id: Path(i.audio) for i in items}
    assert all(p.is_absolute() and p.exists() for p in audio.values())
    assert audio["s1_001"] == tmp_path / "extracted/hf/spk1/001.wav" and audio["a"] == tmp_path / "extracted/hf/x.wav"
    assert [audio[k].read_bytes() for k in ("s1_001", "s2_001", "a", "b")] == tones
    assert audio["a_again"] == audio["a"] and audio["b"] != audio["a"]
    monkeypatch.chdir(tmp_path)
    assert [i.audio for i in read_source(tmp_path / "hf.parquet", mapping)] == [str(audio[i.id]) for i in items]


def test_missing_duration_comes_from_the_audio_header(tmp_path):
    from tests.data.conftest import write_tone

    write_tone(tmp_path / "a.wav", 2.5)
    item = SourceItem(id="a.wav", dataset="d", audio=str(tmp_path / "a.wav"), transcript="Hello")
    assert describe(item) == "[00:00-00:03] Hello (Duration: 2.5s)"
    missing = SourceItem(id="gone.wav", dataset="d", audio=str(tmp_path / "gone.wav"), transcript="Hello")
    with pytest.raises(ValueError, match="'gone.wav' .* no duration in its metadata .*gone.wav: no such file"):
        describe(missing)


def test_multi_speaker_clip_without_clip_attributes_keeps_its_duration():
    item = SourceItem(id="d.wav", dataset="d", audio="d.wav", duration=12.0,
                      segments=[Segment(0.0, 3.0, "Hi.", "A"), Segment(3.0, 11.5, "Hello.", "B")])
    assert describe(item).splitlines() == ["[00:00-00:12] (Duration: 12s)", "[00:00-00:03] A: Hi.",
                                           "[00:03-00:12] B: Hello."]  # fmt: skip
