"""Judge prompts: defaults send the messages the scorers always sent; a user's JSON file replaces them, checked."""

import json

import pytest
from typer.testing import CliRunner

from desta_audio.eval import cli
from desta_audio.eval.benchmarks import sakura, speech_ifeval, voicebench
from desta_audio.eval.judge import FakeJudge
from desta_audio.eval.judge_prompts import JudgePrompt, load_overrides
from desta_audio.eval.records import write_jsonl


def test_defaults_keep_the_established_messages():
    assert sakura.judge_messages("Q?", "dog", "A dog.") == [
        {"role": "system", "content": sakura.JUDGE_SYSTEM},
        {"role": "user", "content": "Question: Q?\nGround truth: dog\nResponse: A dog."}]
    assert speech_ifeval.JUDGE_PROMPTS["accuracy"].messages(instruction="I", label="L", response="R")[1]["content"] \
        == "Question: I\nGround Truth Answer: L\nModel's Response: R"


def test_placeholders_fill_in_one_pass_and_empty_system_sends_none():
    prompt = JudgePrompt("", "Q: {prompt}\nRef: {reference}\nA: {response}")
    messages = prompt.messages(prompt="say {response}", reference="x", response="I said {reference}")
    assert messages == [{"role": "user", "content": "Q: say {response}\nRef: x\nA: I said {reference}"}]
    with pytest.raises(KeyError, match="reference"):
        prompt.messages(prompt="p", response="r")


def _write(tmp_path, data) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("data, message", [
    ("{not json", "cannot read judge prompts"),
    ([1, 2], "expected an object keyed by benchmark name"),
    ({"voicebench": {"opn": {"user": "{prompt} {response}"}}}, "unknown prompt; voicebench has \\['open', 'qa'\\]"),
    ({"voicebench": {"open": {"user": "{prompt} only"}}}, "exactly the placeholders \\['{prompt}', '{response}'\\]"),
    ({"voicebench": {"open": {"user": 3}}}, "must be strings"),
    ({"voicebench": {"open": {"usr": "x"}}}, "expected an object with 'system' and/or 'user'"),
])
def test_bad_override_files_are_refused_with_the_reason(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_overrides(_write(tmp_path, data), "voicebench", voicebench.JUDGE_PROMPTS)


def test_override_reaches_the_judge_and_is_recorded(tmp_path):
    custom = {"voicebench": {"qa": {"system": "Grade it.", "user": "{prompt} | {reference} | {response}"}},
              "sakura": {"grade": {"user": "ignored here: {question} {answer} {response}"}}}
    overrides = load_overrides(_write(tmp_path, custom), "voicebench", voicebench.JUDGE_PROMPTS)
    judge = FakeJudge(default="Yes")
    rows = [{"id": "1", "subset": "sd-qa", "prompt": "capital?", "reference": "Paris", "response": "Paris"}]
    result = voicebench.score(rows, judge, use_pedant=False, judge_prompts=overrides)
    assert judge.calls[0][0] == [{"role": "system", "content": "Grade it."},
                                 {"role": "user", "content": "capital? | Paris | Paris"}]
    assert result["judge_prompts"]["replaced"] == ["qa"]
    assert voicebench.score(rows, FakeJudge(default="Yes"), use_pedant=False)["judge_prompts"]["replaced"] == []


def test_cli_score_with_judge_prompts_and_the_defaults_listing(tmp_path):
    predictions = tmp_path / "voicebench.commoneval.predictions.jsonl"
    write_jsonl(predictions, [{"id": "1", "subset": "commoneval", "prompt": "Sky colour?", "response": "Blue."}])
    prompts = _write(tmp_path, {"voicebench": {"open": {"system": "", "user": "Rate 1-5. {prompt} -> {response}"}}})
    runner = CliRunner()
    result = runner.invoke(cli.app, ["score", str(predictions), "--benchmark", "voicebench", "--judge", "fake",
                                     "--judge-prompts", prompts])
    assert result.exit_code == 0, result.output
    scores = json.loads(predictions.with_name("voicebench.commoneval.scores.json").read_text())
    assert scores["judge_prompts"]["replaced"] == ["open"]
    cached = (tmp_path / "judge-cache.jsonl").read_text()
    assert "Rate 1-5. Sky colour? -> Blue." in cached and voicebench.JUDGE_SYSTEM not in cached

    mmau = runner.invoke(cli.app, ["score", str(predictions), "--benchmark", "mmau", "--judge-prompts", prompts])
    assert mmau.exit_code != 0 and "not scored by a judge" in mmau.output

    listing = runner.invoke(cli.app, ["judge-prompts"])
    assert listing.exit_code == 0
    defaults = json.loads(listing.output)
    assert set(defaults) == {"dynamic_superb", "sakura", "speech_ifeval", "voicebench"}
    assert defaults["speech_ifeval"]["reasoning"]["system"] == speech_ifeval.COT_SYSTEM
    # the listing is itself a valid override file (every prompt replaced by itself)
    path = _write(tmp_path, defaults)
    assert load_overrides(path, "sakura", sakura.JUDGE_PROMPTS) == sakura.JUDGE_PROMPTS
