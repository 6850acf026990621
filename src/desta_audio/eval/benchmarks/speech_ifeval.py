"""Speech-IFEval (Lu et al., 2025): instruction following with audio input, and forgetting against the backbone.

Files (one folder): `closed_ended_questions.jsonl`, `creative_writing.jsonl`, `chain-of-thought.jsonl` and
`closed_ended_questions-woprompt.jsonl` (task accuracy), fields `audio_filepath, textual_audio, instruction,
dataset, metric, instruction_id_list, kwargs, id, label, key`.

- closed-ended / creative writing: the modified IFEval checkers (`ifeval`, variant "speech_ifeval"), strict mode;
- chain-of-thought: judge "Result: YES|NO" on whether the reply reasons beyond a direct answer; an unreadable
  verdict counts as NO and is reported (the official script crashes on it);
- IFrate = mean of the three rates; forgetting delta = (IFrate - IFrate_ref) / IFrate_ref x 100 with the text-only
  backbone, given `textual_audio`, as reference;
- task accuracy (`-woprompt`): judge YES/NO for metric "accuracy"; for "wer" the judge extracts the transcript and
  corpus WER is computed after Whisper's basic normalisation.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from desta_audio.eval.benchmarks._common import judge_record, percent, reading_record, response_of, shown
from desta_audio.eval.ifeval import SPEECH_IFEVAL, check_instruction, forgetting_delta
from desta_audio.eval.judge_prompts import JudgePrompt, PromptSource, resolve
from desta_audio.eval.judge_prompts import describe as describe_prompts
from desta_audio.eval.loading import load_rows, to_audio_ref
from desta_audio.eval.records import AUDIO_TAG, EvalItem, audio_message, text_message
from desta_audio.eval.textnorm import basic_normalize

logger = logging.getLogger(__name__)

NAME = "speech_ifeval"
SCORER_VERSION = "speech-ifeval-3"
SUBSETS = {
    "closed_ended_questions": "closed_ended_questions.jsonl",
    "creative_writing": "creative_writing.jsonl",
    "chain-of-thought": "chain-of-thought.jsonl",
    "closed_ended_questions-woprompt": "closed_ended_questions-woprompt.jsonl",
}
IF_SUBSETS = ("closed_ended_questions", "creative_writing", "chain-of-thought")
SYSTEM_PROMPT = "Focus on the audio clips and instructions."
REFERENCE_SYSTEM_PROMPT = "Follow the given instructions."
GENERATION = {"max_new_tokens": 2048, "do_sample": False}
REFERENCE_GENERATION = {"max_new_tokens": 2048, "do_sample": False}
JUDGE_MODEL = "gpt-4o-2024-11-20"
JUDGE_PARAMS: dict[str, Any] = {}  # the official script sends the endpoint's defaults (no temperature either)
BACKBONE_REFERENCE = {"Llama-3.1-8B-Instruct (text)": 93.52}
PUBLISHED = {  # IFrate
    "DeSTA2.5-Audio": {"ifrate": 93.89},
    "DeSTA2": {"ifrate": 89.23},
    "Qwen2-Audio-Instruct": {"ifrate": 47.11},
    "SALMONN": {"ifrate": 36.89},
    "LTU-AS": {"ifrate": 29.19},
}

COT_SYSTEM = (
    "You will see a user input and a model's response to it. Decide whether the response shows reasoning: breaking "
    "the problem down, explaining intermediate steps, or giving an analysis.\n"
    "Follow these rules strictly:\n"
    "- Output \"YES\" if the response does anything beyond directly answering the user input.\n"
    "- Output \"NO\" only if the response is a minimal or purely factual reply.\n"
    "- End your answer with \"Result: <YES or NO>\"."
)
ACCURACY_SYSTEM = (
    "You will see a question, its correct answer and a model's response to the question. Decide whether the "
    "model's response agrees with the ground-truth answer, given the question.\n"
    "Follow these rules strictly:\n"
    "- End your answer with \"Result: <YES or NO>\".\n"
    "- Output \"YES\" if the response agrees with the ground-truth answer and \"NO\" if it does not."
)
TRANSCRIPT_SYSTEM = (
    "You will see the reply of a speech recognition model. Extract from it the **substring** that is the "
    "transcript itself, removing any introduction, explanation or extra phrase. The substring is scored with WER, "
    "so it must be **exactly the same** text as in the reply, with no change at all.\n"
    "Follow these rules strictly:\n"
    "- Copy the substring **exactly**; do not correct, translate or reformat it.\n"
    "- Leave out every extra phrase, explanation or introduction.\n"
    "- Output the substring and nothing else."
)
JUDGE_PROMPTS = {
    "reasoning": JudgePrompt(COT_SYSTEM, "User input: {instruction}\nModel's Response: {response}"),
    "accuracy": JudgePrompt(ACCURACY_SYSTEM,
                            "Question: {instruction}\nGround Truth Answer: {label}\nModel's Response: {response}"),
    "transcript": JudgePrompt(TRANSCRIPT_SYSTEM, "Question: {instruction}\nModel's Response: {response}"),
}
RESULT_PATTERN = re.compile(r"(?i)(?<=result:\s)(yes|no)")


def _resolve_audio(value: str, folder: Path, audio_dir: Path | None):
    if audio_dir is not None:
        return to_audio_ref(value, audio_dir)
    for base in (folder, folder.parent, folder.parent.parent):
        if (base / value).exists():
            return to_audio_ref(value, base)
    return to_audio_ref(value, folder)


def load(path: str | Path, *, subsets: list[str] | None = None, audio_dir: str | Path | None = None,
         limit: int | None = None, **_: Any) -> tuple[list[EvalItem], dict[str, Any]]:
    path = Path(path)
    if path.is_file():
        files = {path.stem: path}
    else:
        files = {name: path / file for name, file in SUBSETS.items() if (path / file).exists()}
        if not files:
            raise FileNotFoundError(f"{path}: none of {', '.join(SUBSETS.values())} found")
    if subsets:
        files = {name: file for name, file in files.items() if name in subsets}
    items, counts = [], {}
    for subset, file in files.items():
        rows = load_rows(file)
        rows = rows[:limit] if limit else rows
        counts[subset] = len(rows)
        for number, row in enumerate(rows, 1):
            with reading_record(file, number, row):
                audio = _resolve_audio(row["audio_filepath"], file.parent, Path(audio_dir) if audio_dir else None)
                instruction = row["instruction"]
                instruction_ids, kwargs = instructions_of(row)
            items.append(EvalItem(
                id=f"{subset}/{row['id']}",
                conversation=audio_message(SYSTEM_PROMPT, f"{AUDIO_TAG}\n\n{instruction}", [audio]),
                text_conversation=text_message(
                    REFERENCE_SYSTEM_PROMPT, f"Speech Input: {row['textual_audio']}\n\n{instruction}"),
                reference={"subset": subset, "instruction": instruction, "dataset": row.get("dataset"),
                           "metric": row.get("metric"), "instruction_id_list": instruction_ids, "kwargs": kwargs,
                           "label": row.get("label")},
            ))
    return items, {"data_version": "Speech-IFEval", "subsets": counts, "items": len(items)}


def instructions_of(row: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The record's instruction ids and their kwargs, one dict (or null) per instruction: a mismatch would drop an
    instruction from the check without a word, so it is an error."""
    ids = row.get("instruction_id_list")
    ids = [] if ids is None else ids
    kwargs = row.get("kwargs")
    if not ids and not kwargs:
        return [], []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise TypeError(f"'instruction_id_list' must be a list of instruction ids, got {shown(ids)}")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or \
            not all(k is None or isinstance(k, dict) for k in kwargs):
        count = len(kwargs) if isinstance(kwargs, list) else 0
        raise ValueError(f"{len(ids)} instruction(s) but {count} kwargs: 'kwargs' must be a list with one object "
                         f"(or null) per instruction, got {shown(kwargs)}")
    return ids, [k or {} for k in kwargs]


