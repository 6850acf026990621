"""MMAU (Sakshi et al., 2024): audio understanding and reasoning, multiple choice over sound, music and speech.

Data: `mmau-test-mini.json` (or the test JSON) beside its audio folder; also parquet / HF folders with the same
fields. Two releases disagree on ~25% of test-mini: "original" and "v05.15.25" (which added an `id` field). The
release is detected from the data unless given, and recorded.

Scoring is the official `string_match`: bag-of-words containment of the answer and exclusion of every word that
only other choices have. Breakdowns per task, difficulty and sub-category (items without one are not in that last
breakdown, as in the official script). Items without an output are counted as wrong (the official script silently
skips them; `missing="skip"` reproduces that) and their number is reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from desta_audio.eval.benchmarks._common import grouped_accuracy, need, percent, reading_record, response_of
from desta_audio.eval.loading import load_rows, to_audio_ref
from desta_audio.eval.records import AUDIO_TAG, EvalItem, audio_message

NAME = "mmau"
SCORER_VERSION = "mmau-string-match-2"
VERSIONS = ("original", "v05.15.25")
SYSTEM_PROMPT = 'Focus on the audio clips and instructions. Put your answer in the format "The correct answer is: "___" ".'
ANSWER_PREFIX = "The correct answer is: "
GENERATION = {"max_new_tokens": 512, "do_sample": False}
PUBLISHED = {  # test-mini v05.15.25, average accuracy
    "DeSTA2.5-Audio": {"total": 66.00, "speech": 71.17, "sound": 70.57, "music": 56.29},
    "Qwen2-Audio-Instruct": {"total": 59.60},
    "Qwen2.5-Omni": {"total": 71.50},
    "Audio Flamingo 3": {"total": 73.30},
    "Kimi-Audio": {"total": 68.20},
    "GPT-4o Audio": {"total": 62.50},
    "SALMONN": {"total": 34.90},
}


def format_question(question: str, choices: list[str]) -> str:
    """DeSTA's user prompt: `{question} Choose from the following options: "a", "b", "c" or "d"`."""
    quoted = [f'"{c}"' for c in choices]
    options = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"{question} Choose from the following options: {options}"


def detect_version(rows: list[dict[str, Any]]) -> str:
    return "v05.15.25" if rows and all("id" in row for row in rows) else "original"


def data_split(path: Path, rows: list[dict[str, Any]]) -> str:
    """test-mini or test: the records' own `split`, else the file name (mmau-test-mini.json -> test-mini)."""
    splits = {str(row["split"]) for row in rows if row.get("split")}
    if len(splits) == 1:
        return splits.pop()
    return path.stem.removeprefix("mmau-") if path.is_file() else path.name


def _options(row: dict[str, Any]) -> list[str]:
    choices = need(row, "choices", list, "a list of options")
    if not choices or not all(isinstance(choice, str) for choice in choices):
        raise TypeError("'choices' must be a non-empty list of strings")
    return choices


def load(path: str | Path, *, audio_dir: str | Path | None = None, version: str | None = None,
         limit: int | None = None, **_: Any) -> tuple[list[EvalItem], dict[str, Any]]:
    path = Path(path)
    rows = load_rows(path)
    detected = detect_version(rows)
    if version is not None and version not in VERSIONS:
        raise ValueError(f"MMAU version must be one of {VERSIONS}, got {version!r}")
    base = Path(audio_dir) if audio_dir else (path.parent if path.is_file() else path)
    items = []
    for index, row in enumerate(rows[:limit] if limit else rows):
        with reading_record(path, index + 1, row):
            choices = _options(row)
            question = need(row, "question")
            answer = need(row, "answer") if row.get("answer") is not None else None  # the test split hides it
            audio = to_audio_ref(row.get("audio") or need(row, "audio_id"), base)
        user = f"{AUDIO_TAG}\n\n{format_question(question, choices)}"
        items.append(EvalItem(
            id=str(row.get("id") or f"{index:05d}"),
            conversation=audio_message(SYSTEM_PROMPT, user, [audio]),
            reference={
                "answer": answer, "choices": choices, "question": question,
                "task": row.get("task"), "difficulty": row.get("difficulty"),
                "sub-category": row.get("sub-category"), "category": row.get("category"),
                "dataset": row.get("dataset"), "audio_id": row.get("audio_id"),
            },
        ))
    split = data_split(path, rows)
    # The split names the predictions file, so test and test-mini runs never share one (their ids overlap).
    info = {"data_version": version or detected, "detected_version": detected, "split": split, "run_name": split,
            "items": len(items)}
    return items, info


def tokenize(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """Official MMAU matcher: every answer word is in the prediction and no word unique to another choice is."""
    prediction_tokens = tokenize(prediction)
    if not prediction_tokens:
        return False
    answer_tokens = tokenize(answer)
    incorrect: set[str] = set()
    for choice in choices:
        choice_tokens = tokenize(choice)
        if choice_tokens != answer_tokens:
            incorrect |= choice_tokens - answer_tokens
    return answer_tokens <= prediction_tokens and prediction_tokens.isdisjoint(incorrect)


def prediction_text(response: str, strip_prefix: bool = True) -> str:
    return response.replace(ANSWER_PREFIX, "") if strip_prefix else response


def score(rows: list[dict[str, Any]], judge: Any = None, *, strip_prefix: bool = True, missing: str = "wrong",
          **_: Any) -> dict[str, Any]:
    """Accuracy (%) in total and per task, difficulty and sub-category."""
    if missing not in ("wrong", "skip"):
        raise ValueError(f"missing must be 'wrong' or 'skip', got {missing!r}")
    unanswered = [str(row.get("id")) for row in rows if not isinstance(row.get("answer"), str)]
    if unanswered:
        raise ValueError(f"{len(unanswered)} item(s) have no answer to score against (e.g. {unanswered[0]}; the MMAU "
                         "test split hides its answers: submit its predictions to the leaderboard instead)")
    graded = []
    n_missing = 0
    for row in rows:
        response = response_of(row)
        if response is None:
            n_missing += 1
            if missing == "skip":
                continue
            correct = False
        else:
            correct = string_match(row["answer"], prediction_text(response, strip_prefix), row["choices"])
        graded.append((row, correct))
    total_correct = sum(ok for _, ok in graded)
    return {
        "benchmark": NAME,
        "scorer_version": SCORER_VERSION,
        "scored_text": "response without 'The correct answer is: '" if strip_prefix else "raw response",
        "total": {"accuracy": percent(total_correct, len(graded)), "correct": total_correct, "total": len(graded)},
        "task": grouped_accuracy((str(r.get("task")), ok) for r, ok in graded),
        "difficulty": grouped_accuracy((str(r.get("difficulty")), ok) for r, ok in graded),
        # Items without a sub-category are left out of this breakdown, as the official script does.
        "sub-category": grouped_accuracy((str(r["sub-category"]), ok) for r, ok in graded
                                         if r.get("sub-category") is not None),
        "missing_outputs": n_missing,
        "missing_policy": "counted as wrong" if missing == "wrong" else "skipped (official script)",
        "per_item": {str(r.get("id")): ok for r, ok in graded},
    }


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    """Numbers for the summary table: total and per task."""
    out = {"total": result["total"]["accuracy"]}
    out.update({task: entry["accuracy"] for task, entry in result["task"].items()})
    return out
