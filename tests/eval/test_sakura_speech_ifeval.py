import json

import pytest

from desta_audio.eval.benchmarks import sakura, speech_ifeval
from desta_audio.eval.judge import FakeJudge
from desta_audio.eval.records import AUDIO_TAG

from tests.eval.helpers import write_speech, write_tone


def _sakura_fixture(root):
    for track, label in (("Animal", "dog"), ("Gender", "female")):
        folder = root / track
        write_tone(folder / "audio" / "clip1.wav")
        (folder / "metadata.json").write_text(json.dumps([{
            "file": "clip1.wav", "attribute_label": label,
            "single_instruction": f"What is it? (a) cat (b) {label}",
            "single_answer": f"(b) {label}",
            "multi_instruction": "Which is related? (a) bone (b) fish", "multi_answer": "(a) bone",
        }]))
    return root


def _sakura_verdicts(messages, params):
    text = messages[1]["content"]
    response = text.split("Response: ")[-1]
    if response == "garbled":
        return "I think it is right."  # no Explanation/Judgement lines: a parse failure
    truth = text.split("Ground truth: ")[1].split("\n")[0]
    verdict = "correct" if truth.split(") ")[1] in response else "incorrect"
    return f"Explanation: compared.\nJudgement: {verdict}"


def test_sakura_load_and_judge_scoring(tmp_path):
    items, info = sakura.load(_sakura_fixture(tmp_path))
    assert info["tracks"] == {"Animal": 1, "Gender": 1} and len(items) == 4
    assert items[0].id == "Animal/clip1.wav/single"
    assert items[0].conversation[1]["content"] == f"{AUDIO_TAG} What is it? (a) cat (b) dog"
    rows = [dict(id=i.id, **i.reference) for i in items]
    responses = {"Animal/clip1.wav/single": "It is a dog.", "Animal/clip1.wav/multi": "fish",
                 "Gender/clip1.wav/single": "female", "Gender/clip1.wav/multi": "garbled"}
    for row in rows:
        row["response"] = responses[row["id"]]
    judge = FakeJudge(rules=[_sakura_verdicts])
    result = sakura.score(rows, judge)
    assert result["tracks"] == {"Animal": {"single": 100.0, "multi": 0.0}, "Gender": {"single": 100.0, "multi": 0.0}}
    assert result["average"] == {"single": 100.0, "multi": 0.0}
    assert result["judge_parse_failures"] == 1  # stays in the denominator
    assert judge.calls[0][1] == {"temperature": 0, "top_p": 0.9}
    with pytest.raises(ValueError, match="judge only"):
        sakura.score(rows, None)


@pytest.mark.parametrize("text, expected", [
    ("Explanation: fine.\nJudgement: correct", "correct"),
    ("Explanation: no.\nJudgement: Incorrect\n\nextra", "incorrect"),
    ("Explanation: hmm.\nJudgement: partially correct", None),
    ("Judgement: correct", None),
    ("", None),
])
def test_sakura_verdict_parser(text, expected):
    assert sakura.parse_verdict(text) == expected


