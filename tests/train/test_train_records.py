import json

import pytest
import yaml
from typer.testing import CliRunner

from desta_audio.train.records import RecordError, read_records

from tests.train.helpers import tiny_config

USER = {"role": "user", "content": "<start_audio><|AUDIO|><end_audio>\nwhat is it?",
        "audios": [{"audio": "a.wav", "text": None}]}
ANSWER = {"role": "assistant", "content": "a tone"}


def _write(folder, rows):
    (folder / "a.wav").write_bytes(b"")  # existence is what records check; decoding happens later
    path = folder / "records.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("bad, message", [
    ("not json", r"records.jsonl:2: not valid JSON"),
    ({"messages": []}, r"records.jsonl:2: needs a non-empty 'messages' list"),
    ({"messages": [USER]}, r"records.jsonl:2: the last message must be the assistant's target"),
    ({"messages": [{**USER, "audios": ["a.wav"]}, ANSWER]}, r"records.jsonl:2: message 1: each audio must be"),
    ({"messages": [{**USER, "audios": [{"audio": "gone.wav"}]}, ANSWER]},
     r"records.jsonl:2: message 1: audio 'gone.wav' not found \(looked for .*gone.wav\)"),
    ({"messages": [{**USER, "audios": []}, ANSWER]}, r"records.jsonl:2: .*1 <\|AUDIO\|> locator\(s\) but 0 audio"),
    ({"key": "first", "messages": [USER, ANSWER]}, r"records.jsonl:2: duplicate record key 'first'"),
    (["not", "an object"], r"records.jsonl:2: expected a JSON object with a 'messages' list, got a list"),
    ({"messages": ["hello", "world"]}, r"records.jsonl:2: message 1 must be an object with a 'role' and a "
                                        r"'content', got the string 'hello'"),
    ({"messages": [{**USER, "audios": [{"audio": "a.wav", "text": 5}]}, ANSWER]},
     r"records.jsonl:2: message 1: audio 'a.wav': 'text' must be the transcript as a string, or null, got a number"),
    ({"messages": [{**USER, "audios": "a.wav"}, ANSWER]}, r"records.jsonl:2: message 1: 'audios' must be a list"),
    ({"messages": [USER, {"role": "assistant", "content": ["a", "tone"]}]},
     r"records.jsonl:2: message 2 \(assistant\): 'content' must be text, got a list"),
    ({"messages": [{"role": "user", "content": {"text": "hi"}}, ANSWER]},
     r"records.jsonl:2: message 1 \(user\): 'content' must be text, got an object"),
])
def test_bad_records_name_file_line_and_fault(tmp_path, bad, message):
    path = _write(tmp_path, [{"key": "first", "messages": [USER, ANSWER]}, bad])
    with pytest.raises(RecordError, match=message):
        read_records(path)


def test_good_records_resolve_audio_beside_the_file(tmp_path):
    [record] = read_records(_write(tmp_path, [{"key": "k", "messages": [USER, ANSWER]}]))
    assert record.audios[0].path == str(tmp_path / "a.wav") and record.target == "a tone"
    assert record.where == record.audios[0].where == f"{tmp_path / 'records.jsonl'}:1"


def test_desta_train_stops_on_bad_records_with_one_line_and_no_run_state(tmp_path, monkeypatch):
    from desta_audio.cli import _register_subcommands, app

    monkeypatch.setattr("tests.tiny.tiny_model", lambda: pytest.fail("model built before the records were read"))
    _register_subcommands()
    data = _write(tmp_path, [{"key": "k", "messages": [{**USER, "audios": [{"audio": "gone.wav"}]}, ANSWER]}])
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, data)))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert "cannot train on this data:" in result.output and "gone.wav' not found" in result.output
    assert "Traceback" not in result.output
    assert not any((tmp_path / "run").glob("checkpoint*"))
