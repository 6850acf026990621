import json

import pytest

from desta_audio.eval.benchmarks import mmau
from desta_audio.eval.records import AUDIO_TAG, read_jsonl
from desta_audio.eval.runner import run_inference

from tests.eval.helpers import FakeSystem, write_tone

CHOICES_SHARED = ["A man speaking", "A woman speaking", "A man singing", "Silence"]


@pytest.mark.parametrize(
    "answer, prediction, choices, expected",
    [
        ("Dog barking", "Dog barking", ["Dog barking", "Cat meowing", "Car horn", "Bird chirping"], True),
        # shared tokens: "a", "man", "speaking" also appear in other choices but are not counted against
        ("A man speaking", "a man is speaking", CHOICES_SHARED, True),
        ("A man speaking", "a man speaking, not a woman", CHOICES_SHARED, False),  # "woman" only in another choice
        ("A man speaking", "a man", CHOICES_SHARED, False),  # answer word "speaking" missing
        # a choice with the same word set as the answer is skipped when building the incorrect words
        ("dog cat", "cat dog", ["dog cat", "cat dog", "bird"], True),
        ("Silence", "", CHOICES_SHARED, False),  # empty prediction
        ("Silence", "...", CHOICES_SHARED, False),  # no word at all
    ],
)
def test_string_match_cases(answer, prediction, choices, expected):
    assert mmau.string_match(answer, prediction, choices) is expected


def test_prefix_is_stripped_by_default_and_raw_scoring_differs():
    # "correct", "answer", "is" are words of a wrong choice: the raw response fails, the stripped one passes
    rows = [{"id": "a", "response": "The correct answer is: No", "answer": "No",
             "choices": ["Yes, that is the correct answer", "No"], "task": "speech", "difficulty": "easy"}]
    assert mmau.score(rows)["total"]["accuracy"] == 100.0
    raw = mmau.score(rows, strip_prefix=False)
    assert raw["total"]["accuracy"] == 0.0
    assert raw["scored_text"] == "raw response"


def test_score_breakdown_missing_and_empty_outputs():
    rows = [
        {"id": "1", "response": 'The correct answer is: "Dog barking"', "answer": "Dog barking",
         "choices": ["Dog barking", "Cat meowing"], "task": "sound", "difficulty": "easy", "sub-category": "animals"},
        {"id": "2", "response": "Cat meowing", "answer": "Dog barking",
         "choices": ["Dog barking", "Cat meowing"], "task": "sound", "difficulty": "hard", "sub-category": "animals"},
        {"id": "3", "response": "The correct answer is: ", "answer": "Piano",
         "choices": ["Piano", "Guitar"], "task": "music", "difficulty": "easy", "sub-category": "instrument"},
        {"id": "4", "answer": "Piano", "choices": ["Piano", "Guitar"], "task": "music", "difficulty": "easy",
         "sub-category": "instrument"},  # no output at all
        {"id": "5", "response": "It is a guitar.", "answer": "Guitar",
         "choices": ["Piano", "Guitar"], "task": "music", "difficulty": "medium", "sub-category": "instrument"},
    ]
    result = mmau.score(rows)
    # correct: 1 and 5 -> 2/5
    assert result["total"] == {"accuracy": 40.0, "correct": 2, "total": 5}
    assert result["task"]["sound"]["accuracy"] == 50.0
    assert result["task"]["music"]["accuracy"] == pytest.approx(100 / 3)
    assert result["difficulty"]["easy"] == {"accuracy": pytest.approx(100 / 3), "correct": 1, "total": 3}
    assert result["missing_outputs"] == 1
    skipped = mmau.score(rows, missing="skip")  # the official script's behaviour
    assert skipped["total"] == {"accuracy": 50.0, "correct": 2, "total": 4}