def parse_result(text: str | None) -> str | None:
    match = RESULT_PATTERN.search(text or "")
    return match.group(0).lower() if match else None


def normalize_transcript(text: str) -> str:
    return basic_normalize(text.replace("<", "").replace(">", "")).strip()


def _rule_rate(rows: list[dict[str, Any]], paragraph_split: str) -> tuple[float | None, dict[str, Any], dict]:
    per_instruction: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    followed, per_item = 0, {}
    for row in rows:
        response = response_of(row) or ""
        try:
            instruction_ids, kwargs = instructions_of(row)
        except (TypeError, ValueError) as error:
            raise ValueError(f"prediction row {row['id']}: {error}") from None
        flags = [check_instruction(iid, response, kw, variant=SPEECH_IFEVAL, paragraph_split=paragraph_split)
                 for iid, kw in zip(instruction_ids, kwargs)]
        ok = all(flags)  # as the official strict test: an item without instructions counts as followed
        followed += ok
        per_item[str(row["id"])] = ok
        for iid, flag in zip(instruction_ids, flags):
            per_instruction[iid][0] += flag
            per_instruction[iid][1] += 1
    breakdown = {iid: percent(c, t) for iid, (c, t) in sorted(per_instruction.items())}
    return percent(followed, len(rows)), breakdown, per_item


