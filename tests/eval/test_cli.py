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
    scores = json.loads((out / "mmau.test-mini.scores.json").read_text())
    assert scores["total"]["correct"] == 2 and scores["data_version"] == "v05.15.25"
    manifest = json.loads((out / "mmau.test-mini.manifest.json").read_text())
    assert manifest["generation"] == {"max_new_tokens": 512, "do_sample": False}
    assert manifest["scoring"]["scorer_version"] == "mmau-string-match-2"
    raw = runner.invoke(cli.app, ["score", str(out / "mmau.test-mini.predictions.jsonl"), "--raw"])
    assert raw.exit_code == 0, raw.output
    assert json.loads((out / "mmau.test-mini.scores.json").read_text())["scored_text"] == "raw response"
    report = runner.invoke(cli.app, ["report", str(out), "--label", "fake"])
    assert report.exit_code == 0 and (out / "report.png").exists()


def test_speech_ifeval_runs_reference_backbone_names_each_summary_and_replays_judge(tmp_path, monkeypatch):
    data = _sif_fixture(tmp_path / "sif")

    class FakeDesta(FakeSystem):
        llm, tokenizer = None, None

    monkeypatch.setattr(cli, "_system", lambda *_: FakeDesta(lambda c: "- a\n- b"))
    from desta_audio.eval import systems

    monkeypatch.setattr(systems.TextBackbone, "from_desta",
                        classmethod(lambda cls, m: FakeSystem(lambda c: "the weather is nice", uses_text_audio=True)))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["speech-ifeval", "--data", str(data), "--out", str(out),
                                          "--judge", "fake"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "speech_ifeval.reference" in result.output  # each summary names its run
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
    foreign = CliRunner().invoke(cli.app, ["score", str(out / "speech_ifeval.predictions.jsonl"),
                                           "--benchmark", "sakura", "--judge", "fake"], env={"COLUMNS": "300"})
    assert foreign.exit_code == 2 and "--data" not in foreign.output and "--benchmark" in foreign.output


def test_unreadable_benchmark_data_is_a_one_line_error_before_any_model_work(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_system", lambda *_: (_ for _ in ()).throw(AssertionError("model loaded")))
    monkeypatch.chdir(tmp_path)  # short relative paths: the error box wraps long lines
    cases = {
        "broken.jsonl": ('{"id": 1, "question": "q"\n', "broken.jsonl:1: not valid JSON"),
        "broken.json": ('[{"id": 1},\n', "broken.json:2: not valid JSON"),
        "numbers.json": ("[1, 2]", "record 1 is not an object"),
        "scalar.json": ('"text"', "expected a list of records"),
        "no_choices.json": ('[{"id": "x", "question": "q", "answer": "a", "audio_id": "a.wav"}]',
                            "no_choices.json: record 1 (id 'x') has no 'choices' field"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        result = CliRunner().invoke(cli.app, ["mmau", "--data", name, "--model", "fake", "--out", "run"],
                                    env={"COLUMNS": "300"})
        text = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and message in text, (name, result.output)
        assert "Traceback" not in result.output
    missing = CliRunner().invoke(cli.app, ["mmau", "--data", "nope", "--model", "fake"], env={"COLUMNS": "300"})
    assert missing.exit_code == 2 and "no such file or folder" in " ".join(missing.output.replace("│", " ").split())
    assert not (tmp_path / "run").exists()


def test_unreadable_predictions_and_empty_run_folder_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mmau.predictions.jsonl").write_text('{"id": 1}\nnot json\n')
    score = CliRunner().invoke(cli.app, ["score", "run/mmau.predictions.jsonl", "--benchmark", "mmau"],
                               env={"COLUMNS": "300"})
    assert score.exit_code == 2 and "mmau.predictions.jsonl:2: not valid JSON" in score.output
    report = CliRunner().invoke(cli.app, ["report", "run"], env={"COLUMNS": "300"})
    assert report.exit_code == 2 and "no *.scores.json" in report.output


def test_max_new_tokens_also_bounds_the_text_only_reference_run(tmp_path, monkeypatch):
    seen: dict[str, list] = {"desta": [], "reference": []}

    class Recording(FakeSystem):
        llm, tokenizer = None, None

        def __init__(self, role, **kwargs):
            super().__init__(lambda c: "- a\n- b", **kwargs)
            self.role = role

        def chat(self, conversations, **generation):
            seen[self.role].append(generation["max_new_tokens"])
            return super().chat(conversations, **generation)

    monkeypatch.setattr(cli, "_system", lambda *_: Recording("desta"))
    from desta_audio.eval import systems

    monkeypatch.setattr(systems.TextBackbone, "from_desta",
                        classmethod(lambda cls, m: Recording("reference", uses_text_audio=True)))
    result = CliRunner().invoke(cli.app, ["speech-ifeval", "--data", str(_sif_fixture(tmp_path / "sif")),
                                          "--out", str(tmp_path / "run"), "--max-new-tokens", "7", "--no-score"])
    assert result.exit_code == 0, result.output
    assert set(seen["desta"]) == {7} and set(seen["reference"]) == {7}


def test_scoring_options_of_the_table_work_on_the_benchmark_commands(tmp_path, monkeypatch):
    data = _write_mmau(tmp_path / "data", with_id=True)
    monkeypatch.setattr(cli, "_system", lambda *_: FakeSystem(lambda c: "Piano"))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["mmau", "--data", str(data), "--model", "fake", "--out", str(out),
                                          "--missing", "skip"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "mmau.test-mini.manifest.json").read_text())
    assert manifest["scoring"]["options"]["missing"] == "skip"
    monkeypatch.setattr(cli, "_system", lambda *_: FakeSystem(lambda c: "- a\n- b"))
    result = CliRunner().invoke(cli.app, ["speech-ifeval", "--data", str(_sif_fixture(tmp_path / "sif")),
                                          "--out", str(out), "--judge", "fake", "--no-reference-backbone",
                                          "--paragraph-split", "blank_lines"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "speech_ifeval.scores.json").read_text())["paragraph_split"] == "blank_lines"
    bad = CliRunner().invoke(cli.app, ["score", str(out / "speech_ifeval.predictions.jsonl"), "--missing", "drop"])
    assert bad.exit_code == 2


def test_retention_help_describes_its_own_options():
    result = CliRunner().invoke(cli.app, ["retention", "--help"], env={"COLUMNS": "250"})
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 0 and "api" not in text and "(JSON)" in text and "longest answer" in text


def test_dynamic_superb_empty_label_option_reaches_the_scorer(tmp_path):
    predictions = tmp_path / "dynamic_superb.predictions.jsonl"
    rows = [{"id": f"SpeechDetection_X/{i}", "instance": "SpeechDetection_X", "dimension": "Content", "label": label,
             "instruction": "?", "response": "It is music."} for i, label in enumerate(["[noise]", "yes"])]
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = tmp_path / "dynamic_superb.scores.json"
    overall = {}
    for option in ("match", "wrong"):
        result = CliRunner().invoke(cli.app, ["score", str(predictions), "--benchmark", "dynamic_superb",
                                              "--empty-label", option])
        assert result.exit_code == 0, result.output
        overall[option] = json.loads(scores.read_text())["overall"]
    assert overall == {"match": 50.0, "wrong": 0.0}  # "[noise]" has no words: DeSTA's metric matches any reply
    assert CliRunner().invoke(cli.app, ["dynamic-superb", "--help"], env={"COLUMNS": "250"}).output.count(
        "--empty-label") == 1