def test_items_without_sub_category_are_left_out_of_that_breakdown():
    def row(ident, response, **extra):
        return {"id": ident, "response": response, "answer": "Piano", "choices": ["Piano", "Guitar"],
                "task": "music", "difficulty": "easy", **extra}

    rows = [row("1", "Piano", **{"sub-category": "instrument"}), row("2", "Guitar", **{"sub-category": None}),
            row("3", "Piano")]
    result = mmau.score(rows)
    # Only item 1 has a sub-category; items 2 and 3 still count in the total and the other breakdowns.
    assert result["sub-category"] == {"instrument": {"accuracy": 100.0, "correct": 1, "total": 1}}
    assert result["total"] == {"accuracy": pytest.approx(200 / 3), "correct": 2, "total": 3}
    assert result["task"]["music"]["total"] == 3


def _write_mmau(tmp_path, with_id: bool):
    items = []
    for index, (task, answer, choices) in enumerate([
        ("sound", "Dog barking", ["Dog barking", "Cat meowing", "Car horn", "Bird chirping"]),
        ("music", "Piano", ["Piano", "Guitar"]),
        ("speech", "Angry", ["Happy", "Sad", "Angry", "Neutral", "Fearful"]),
    ]):
        audio_id = f"./test-mini-audios/clip{index}.wav"
        write_tone(tmp_path / audio_id, 300 + 100 * index)
        item = {"audio_id": audio_id, "question": f"Question {index}?", "choices": choices, "answer": answer,
                "dataset": "fixture", "task": task, "split": "test-mini", "category": ["Reasoning"],
                "sub-category": "Event-Based Sound Reasoning", "difficulty": "easy"}
        if with_id:
            item = {"id": f"mmau-{index}", **item}
        items.append(item)
    path = tmp_path / "mmau-test-mini.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def test_load_prompt_and_version_detection(tmp_path):
    path = _write_mmau(tmp_path, with_id=True)
    items, info = mmau.load(path)
    assert info["data_version"] == "v05.15.25"
    assert items[0].id == "mmau-0"
    system, user = items[0].conversation
    assert system["content"] == mmau.SYSTEM_PROMPT
    assert user["content"] == (f'{AUDIO_TAG}\n\nQuestion 0? Choose from the following options: '
                               '"Dog barking", "Cat meowing", "Car horn" or "Bird chirping"')
    assert items[1].conversation[1]["content"].endswith('options: "Piano" or "Guitar"')
    assert user["audios"][0]["audio"].path == str(tmp_path / "test-mini-audios/clip0.wav")
    items_orig, info_orig = mmau.load(_write_mmau(tmp_path / "orig", with_id=False))
    assert info_orig["data_version"] == "original" and items_orig[2].id == "00002"


def test_inference_then_scoring_end_to_end(tmp_path):
    items, info = mmau.load(_write_mmau(tmp_path, with_id=True))
    answers = {"Question 0?": "The correct answer is: Dog barking", "Question 1?": "Guitar",
               "Question 2?": "The correct answer is: Angry"}
    system = FakeSystem(lambda conv: next(v for k, v in answers.items() if k in conv[-1]["content"]))
    out = run_inference(system, items, tmp_path / "run" / "mmau.predictions.jsonl", batch_size=2,
                        generation=mmau.GENERATION, manifest={"data_version": info["data_version"]})
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["mmau-0", "mmau-1", "mmau-2"]
    assert isinstance(system.calls[0][0][1]["audios"][0]["audio"], str)  # paths are passed through
    result = mmau.score(rows)
    assert result["total"]["correct"] == 2 and result["task"]["music"]["accuracy"] == 0.0


def test_test_split_without_answers_loads_and_refuses_to_score(tmp_path):
    path = _write_mmau(tmp_path, with_id=True)
    records = [{k: v for k, v in record.items() if k != "answer"} | {"split": "test"}
               for record in json.loads(path.read_text())]
    hidden = tmp_path / "mmau-test.json"
    hidden.write_text(json.dumps(records))
    items, info = mmau.load(hidden)
    assert info["split"] == "test" and items[0].reference["answer"] is None
    with pytest.raises(ValueError, match="3 item\\(s\\) have no answer.*hides its answers"):
        mmau.score([dict(id=i.id, response="x", **i.reference) for i in items])
