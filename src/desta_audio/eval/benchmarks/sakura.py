"""SAKURA (Yang et al., 2025): single-hop vs multi-hop reasoning over one audio attribute.

Data: one folder per track (Animal, Emotion, Gender, Language), each with `metadata.json` or `metadata.csv`
(`file, attribute_label, single_instruction, single_answer, multi_instruction, multi_answer`) and its audio
(in `audio/` or beside the metadata). Every clip gives two items: the single-hop and the multi-hop question.

Scoring is by LLM judge only (official: gpt-4o-2024-11-20, temperature 0, top_p 0.9). The verdict is parsed with the
official pattern; a verdict that is neither "correct" nor "incorrect" stays in the denominator and is counted.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from desta_audio.eval.benchmarks._common import judge_record, percent, reading_record, response_of
from desta_audio.eval.judge_prompts import JudgePrompt, PromptSource, resolve
from desta_audio.eval.judge_prompts import describe as describe_prompts
from desta_audio.eval.loading import load_rows, to_audio_ref
from desta_audio.eval.records import AUDIO_TAG, EvalItem, audio_message

logger = logging.getLogger(__name__)

NAME = "sakura"
SCORER_VERSION = "sakura-judge-2"
TRACKS = ("Animal", "Emotion", "Gender", "Language")
HOPS = ("single", "multi")
SYSTEM_PROMPT = "Focus on the audio clips and instructions."
GENERATION = {"max_new_tokens": 512, "do_sample": False}
JUDGE_MODEL = "gpt-4o-2024-11-20"
JUDGE_PARAMS = {"temperature": 0, "top_p": 0.9}
JUDGE_SYSTEM = (
    "You are a strict grader of answers to multiple-choice questions about audio. You will see a question with its "
    "options, the ground-truth answer, and a model's response. Decide whether the response is correct.\n"
    "- The response is correct only if it clearly chooses exactly one option and that option is the ground truth.\n"
    "- Choosing several options, no option, or hedging between options is incorrect.\n"
    "- Wording need not match: derived or inflected forms of the right option (e.g. \"happiness\" for \"happy\") "
    "and answers given without the option letter count as correct.\n"
    "Reply in exactly this format:\nExplanation: <one or two sentences>\nJudgement: <correct or incorrect>"
)
JUDGE_PROMPTS = {
    "grade": JudgePrompt(JUDGE_SYSTEM, "Question: {question}\nGround truth: {answer}\nResponse: {response}"),
}
VERDICT_PATTERN = re.compile(r"Explanation: (.*?)\nJudgement: (.*?)(?:\n\n|$)", re.DOTALL)
PUBLISHED = {  # single / multi average accuracy
    "DeSTA2": {"single": 63.0, "multi": 57.1},
    "Qwen2-Audio-Instruct": {"single": 81.2, "multi": 49.1},
    "SALMONN": {"single": 42.5, "multi": 35.3},
    "LTU-AS": {"single": 40.9, "multi": 18.1},
    "DeSTA2.5-Audio (paper)": {"multi": 69.85},
}


def _track_dirs(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.parent.name, path)]
    metadata = [p for name in ("metadata.json", "metadata.csv") if (p := path / name).exists()]
    if metadata:
        return [(path.name, metadata[0])]
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        for name in ("metadata.json", "metadata.csv"):
            if (child / name).exists():
                found.append((child.name, child / name))
                break
    if not found:
        raise FileNotFoundError(f"{path}: no metadata.json/metadata.csv here nor in track sub-folders")
    return found


def load(path: str | Path, *, limit: int | None = None, tracks: list[str] | None = None,
         **_: Any) -> tuple[list[EvalItem], dict[str, Any]]:
    items: list[EvalItem] = []
    track_counts = {}
    for track, metadata in _track_dirs(Path(path)):
        if tracks and track.lower() not in {t.lower() for t in tracks}:
            continue
        rows = load_rows(metadata)
        rows = rows[:limit] if limit else rows
        audio_dir = metadata.parent / "audio" if (metadata.parent / "audio").is_dir() else metadata.parent
        track_counts[track] = len(rows)
        for number, row in enumerate(rows, 1):
            with reading_record(metadata, number, row):
                name = str(row.get("file") or row.get("id"))
                audio = to_audio_ref(row.get("audio") or name, audio_dir)
                for hop in HOPS:
                    instruction = row[f"{hop}_instruction"]
                    items.append(EvalItem(
                        id=f"{track}/{name}/{hop}",
                        conversation=audio_message(SYSTEM_PROMPT, f"{AUDIO_TAG} {instruction}", [audio]),
                        reference={"track": track, "hop": hop, "question": instruction,
                                   "answer": row[f"{hop}_answer"], "attribute_label": row.get("attribute_label")},
                    ))
    return items, {"data_version": "SAKURA", "tracks": track_counts, "items": len(items)}


def judge_messages(question: str, answer: str, response: str,
                   prompt: JudgePrompt = JUDGE_PROMPTS["grade"]) -> list[dict[str, str]]:
    return prompt.messages(question=question, answer=answer, response=response)


def parse_verdict(text: str) -> str | None:
    """'correct', 'incorrect', or None when the verdict cannot be read."""
    match = VERDICT_PATTERN.search(text or "")
    if not match:
        return None
    verdict = match.group(2).strip().strip("*.").strip().lower()
    return verdict if verdict in ("correct", "incorrect") else None


def score(rows: list[dict[str, Any]], judge: Any = None, *,
          judge_prompts: PromptSource | dict[str, JudgePrompt] | None = None, **_: Any) -> dict[str, Any]:
    if judge is None:
        raise ValueError("SAKURA is scored by an LLM judge only: pass --judge (openai:MODEL, hf:MODEL, replay:MODEL)")
    from tqdm.auto import tqdm

    prompts = resolve(JUDGE_PROMPTS, judge_prompts)
    cells: dict[tuple[str, str], list[int]] = {}
    failures, verdicts = 0, {}
    for row in tqdm(rows, desc="sakura judge", unit="item"):
        response = response_of(row) or ""
        verdict = parse_verdict(judge.judge(judge_messages(row["question"], row["answer"], response,
                                                           prompts["grade"]), **JUDGE_PARAMS))
        failures += verdict is None
        verdicts[str(row["id"])] = verdict
        cell = cells.setdefault((row["track"], row["hop"]), [0, 0])
        cell[0] += verdict == "correct"
        cell[1] += 1
    table = {track: {hop: percent(*cells[(track, hop)]) for hop in HOPS if (track, hop) in cells}
             for track in sorted({t for t, _ in cells})}
    average = {}
    for hop in HOPS:
        scored = [table[t][hop] for t in table if table[t].get(hop) is not None]
        average[hop] = sum(scored) / len(scored) if scored else None
    return {"benchmark": NAME, "scorer_version": SCORER_VERSION, "tracks": table, "average": average,
            **judge_record(judge, JUDGE_PARAMS, describe_prompts(prompts, JUDGE_PROMPTS, judge_prompts), failures),
            "items": len(rows), "per_item": verdicts}


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    """Single- and multi-hop accuracy averaged over the scored tracks, named as the published numbers are."""
    return dict(result["average"])
