"""A bad item never stops a run nor loses other items; a resumed run never mixes predictions of other data."""

import json

import pytest
from typer.testing import CliRunner

from desta_audio.audio import load_audio
from desta_audio.eval import cli
from desta_audio.eval.records import AudioRef, EvalItem, audio_message, read_jsonl
from desta_audio.eval.runner import ResumeMismatch, run_inference

from tests.eval.helpers import FakeSystem, write_tone
from tests.eval.test_mmau import _write_mmau


def _plain(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


class DecodingSystem(FakeSystem):
    """Decodes every clip of the batch before answering, as the DeSTA model does: one unusable clip fails the
    whole batch call."""

    def chat(self, conversations, **generation):
        for conversation in conversations:
            for message in conversation:
                for audio in message.get("audios") or []:
                    load_audio(audio["audio"])
        return super().chat(conversations, **generation)


def _clip_items(tmp_path):
    good = write_tone(tmp_path / "good.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not really a wave file")
    clips = {"a": good, "b": tmp_path / "missing.wav", "c": broken, "d": good}
    return [EvalItem(id=name, conversation=audio_message("", f"<|AUDIO|> {name}", [AudioRef(path=str(path))]),
                     reference={"label": name}) for name, path in clips.items()]


def test_bad_audio_is_logged_beside_the_predictions_and_retried_by_the_next_run(tmp_path):
    items = _clip_items(tmp_path)
    items.append(EvalItem(id="e", conversation=audio_message("", "<|AUDIO|> e", [AudioRef(data=b"garbage")])))
    predictions = tmp_path / "run" / "x.predictions.jsonl"
    system = DecodingSystem(lambda c: c[-1]["content"].split()[-1])
    run_inference(system, items, predictions, batch_size=5)
    assert [row["id"] for row in read_jsonl(predictions)] == ["a", "d"]
    errors = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "x.errors.jsonl")}
    assert sorted(errors) == ["b", "c", "e"]
    assert errors["b"]["audio"] == [str(tmp_path / "missing.wav")]
    assert "no such audio file" in errors["b"]["error"] and "\n" not in errors["c"]["error"]
    assert errors["c"]["reference"] == {"label": "c"}
    manifest = json.loads((tmp_path / "run" / "x.manifest.json").read_text())
    assert manifest["items_failed"] == 3 and manifest["items_done"] == 2

    write_tone(tmp_path / "missing.wav")  # the user restores the clip
    again = DecodingSystem(lambda c: c[-1]["content"].split()[-1])
    run_inference(again, items, predictions, batch_size=5)
    assert [row["id"] for row in read_jsonl(predictions)] == ["a", "d", "b"]
    assert [c[-1]["content"] for batch in again.calls for c in batch] == ["<|AUDIO|> b"]  # only the failed ones
    assert sorted(row["id"] for row in read_jsonl(tmp_path / "run" / "x.errors.jsonl")) == ["c", "e"]


def _mmau_with_bad_items(root):
    path = _write_mmau(root, with_id=True)
    records = json.loads(path.read_text())
    (root / records[1]["audio_id"]).write_bytes(b"not audio at all")  # a broken WAV
    records.append({**records[0], "id": "mmau-missing", "audio_id": "./test-mini-audios/gone.wav"})
    path.write_text(json.dumps(records))
    return path