def _judge_yes(judge: Any, prompt: JudgePrompt, **values: Any) -> str | None:
    return parse_result(judge.judge(prompt.messages(**values), **JUDGE_PARAMS))


def score(rows: list[dict[str, Any]], judge: Any = None, *, reference_ifrate: float | None = None,
          paragraph_split: str = "newline", judge_prompts: PromptSource | dict[str, JudgePrompt] | None = None,
          **_: Any) -> dict[str, Any]:
    prompts = resolve(JUDGE_PROMPTS, judge_prompts)
    by_subset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_subset[row["subset"]].append(row)
    result: dict[str, Any] = {"benchmark": NAME, "scorer_version": SCORER_VERSION, "rates": {},
                              "paragraph_split": paragraph_split, "per_item": {}}
    for subset in ("closed_ended_questions", "creative_writing"):
        if by_subset.get(subset):
            rate, breakdown, per_item = _rule_rate(by_subset[subset], paragraph_split)
            result["rates"][subset] = rate
            result[f"{subset}_by_instruction"] = breakdown
            result["per_item"].update(per_item)
    failures = 0
    if by_subset.get("chain-of-thought"):
        if judge is None:
            logger.warning("chain-of-thought needs a judge (--judge); IFrate is left out")
        else:
            yes = 0
            for row in by_subset["chain-of-thought"]:
                verdict = _judge_yes(judge, prompts["reasoning"], instruction=row["instruction"],
                                     response=response_of(row) or "")
                failures += verdict is None
                yes += verdict == "yes"
                result["per_item"][str(row["id"])] = verdict == "yes"
            result["rates"]["chain-of-thought"] = percent(yes, len(by_subset["chain-of-thought"]))
    if all(result["rates"].get(s) is not None for s in IF_SUBSETS):
        ifrate = sum(result["rates"][s] for s in IF_SUBSETS) / len(IF_SUBSETS)
        result["ifrate"] = ifrate
        if reference_ifrate:
            result["reference_ifrate"] = reference_ifrate
            result["forgetting_delta"] = forgetting_delta(ifrate, reference_ifrate)
    if by_subset.get("closed_ended_questions-woprompt") and judge is not None:
        result["task_accuracy"], wer_failures = _task_accuracy(by_subset["closed_ended_questions-woprompt"], judge,
                                                               prompts)
        failures += wer_failures
    if judge is not None:
        result.update(judge_record(judge, JUDGE_PARAMS, describe_prompts(prompts, JUDGE_PROMPTS, judge_prompts),
                                   failures))
    else:
        result.update(judge=None, judge_parse_failures=failures)
    return result


def _task_accuracy(rows: list[dict[str, Any]], judge: Any,
                   prompts: dict[str, JudgePrompt]) -> tuple[dict[str, Any], int]:
    import jiwer

    groups: dict[str, list[int]] = defaultdict(list)
    hyps, refs, failures = [], [], 0
    for row in rows:
        response = response_of(row) or ""
        if row.get("metric") == "wer":
            extracted = judge.judge(prompts["transcript"].messages(instruction=row["instruction"], response=response),
                                    **JUDGE_PARAMS)
            hyps.append(normalize_transcript(extracted))
            refs.append(normalize_transcript(str(row.get("label") or "")))
        else:
            verdict = _judge_yes(judge, prompts["accuracy"], instruction=row["instruction"], label=row.get("label"),
                                 response=response)
            failures += verdict is None
            groups[str(row.get("dataset"))].append(int(verdict == "yes"))
    out: dict[str, Any] = {d: percent(sum(v), len(v)) for d, v in sorted(groups.items())}
    if refs:
        out["ASR_WER"] = 100 * jiwer.wer(refs, hyps)
    return out, failures


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    out = {"ifrate": result.get("ifrate")}
    out.update(result["rates"])
    if "forgetting_delta" in result:
        out["forgetting_delta"] = result["forgetting_delta"]
    return out
