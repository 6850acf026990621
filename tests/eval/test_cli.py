import json

from typer.testing import CliRunner

from desta_audio.eval import cli

from tests.eval.helpers import FakeSystem
from tests.eval.test_mmau import _write_mmau
from tests.eval.test_sakura_speech_ifeval import _sif_fixture


def test_mmau_run_rescore_and_report(tmp_path, monkeypatch):
    data = _write_mmau(tmp_path / "data", with_id=True)
    answers = {"Question 0?": "The correct answer is: Dog barking", "Question 1?": "Guitar",
               "Question 2?": "The correct answer is: Angry"}
    monkeypatch.setattr(cli, "_system", lambda *_: FakeSystem(
        lambda c: next(v for k, v in answers.items() if k in c[-1]["content"])))
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(cli.app, ["mmau", "--data", str(data), "--model", "fake", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "mmau.scores.json").read_text())
    assert scores["total"]["correct"] == 2 and scores["data_version"] == "v05.15.25"
    manifest = json.loads((out / "mmau.manifest.json").read_text())
    assert manifest["generation"] == {"max_new_tokens": 512, "do_sample": False}
    assert manifest["scoring"]["scorer_version"] == "mmau-string-match-1"
    raw = runner.invoke(cli.app, ["score", str(out / "mmau.predictions.jsonl"), "--raw"])
    assert raw.exit_code == 0, raw.output
    assert json.loads((out / "mmau.scores.json").read_text())["scored_text"] == "raw response"
    report = runner.invoke(cli.app, ["report", str(out), "--label", "fake"])
    assert report.exit_code == 0 and (out / "report.png").exists()


def test_speech_ifeval_runs_reference_backbone_and_replays_judge(tmp_path, monkeypatch):
    data = _sif_fixture(tmp_path / "sif")

    class FakeDesta(FakeSystem):
        llm, tokenizer = None, None

    monkeypatch.setattr(cli, "_system", lambda *_: FakeDesta(lambda c: "- a\n- b"))
    from desta_audio.eval import systems

    monkeypatch.setattr(systems.TextBackbone, "from_desta",
                        classmethod(lambda cls, m: FakeSystem(lambda c: "the weather is nice", uses_text_audio=True)))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["speech-ifeval", "--data", str(data), "--out", str(out),
                                          "--judge", "fake"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "speech_ifeval.scores.json").read_text())
    reference = json.loads((out / "speech_ifeval.reference.scores.json").read_text())
    assert reference["rates"]["closed_ended_questions"] == 50.0  # lowercase passes, JSON fails
    assert scores["reference_ifrate"] == reference["ifrate"] and "forgetting_delta" in scores
    cache_lines = (out / "judge-cache.jsonl").read_text().splitlines()
    replay = CliRunner().invoke(cli.app, ["score", str(out / "speech_ifeval.predictions.jsonl"),
                                          "--judge", "replay:fake-heuristic",
                                          "--judge-cache", str(out / "judge-cache.jsonl"),
                                          "--reference-ifrate", str(reference["ifrate"])])
    assert replay.exit_code == 0, replay.output
    assert json.loads((out / "speech_ifeval.scores.json").read_text())["ifrate"] == scores["ifrate"]
    assert (out / "judge-cache.jsonl").read_text().splitlines() == cache_lines  # nothing new was asked