def _sif_fixture(root):
    write_speech(root / "audios" / "a1.wav", "the weather is nice today")
    common = {"audio_filepath": "audios/a1.wav", "textual_audio": "[00:00-00:02] the weather is nice today",
              "dataset": "ASR", "label": "the weather is nice today", "key": 1}
    files = {
        "closed_ended_questions.jsonl": [
            {**common, "id": 1, "instruction": "Transcribe. Answer in lowercase.", "metric": "if",
             "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
            {**common, "id": 2, "instruction": "Transcribe. Wrap in JSON.", "metric": "if",
             "instruction_id_list": ["detectable_format:json_format"], "kwargs": [{}]},
        ],
        "creative_writing.jsonl": [
            {**common, "id": 1, "instruction": "Write 2 bullets.", "metric": "if",
             "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 2}]},
        ],
        "chain-of-thought.jsonl": [
            {**common, "id": 1, "instruction": "What is said? Think step by step.", "metric": "cot",
             "instruction_id_list": [], "kwargs": []},
            {**common, "id": 2, "instruction": "Why? Think step by step.", "metric": "cot",
             "instruction_id_list": [], "kwargs": []},
        ],
        "closed_ended_questions-woprompt.jsonl": [
            {**common, "id": 1, "instruction": "Transcribe the audio.", "metric": "wer",
             "instruction_id_list": [], "kwargs": []},
            {**common, "id": 2, "instruction": "Gender?", "metric": "accuracy", "dataset": "GR", "label": "female",
             "instruction_id_list": [], "kwargs": []},
        ],
    }
    for name, rows in files.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_speech_ifeval_load_prompts(tmp_path):
    items, info = speech_ifeval.load(_sif_fixture(tmp_path))
    assert info["subsets"]["closed_ended_questions"] == 2 and len(items) == 7
    first = items[0]
    assert first.id == "closed_ended_questions/1"
    assert first.conversation[1]["audios"][0]["audio"].path == str(tmp_path / "audios/a1.wav")
    assert first.text_conversation == [
        {"role": "system", "content": "Follow the given instructions."},
        {"role": "user", "content": "Speech Input: [00:00-00:02] the weather is nice today\n\n"
                                    "Transcribe. Answer in lowercase."}]


def _sif_rows(tmp_path, responses):
    items, _ = speech_ifeval.load(_sif_fixture(tmp_path))
    return [dict(id=i.id, response=responses.get(i.id, ""), **i.reference) for i in items]


def _sif_judge():
    def rule(messages, params):
        system, user = messages[0]["content"], messages[1]["content"]
        if "**substring**" in system:
            return user.split("Model's Response: ")[-1].replace("Sure: ", "")
        if "reasoning" in system:
            if "unreadable" in user:
                return "I cannot decide."
            return "Result: YES" if "because" in user else "Result: NO"
        return "Result: YES" if "female" in user.split("Model's Response: ")[-1] else "Result: NO"
    return FakeJudge(rules=[rule])


def test_speech_ifeval_ifrate_forgetting_and_task_accuracy(tmp_path):
    responses = {
        "closed_ended_questions/1": "the weather is nice today",      # follows
        "closed_ended_questions/2": "weather: nice",                  # not JSON
        "creative_writing/1": "- sunny\n- warm",                      # 2 bullets
        "chain-of-thought/1": "First I listened, because ...",        # YES
        "chain-of-thought/2": "unreadable",                           # parse failure -> NO
        "closed_ended_questions-woprompt/1": "Sure: The weather is nice, today!",
        "closed_ended_questions-woprompt/2": "The speaker is female.",
    }
    result = speech_ifeval.score(_sif_rows(tmp_path, responses), _sif_judge(), reference_ifrate=80.0)
    assert result["rates"] == {"closed_ended_questions": 50.0, "creative_writing": 100.0, "chain-of-thought": 50.0}
    assert result["ifrate"] == pytest.approx(200 / 3)
    assert result["forgetting_delta"] == pytest.approx((200 / 3 - 80) / 80 * 100)
    assert result["judge_parse_failures"] == 1
    assert result["task_accuracy"]["GR"] == 100.0
    assert result["task_accuracy"]["ASR_WER"] == pytest.approx(0.0)  # normalised: case and punctuation removed


def test_speech_ifeval_without_judge_reports_rule_rates_only(tmp_path):
    result = speech_ifeval.score(_sif_rows(tmp_path, {}), None)
    assert result["rates"] == {"closed_ended_questions": 0.0, "creative_writing": 0.0}  # empty outputs fail
    assert "ifrate" not in result


@pytest.mark.parametrize("text, expected", [("Result: YES", "yes"), ("result: no.", "no"), ("Result:YES", None),
                                            ("**Result:** YES", None), ("", None)])
def test_result_parser_is_the_official_lookbehind(text, expected):
    assert speech_ifeval.parse_result(text) == expected


def test_speech_ifeval_kwargs_must_match_the_instructions(tmp_path):
    row = {"audio_filepath": "a.wav", "textual_audio": "t", "instruction": "Answer in lowercase.", "dataset": "ASR",
           "metric": "if", "id": 7, "label": "x", "instruction_id_list": ["change_case:english_lowercase"],
           "kwargs": {}}
    (tmp_path / "closed_ended_questions.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"closed_ended_questions.jsonl: record 1 \(id 7\): 1 instruction\(s\) "
                                         r"but 0 kwargs"):
        speech_ifeval.load(tmp_path)
    scored = [{"id": "closed_ended_questions/7", "subset": "closed_ended_questions", "response": "all lowercase",
               "instruction_id_list": ["change_case:english_lowercase"], "kwargs": []}]
    with pytest.raises(ValueError, match="closed_ended_questions/7: 1 instruction"):
        speech_ifeval.score(scored)


def test_speech_ifeval_item_without_instructions_counts_as_followed():
    # The official strict test takes all() over the item's checks: no check at all is a followed item.
    rows = [{"id": "closed_ended_questions/1", "subset": "closed_ended_questions", "response": "anything",
             "instruction_id_list": [], "kwargs": []},
            {"id": "closed_ended_questions/2", "subset": "closed_ended_questions", "response": "no quotes",
             "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}]
    result = speech_ifeval.score(rows)
    assert result["rates"]["closed_ended_questions"] == 50.0
    assert result["per_item"] == {"closed_ended_questions/1": True, "closed_ended_questions/2": False}


def test_speech_ifeval_score_records_the_judge(tmp_path):
    result = speech_ifeval.score(_sif_rows(tmp_path, {}), _sif_judge())
    assert result["judge"] == "fake" and result["judge_params"] == speech_ifeval.JUDGE_PARAMS
    assert result["judge_prompts"]["origin"] == "project wording"
