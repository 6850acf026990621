"""The instruction pool: composed from templates x slots, deduplicated, weighted by category, shipped as JSONL.

`python -m desta_audio.data.prompts` (or `desta data prompts --build`) rebuilds `prompt_pool.jsonl` and its
`prompt_pool.manifest.json` (builder version, counts per category, content hash) beside this module. The build is
deterministic: the same builder version always gives the same file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from itertools import accumulate
from pathlib import Path

from desta_audio.data.dedup import NearDuplicateIndex
from desta_audio.data.store import atomic_write_text

logger = logging.getLogger(__name__)

POOL_VERSION = "1.0"
POOL_PATH = Path(__file__).with_name("prompt_pool.jsonl")
MANIFEST_PATH = Path(__file__).with_name("prompt_pool.manifest.json")

ALL_KINDS = ("speech", "sound", "music")

# Share of samples drawn from each category (normalised at sampling time).
CATEGORY_WEIGHTS: dict[str, float] = {
    "open_description": 0.14,
    "captioning": 0.07,
    "content": 0.12,
    "paralinguistic": 0.17,
    "sound_music": 0.10,
    "reasoning": 0.11,
    "creative": 0.07,
    "format_constrained": 0.13,
    "language": 0.09,
}

LANGUAGES = {
    "French": "fr", "Spanish": "es", "German": "de", "Italian": "it", "Portuguese": "pt", "Chinese": "zh-cn",
    "Japanese": "ja", "Korean": "ko", "Russian": "ru", "Arabic": "ar", "Hindi": "hi", "Dutch": "nl",
    "Turkish": "tr", "Vietnamese": "vi", "Indonesian": "id",
}  # fmt: skip


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str
    weight: float
    audio_kinds: tuple[str, ...] = ALL_KINDS
    response_language: str = "en"  # ISO code the answer is expected in (checked by the language filter)
    origin: str = "template"  # "template", or "expanded:<model>" for prompts the backbone proposed


@dataclass
class _Candidate:
    category: str
    text: str
    audio_kinds: tuple[str, ...] = ALL_KINDS
    response_language: str = "en"
    origin: str = "template"


# --- templates --------------------------------------------------------------------------------------------------

_CLIP = ["the audio", "this audio clip", "the recording", "this clip", "what you hear", "this sound recording"]


def _open_description() -> Iterable[_Candidate]:
    openers = ["Describe", "Give a detailed description of", "Provide an overview of", "Tell me about",
               "Walk me through", "Characterize", "Paint a picture of", "Give an account of"]  # fmt: skip
    tails = ["", " in detail", " as precisely as you can", ", covering everything you notice",
             ", including anything unusual", " for someone who cannot hear it"]  # fmt: skip
    for opener, clip, tail in itertools.product(openers, _CLIP, tails):
        yield _Candidate("open_description", f"{opener} {clip}{tail}.")
    questions = [
        "What can you tell me about this audio?", "What is going on in this recording?",
        "What do you hear in this clip?", "Can you describe what is happening in the audio?",
        "What stands out to you in this recording?", "How would you describe this audio to a friend?",
        "What is this recording about?", "Give me your impressions of this clip.",
        "If you had to explain this audio to someone over text, what would you say?",
        "What are the most noticeable characteristics of this audio?",
    ]  # fmt: skip
    yield from (_Candidate("open_description", q) for q in questions)


def _captioning() -> Iterable[_Candidate]:
    asks = ["Write a caption for", "Generate a short caption for", "Come up with a title for",
            "Write a one-sentence caption for", "Provide alt text for", "Write a headline for",
            "Create a brief label for", "Suggest a file name that describes"]  # fmt: skip
    styles = ["", " in a neutral tone", " like a video subtitle would", " that is factual and concise",
              " suitable for an accessibility label"]  # fmt: skip
    for ask, clip, style in itertools.product(asks, _CLIP, styles):
        yield _Candidate("captioning", f"{ask} {clip}{style}.")


def _content() -> Iterable[_Candidate]:
    speech = ("speech",)
    questions = [
        "What did the speaker say?", "Transcribe the speech in this audio.", "What is being said in this recording?",
        "What is the main point of the speech?", "What topic is discussed?", "Repeat the spoken words exactly.",
        "What is the first word the speaker says?", "Does the speaker ask a question? If so, what is it?",
        "Are any names, places or numbers mentioned?", "What is the speaker's intention?",
        "Is the speaker making a request, a statement or a question?",
        "What key information does the speaker convey?", "What would be a good reply to the speaker?",
        "List the keywords in the speech.", "Roughly how many words does the speaker say?",
        "Does anything in the speech sound urgent?", "Who might the speaker be talking to?",
        "What is the last thing the speaker says?", "Is the speech a complete sentence?",
        "What action, if any, does the speaker ask for?",
    ]  # fmt: skip
    suffixes = ["", " Answer briefly.", " Keep it to one sentence.", " Be as accurate as possible.",
                " Explain your answer.", " Quote the relevant words."]  # fmt: skip
    for question, suffix in itertools.product(questions, suffixes):
        yield _Candidate("content", question + suffix, speech)
    tasks = ["Summarize", "Paraphrase", "Restate in plain English", "Identify the main topic of",
             "Extract the named entities from", "Give the gist of", "Point out any questions in",
             "Correct any grammatical errors in"]  # fmt: skip
    targets = ["the speech", "the spoken content", "the utterance", "what was said", "the speaker's words",
               "the message"]  # fmt: skip
    for task, target, tail in itertools.product(tasks, targets, ["", " in one sentence", " briefly"]):
        yield _Candidate("content", f"{task} {target}{tail}.", speech)


def _paralinguistic() -> Iterable[_Candidate]:
    speech = ("speech",)
    questions = [
        # gender
        "What is the gender of the speaker?", "Is the speaker male or female?",
        "Does the voice sound male or female?", "Can you tell whether the speaker is a man or a woman?",
        # emotion
        "What emotion does the speaker convey?", "How does the speaker feel?",
        "What is the emotional state of the speaker?", "Does the speaker sound happy, sad, angry or neutral?",
        "Describe the speaker's mood.", "Which emotion best matches the speaker's voice?", "Is the speaker upset?",
        # pitch, volume, speed
        "Is the speaker's voice high or low pitched?", "How would you describe the pitch of the voice?",
        "Does the speaker have a deep voice?", "How loud is the speaker?",
        "Is the speaker talking loudly or quietly?", "Is the speaker whispering or shouting?",
        "How fast is the speaker talking?", "Is the speaking rate fast, slow or normal?",
        "Describe the pace of the speech.",
        # age, accent, language
        "How old does the speaker sound?", "Estimate the speaker's age group.", "Does the speaker sound young or old?",
        "What accent does the speaker have?", "Where might the speaker be from, judging by the accent?",
        "Is the speaker a native English speaker?", "What language is spoken?",
        "Which language does the speaker use?", "Is the speech in English?",
        # style, quality, speakers
        "What speaking style does the speaker use?", "Is the speech read aloud or spontaneous?",
        "Does the speaker sound formal or casual?", "Is the recording clean or noisy?",
        "How much background noise is there behind the voice?", "Describe the recording quality of the speech.",
        "Would you call this a studio-quality recording?", "How many speakers are there?",
        "Is there more than one speaker?", "How many different voices can you hear?",
        # overall voice
        "Describe the speaker's voice.", "What are the characteristics of the speaker's voice?",
        "Give a profile of the speaker based on their voice.", "What can you infer about the speaker from their voice?",
        "Describe the speaker's tone and delivery.", "Does the voice sound natural or synthetic?",
        "How confident does the speaker sound?", "Does the speaker sound tired or energetic?",
    ]  # fmt: skip
    suffixes = ["", " Answer in one word if you can.", " Explain what gives it away.", " Answer briefly.",
                " Give your best guess.", " Justify your answer.", " Be specific."]  # fmt: skip
    for question, suffix in itertools.product(questions, suffixes):
        yield _Candidate("paralinguistic", question + suffix, speech)


def _sound_music() -> Iterable[_Candidate]:
    sound_questions = [
        "What sounds can you hear?", "Identify the sound events in this clip.", "What is the source of the sound?",
        "Where might this audio have been recorded?", "Describe the acoustic environment.",
        "Is there any speech in this clip?", "What objects might be producing these sounds?",
        "Is the sound natural or man-made?", "Is this sound indoors or outdoors?",
        "What is the loudest sound in the recording?", "How many distinct sounds are there?",
        "Classify the sound into a category.", "Does the sound repeat?", "Is the sound pleasant or unpleasant?",
    ]  # fmt: skip
    music_questions = [
        "What genre is this music?", "Which instruments can you hear?", "Describe the mood of the music.",
        "Is there singing in this music?", "What is the tempo of the music?", "Describe the melody.",
        "What instrument family does this note belong to?", "Is this music acoustic or electronic?",
        "What occasion would this music suit?", "Describe the rhythm of this piece.",
        "What emotions does the music evoke?", "Is the music fast or slow?",
        "What era does this music sound like it comes from?", "Describe the musical texture.",
    ]  # fmt: skip
    suffixes = ["", " Answer briefly.", " Explain your answer.", " Give your best guess.", " Be specific.",
                " Answer in one or two words.", " Mention the clues you relied on."]  # fmt: skip
    for question, suffix in itertools.product(sound_questions, suffixes):
        yield _Candidate("sound_music", question + suffix, ("sound",))
    for question, suffix in itertools.product(music_questions, suffixes):
        yield _Candidate("sound_music", question + suffix, ("music",))
    aspects = ["timbre", "texture", "rhythm", "dynamics", "character", "atmosphere"]
    for aspect, thing in itertools.product(aspects, ["sound", "piece", "sound clip"]):
        yield _Candidate("sound_music", f"Describe the {aspect} of this {thing}.", ("sound", "music"))


def _reasoning() -> Iterable[_Candidate]:
    questions = [
        "Where do you think this was recorded?", "What might have happened just before this recording?",
        "What is likely to happen next?", "What can you infer about the situation?",
        "Why might someone have recorded this?", "What is the most plausible context for this audio?",
        "Is there anything surprising in this audio?", "What does the audio suggest about the time of day?",
        "Would this audio be appropriate to play in a library?", "If you were there, how would you react?",
        "What problem might the people involved be facing?", "What is the relationship between the people involved?",
        "Is this recording more likely from a movie, a phone call, or real life?",
        "What questions would you ask to learn more about this situation?", "Is anyone in danger here?",
        "How would you tag this audio for a search engine?",
    ]  # fmt: skip
    prefixes = ["", "Think step by step. ", "Reason carefully. ", "Based on the audio: "]
    suffixes = ["", " Give your final answer in one sentence.", " Support your answer with details from the audio.",
                " List the clues you used."]  # fmt: skip
    for prefix, question, suffix in itertools.product(prefixes, questions, suffixes):
        yield _Candidate("reasoning", prefix + question + suffix)


def _creative() -> Iterable[_Candidate]:
    forms = ["a short poem", "a haiku", "a limerick", "a short story", "a diary entry", "a tweet",
             "a radio advertisement", "song lyrics", "a movie scene description", "a short dialogue",
             "a news headline", "a riddle", "a letter to a friend", "a product review"]  # fmt: skip
    relations = ["inspired by", "about", "that captures the mood of", "based on"]
    for form, relation, clip in itertools.product(forms, relations, ["this audio", "the recording", "what you hear"]):
        yield _Candidate("creative", f"Write {form} {relation} {clip}.")
        yield _Candidate("creative", f"Compose {form} {relation} {clip}.")


def _format_constrained() -> Iterable[_Candidate]:
    tasks = ["Describe the audio", "Summarize the recording", "List what you hear", "Describe the speaker",
             "Explain what is happening", "Describe the sounds in the clip", "Summarize the key facts about this audio",
             "Describe the mood of the audio"]  # fmt: skip
    constraints = [f"in exactly {n} bullet points" for n in range(2, 7)]
    constraints += [f"in no more than {n} words" for n in (10, 15, 20, 25, 30, 40, 50)]
    constraints += ["in exactly one sentence"] + [f"in exactly {n} sentences" for n in ("two", "three", "four")]
    constraints += [
        'as a JSON object with the keys "summary" and "details"',
        'as a JSON object with the keys "content", "speaker" and "environment"',
        'as a JSON object with the keys "sound_events" and "mood"',
        'as a JSON object with the keys "description" and "confidence"',
        'as a JSON object with the keys "language" and "topic"',
        "as a numbered list", "as a markdown table with two columns, attribute and value",
        "in all lowercase letters", "in all capital letters", "without using any commas",
        "starting with the word 'Overall'", "and end your answer with a question",
        "using simple words a child would understand", "in the style of a formal report",
        "and wrap your whole answer in double quotation marks",
        "with a title in double angular brackets, like <<title>>",
        "in two paragraphs separated by ***",
    ]  # fmt: skip
    for task, constraint in itertools.product(tasks, constraints):
        yield _Candidate("format_constrained", f"{task} {constraint}.")


def _language() -> Iterable[_Candidate]:
    tasks = ["Describe the audio", "Summarize what you hear", "Write a caption for this clip",
             "Explain what is happening in the recording", "Describe the main sound or voice",
             "Tell me what this clip is about"]  # fmt: skip
    for (language, code), task in itertools.product(LANGUAGES.items(), tasks):
        yield _Candidate("language", f"{task} in {language}.", response_language=code)
        yield _Candidate("language", f"{task}. Respond only in {language}.", response_language=code)
        yield _Candidate("language", f"Answer in {language}: {task[0].lower()}{task[1:]}.", response_language=code)
    for language, code in LANGUAGES.items():  # translation of speech content
        yield _Candidate("language", f"Translate what the speaker says into {language}.", ("speech",), code)
        yield _Candidate("language", f"What does the speaker say? Give the answer in {language}.", ("speech",), code)


_BUILDERS = [_open_description, _captioning, _content, _paralinguistic, _sound_music, _reasoning, _creative,
             _format_constrained, _language]  # fmt: skip
BUILDER_VERSION = "1"


# --- build, load, sample ----------------------------------------------------------------------------------------


def _dedup(candidates: Iterable[_Candidate], index: NearDuplicateIndex | None = None) -> tuple[list[_Candidate], int]:
    index = index or NearDuplicateIndex(threshold=0.85)
    kept, dropped = [], 0
    for number, candidate in enumerate(candidates):
        if index.add_if_new(str(number), candidate.text) is None:
            kept.append(candidate)
        else:
            dropped += 1
    return kept, dropped


def _with_weights(candidates: list[_Candidate]) -> list[Prompt]:
    counts = Counter(c.category for c in candidates)
    prompts = []
    for number, c in enumerate(candidates):
        digest = hashlib.sha1(f"{c.category}|{c.text}".encode()).hexdigest()[:10]
        weight = CATEGORY_WEIGHTS.get(c.category, 0.05) / counts[c.category]
        prompts.append(Prompt(f"p{number:05d}-{digest}", c.category, c.text, round(weight, 8), c.audio_kinds,
                              c.response_language, c.origin))  # fmt: skip
    return prompts


def build_pool() -> tuple[list[Prompt], dict]:
    """Compose, dedup (exact + near-duplicate), weight. Returns the prompts and the build manifest."""
    candidates = [c for builder in _BUILDERS for c in builder()]
    kept, dropped = _dedup(candidates)
    prompts = _with_weights(kept)
    manifest = {
        "pool_version": POOL_VERSION,
        "builder": "desta_audio.data.prompts.build_pool",
        "builder_version": BUILDER_VERSION,
        "candidates": len(candidates),
        "near_duplicates_removed": dropped,
        "prompts": len(prompts),
        "per_category": dict(sorted(Counter(p.category for p in prompts).items())),
        "category_weights": CATEGORY_WEIGHTS,
        "dedup": "normalized exact match + MinHash LSH on words and word pairs, Jaccard >= 0.85",
        "sha256": _content_hash(prompts),
    }
    return prompts, manifest


def _content_hash(prompts: list[Prompt]) -> str:
    return hashlib.sha256("\n".join(_to_line(p) for p in prompts).encode()).hexdigest()


def _to_line(prompt: Prompt) -> str:
    return json.dumps(asdict(prompt), ensure_ascii=False)


def write_pool(prompts: list[Prompt], manifest: dict, path: Path = POOL_PATH, manifest_path: Path = MANIFEST_PATH) -> None:
    atomic_write_text(path, "".join(_to_line(p) + "\n" for p in prompts))
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


_PROMPT_FIELDS = {f.name: f for f in fields(Prompt)}


def _prompt_from_line(path: Path, number: int, line: str) -> Prompt:
    """One pool line, checked: a JSON object with id, category, text and a non-negative numeric weight."""
    where = f"prompt pool {path}:{number}"
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    required = [name for name, f in _PROMPT_FIELDS.items() if f.default is MISSING]
    missing = [name for name in required if name not in raw]
    unknown = sorted(set(raw) - set(_PROMPT_FIELDS))
    if missing or unknown:
        problem = f"missing {missing}" if missing else f"unknown fields {unknown}"
        raise ValueError(f"{where}: {problem}; a line holds {', '.join(required)} and optionally "
                         f"{', '.join(n for n in _PROMPT_FIELDS if n not in required)}")  # fmt: skip
    weight = raw["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"{where}: weight must be a number >= 0, got {weight!r}")
    raw["audio_kinds"] = tuple(raw.get("audio_kinds") or ALL_KINDS)
    return Prompt(**raw)


@dataclass
class PromptPool:
    prompts: list[Prompt]
    version: str = POOL_VERSION
    _tables: dict[str, tuple[list[Prompt], list[float]]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptPool:
        path = Path(path) if path else POOL_PATH
        if not path.exists():
            raise FileNotFoundError(f"prompt pool {path} not found; build it with `desta data prompts --build`")
        prompts = [_prompt_from_line(path, number, line)
                   for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1) if line.strip()]
        manifest = path.with_name(path.stem + ".manifest.json")
        version = json.loads(manifest.read_text()).get("pool_version", POOL_VERSION) if manifest.exists() else "custom"
        return cls(prompts, version)

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, rng: random.Random, kind: str | None = None) -> Prompt:
        """A prompt drawn by weight among those that suit an audio kind ("speech", "sound", "music")."""
        table_key = kind or "*"
        if table_key not in self._tables:
            eligible = [p for p in self.prompts if kind is None or kind in p.audio_kinds]
            if not eligible:
                raise ValueError(f"the prompt pool has no prompt for audio kind {kind!r}")
            self._tables[table_key] = (eligible, list(accumulate(p.weight for p in eligible)))
        eligible, cumulative = self._tables[table_key]
        return eligible[min(bisect_right(cumulative, rng.random() * cumulative[-1]), len(eligible) - 1)]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    pool, info = build_pool()
    write_pool(pool, info)
    logger.info("wrote %d prompts to %s: %s", len(pool), POOL_PATH, info["per_category"])
