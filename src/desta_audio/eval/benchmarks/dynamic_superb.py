"""Dynamic-SUPERB Phase-1 (Huang et al., 2024): 55 zero-shot instruction-following classification instances.

Data: one folder per task instance (HF `save_to_disk` of `DynamicSuperb/<Task>_<Dataset>`, or parquet), fields
`file, audio, instruction, label` and sometimes `audio2` / `text`; pass the folder of instances or one instance.
Instructions already list the options.

Scoring: accuracy per instance, averaged per dimension and overall. Free-form answers need a matcher:
`consecutive` (default: DeSTA's metric, the normalised label's words appear contiguously in the prediction) or
`judge` (an LLM answers "Result: YES/NO"); the matcher used is recorded. As in DeSTA's metric, a label that
normalises to no words ("[noise]", "?") matches every reply; `empty_label="wrong"` (`--empty-label wrong`) counts
such items as misses.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from desta_audio.eval.benchmarks._common import judge_record, percent, reading_record, response_of
from desta_audio.eval.judge_prompts import JudgePrompt, PromptSource, resolve
from desta_audio.eval.judge_prompts import describe as describe_prompts
from desta_audio.eval.loading import is_hf_disk_folder, load_rows, to_audio_ref
from desta_audio.eval.records import AUDIO_TAG, EvalItem, audio_message
from desta_audio.eval.textnorm import consecutive_words_match

logger = logging.getLogger(__name__)

NAME = "dynamic_superb"
SCORER_VERSION = "dynamic-superb-2"
SYSTEM_PROMPT = "Focus on the audio clips and instructions."
GENERATION = {"max_new_tokens": 512, "do_sample": False}
# Task name (the part before "_" of an instance name) -> dimension; 55 instances: Content 11, Speaker 5,
# Semantics 6, Degradation 19, Paralinguistics 7, Audio 7.
TASK_DIMENSIONS = {
    "SpeechDetection": "Content", "SpeechTextMatching": "Content", "SpokenTermDetection": "Content",
    "SpeechCommandRecognition": "Content", "LanguageIdentification": "Content",
    "SpeakerCounting": "Speaker", "SpeakerVerification": "Speaker", "MultiSpeakerDetection": "Speaker",
    "DialogueActClassification": "Semantics", "IntentClassification": "Semantics", "SarcasmDetection": "Semantics",
    "DialogueActPairing": "Semantics",
    "EnhancementDetection": "Degradation", "NoiseDetection": "Degradation", "NoiseSNRLevelPrediction": "Degradation",
    "ReverberationDetection": "Degradation",
    "AccentClassification": "Paralinguistics", "DialogueEmotionClassification": "Paralinguistics",
    "EmotionRecognition": "Paralinguistics", "HowFarAreYou": "Paralinguistics", "StressDetection": "Paralinguistics",
    "SpoofDetection": "Paralinguistics",
    "BirdSoundDetection": "Audio", "ChordClassification": "Audio", "EnvironmentalSoundClassification": "Audio",
}
DIMENSIONS = ("Content", "Speaker", "Semantics", "Degradation", "Paralinguistics", "Audio")
JUDGE_PARAMS = {"temperature": 0}
JUDGE_SYSTEM = (
    "You will see an instruction about an audio clip, the ground-truth answer and a model's response. Decide "
    "whether the response matches the ground truth: it must give the same answer (wording may differ) and must not "
    "pick any other option.\nEnd your answer with \"Result: <YES or NO>\"."
)
JUDGE_PROMPTS = {
    "match": JudgePrompt(JUDGE_SYSTEM, "Instruction: {instruction}\nGround truth: {label}\nResponse: {response}"),
}
PUBLISHED = {  # average accuracy
    "DeSTA2.5-Audio": {"overall": 69.53},
    "Qwen2-Audio-Instruct": {"overall": 51.69},
    "SALMONN": {"overall": 36.44},
    "LTU-AS": {"overall": 36.11},
}


def dimension_of(instance: str) -> str:
    task = instance.split("/")[-1].split("_")[0]
    for prefix in sorted(TASK_DIMENSIONS, key=len, reverse=True):  # "NoiseDetectionGaussian" -> NoiseDetection
        if task.startswith(prefix):
            return TASK_DIMENSIONS[prefix]
    logger.warning("Dynamic-SUPERB instance %r: unknown task, reported under 'Other'", instance)
    return "Other"


def _instances(path: Path) -> list[tuple[str, Path]]:
    if path.is_file() or is_hf_disk_folder(path) or any(path.glob("*.parquet")):
        return [(path.stem if path.is_file() else path.name, path)]
    found = [(child.name, child) for child in sorted(path.iterdir())
             if child.is_dir() and (is_hf_disk_folder(child) or any(child.rglob("*.parquet")))]
    found += [(child.stem, child) for child in sorted(path.glob("*.parquet"))]
    if not found:
        raise FileNotFoundError(f"{path}: no task instances (HF save_to_disk folders or parquet files) here")
    return found


def load(path: str | Path, *, limit: int | None = None, split: str = "test",
         **_: Any) -> tuple[list[EvalItem], dict[str, Any]]:
    items, counts = [], {}
    for instance, location in _instances(Path(path)):
        instance = instance.removeprefix("DynamicSuperb_").removeprefix("DynamicSuperb-")
        rows = load_rows(location, split=split)
        rows = rows[:limit] if limit else rows
        counts[instance] = len(rows)
        base = location.parent if location.is_file() else location
        for index, row in enumerate(rows):
            with reading_record(location, index + 1, row):
                audios = [to_audio_ref(row[key], base) for key in ("audio", "audio2") if row.get(key) is not None]
                instruction = str(row["instruction"])
                label = str(row["label"])
            if row.get("text") and str(row["text"]) not in instruction:
                instruction = f"{instruction}\n{row['text']}"
            user = " ".join([AUDIO_TAG] * len(audios)) + f" {instruction}"
            items.append(EvalItem(
                id=f"{instance}/{row.get('file') or index}",
                conversation=audio_message(SYSTEM_PROMPT, user, audios),
                reference={"instance": instance, "dimension": dimension_of(instance), "label": label,
                           "instruction": row["instruction"]},
            ))
    return items, {"data_version": "Dynamic-SUPERB Phase-1", "instances": counts, "items": len(items)}


def judge_messages(instruction: str, label: str, response: str,
                   prompt: JudgePrompt = JUDGE_PROMPTS["match"]) -> list[dict[str, str]]:
    return prompt.messages(instruction=instruction, label=label, response=response)


def score(rows: list[dict[str, Any]], judge: Any = None, *, matcher: str = "consecutive",
          empty_label: str = "match", judge_prompts: PromptSource | dict[str, JudgePrompt] | None = None,
          **_: Any) -> dict[str, Any]:
    if matcher not in ("consecutive", "judge"):
        raise ValueError(f"matcher must be 'consecutive' or 'judge', got {matcher!r}")
    if empty_label not in ("match", "wrong"):
        raise ValueError(f"empty_label must be 'match' or 'wrong', got {empty_label!r}")
    if matcher == "judge" and judge is None:
        raise ValueError("matcher 'judge' needs --judge")
    from desta_audio.eval.benchmarks.speech_ifeval import parse_result

    prompts = resolve(JUDGE_PROMPTS, judge_prompts)
    per_instance: dict[str, list[int]] = defaultdict(list)
    dimension_of_instance, failures, per_item = {}, 0, {}
    for row in rows:
        response = response_of(row) or ""
        if matcher == "consecutive":
            ok = consecutive_words_match(row["label"], response,
                                         empty_label="any" if empty_label == "match" else "miss")
        else:
            verdict = parse_result(judge.judge(judge_messages(row["instruction"], row["label"], response,
                                                              prompts["match"]), **JUDGE_PARAMS))
            failures += verdict is None
            ok = verdict == "yes"
        per_instance[row["instance"]].append(int(ok))
        dimension_of_instance[row["instance"]] = row["dimension"]
        per_item[str(row["id"])] = ok
    instance_acc = {name: percent(sum(v), len(v)) for name, v in sorted(per_instance.items())}
    by_dimension: dict[str, list[float]] = defaultdict(list)
    for name, accuracy in instance_acc.items():
        by_dimension[dimension_of_instance[name]].append(accuracy)
    dimensions = {d: sum(v) / len(v) for d, v in by_dimension.items()}
    all_acc = list(instance_acc.values())
    speech_acc = [a for n, a in instance_acc.items() if dimension_of_instance[n] != "Audio"]
    judged = judge_record(judge, JUDGE_PARAMS, describe_prompts(prompts, JUDGE_PROMPTS, judge_prompts), failures) \
        if matcher == "judge" else {"judge": None}
    return {
        "benchmark": NAME, "scorer_version": SCORER_VERSION, "matcher": matcher, **judged,
        **({"empty_label": empty_label} if matcher == "consecutive" else {}),
        "instances": instance_acc,
        "dimensions": {d: dimensions[d] for d in DIMENSIONS if d in dimensions} | (
            {"Other": dimensions["Other"]} if "Other" in dimensions else {}),
        "overall": sum(all_acc) / len(all_acc) if all_acc else None,
        "overall_without_audio": sum(speech_acc) / len(speech_acc) if speech_acc else None,
        "per_item": per_item,
    }


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    return {"overall": result["overall"], **result["dimensions"]}