def test_cli_run_goes_on_past_bad_items_scores_them_as_missing_and_exits_non_zero(tmp_path, monkeypatch):
    data = _mmau_with_bad_items(tmp_path / "data")
    monkeypatch.setattr(cli, "_system", lambda *_: DecodingSystem(lambda c: "The correct answer is: Dog barking"))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["mmau", "--data", str(data), "--out", str(out), "--batch-size", "4"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = _plain(result.output)
    assert "2 of 4 items failed" in text and "mmau.test-mini.errors.jsonl" in text
    assert "mmau-missing" in text and "run the same command again" in text
    rows = read_jsonl(out / "mmau.test-mini.predictions.jsonl")
    assert sorted(row["id"] for row in rows) == ["mmau-0", "mmau-2"]
    scores = json.loads((out / "mmau.test-mini.scores.json").read_text())
    assert scores["missing_predictions"] == 2
    assert scores["total"] == {"accuracy": 25.0, "correct": 1, "total": 4}  # the failed items count as wrong


def test_malformed_record_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_system", lambda *_: (_ for _ in ()).throw(AssertionError("model loaded")))
    path = _write_mmau(tmp_path, with_id=True)
    records = json.loads(path.read_text())
    records[2]["choices"] = None
    path.write_text(json.dumps(records))
    result = CliRunner().invoke(cli.app, ["mmau", "--data", str(path), "--out", str(tmp_path / "run")],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "record 3 (id 'mmau-2'): 'choices' must be a list of options, got null" in _plain(result.output)


def test_replay_cache_miss_is_a_one_line_error_saying_how_to_fill_the_cache(tmp_path):
    predictions = tmp_path / "sakura.predictions.jsonl"
    predictions.write_text(json.dumps({"id": "Animal/a/single", "track": "Animal", "hop": "single",
                                       "question": "What? (a) dog (b) cat", "answer": "(a) dog",
                                       "response": "dog"}) + "\n")
    cache = tmp_path / "cache.jsonl"
    cache.write_text("")
    result = CliRunner().invoke(cli.app, ["score", str(predictions), "--benchmark", "sakura",
                                          "--judge", "replay:gpt-4o-2024-11-20", "--judge-cache", str(cache)],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = _plain(result.output)
    assert "no cached verdict" in text and "live judge" in text


def test_judge_setup_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    predictions = tmp_path / "sakura.predictions.jsonl"
    predictions.write_text(json.dumps({"id": "x", "track": "Animal", "hop": "single", "question": "q",
                                       "answer": "a", "response": "r"}) + "\n")
    result = CliRunner().invoke(cli.app, ["score", str(predictions), "--benchmark", "sakura", "--judge",
                                          "openai", "--judge-key-env", "NO_SUCH_KEY"], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "NO_SUCH_KEY is not set" in _plain(result.output)
    assert "--judge-base-url" in _plain(result.output)  # the option a local judge server needs, by name


def _sdqa_two_accents(path):
    import datasets

    from tests.eval.helpers import wav_bytes

    def split(accent):
        table = datasets.Dataset.from_dict({
            "audio": [{"bytes": wav_bytes(300 + 50 * i), "path": f"{accent}{i}.wav"} for i in range(2)],
            "prompt": [f"{accent} question {i}" for i in range(2)], "reference": ["Paris", "Rome"],
            "id": ["0", "1"]})
        return table.cast_column("audio", datasets.Audio(sampling_rate=16_000, decode=False))

    datasets.DatasetDict({"usa": split("usa"), "aus": split("aus")}).save_to_disk(str(path))
    return path


def test_voicebench_accents_go_to_their_own_predictions_files(tmp_path, monkeypatch):
    data = _sdqa_two_accents(tmp_path / "vb" / "sd-qa")
    monkeypatch.setattr(cli, "_system", lambda *_: FakeSystem(lambda c: "an answer"))
    out = tmp_path / "runvb"
    for accent in ("usa", "aus"):
        result = CliRunner().invoke(cli.app, ["voicebench", "--data", str(data), "--split", accent, "--out",
                                              str(out), "--no-score"])
        assert result.exit_code == 0, result.output
    aus = read_jsonl(out / "voicebench.sd-qa.aus.predictions.jsonl")
    assert [row["prompt"] for row in aus] == ["aus question 0", "aus question 1"]
    manifest = json.loads((out / "voicebench.sd-qa.aus.manifest.json").read_text())
    assert manifest["split"] == "aus" and manifest["data_version"] == "voicebench/sd-qa/aus"
    assert [row["split"] for row in read_jsonl(out / "voicebench.sd-qa.predictions.jsonl")] == ["usa", "usa"]


def test_resume_refuses_predictions_of_other_data_until_told_to_restart(tmp_path, monkeypatch):
    first = _write_mmau(tmp_path / "first", with_id=True)
    second = _write_mmau(tmp_path / "second", with_id=True)
    monkeypatch.setattr(cli, "_system", lambda *_: FakeSystem(lambda c: "Piano"))
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(cli.app, ["mmau", "--data", str(first), "--out", str(out)]).exit_code == 0
    refused = runner.invoke(cli.app, ["mmau", "--data", str(second), "--out", str(out)], env={"COLUMNS": "300"})
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    text = _plain(refused.output)
    assert "already holds 3 predictions" in text and "--restart" in text and "another --out" in text
    predictions = out / "mmau.test-mini.predictions.jsonl"
    kept = predictions.read_text()
    restarted = runner.invoke(cli.app, ["mmau", "--data", str(second), "--out", str(out), "--restart"])
    assert restarted.exit_code == 0, restarted.output
    manifest = json.loads((out / "mmau.test-mini.manifest.json").read_text())
    assert manifest["data"] == str(second.resolve()) and "inference_resumed" not in manifest
    moved = [p for p in out.iterdir() if ".predictions.jsonl.replaced-" in p.name]
    assert len(moved) == 1 and moved[0].read_text() == kept  # the old predictions are kept aside, not lost


def test_runner_checks_the_system_of_a_resumed_run(tmp_path):
    items = _clip_items(tmp_path)[:1]
    predictions = tmp_path / "p.predictions.jsonl"
    run_inference(FakeSystem(lambda c: "x"), items, predictions, manifest={"model": "desta-mini", "split": "test"})
    with pytest.raises(ResumeMismatch, match="model: 'desta-mini' there, 'desta-tiny' now"):
        run_inference(FakeSystem(lambda c: "x"), items, predictions, manifest={"model": "desta-tiny", "split": "test"})
