"""Rule-based instruction checkers of IFEval (Zhou et al., 2023) and the Speech-IFEval variants.

Written from the published behaviour of google-research `instruction_following_eval` (the "stock" checkers,
used by VoiceBench's ifeval subset) and of Speech-IFEval's modified copy (`variant="speech_ifeval"`):
- bullet lists: a literal backslash-n is turned into a newline first; lines starting with `*`, `-`, `•` or a digit
  count, and the count must equal the target;
- paragraphs: the stripped reply splits on a `***` divider (with any whitespace around it) or on a run of newlines;
  an empty first/last piece is dropped, an empty middle piece fails (a whitespace-only line between paragraphs
  leaves one: an official quirk, kept; `paragraph_split="blank_lines"` folds such lines into the break instead);
  `nth_paragraph_first_word` keeps IFEval's rule (paragraphs split on exactly two newlines);
- "starts with" (repeat_prompt) strips surrounding quotes and compares lowercased;
- upper/lower case checks skip language detection.

Two differences from stock IFEval are unavoidable offline, both where it uses NLTK's punkt model (a download):
`capital_word_frequency` tokenises with a regex instead of punkt's `word_tokenize`, and `number_sentences` counts
with IFEval's own rule-based sentence splitter (`split_into_sentences`, which stock IFEval ships but does not use
for this check) instead of punkt's sentence tokenizer. Counts differ only on abbreviations, decimals and unusual
punctuation.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

STOCK = "stock"
SPEECH_IFEVAL = "speech_ifeval"

# ---------------------------------------------------------------- text helpers (IFEval's instructions_util)
_ALPHA = "([A-Za-z])"
_DIGIT = "([0-9])"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s"
             r"|This\s|Wherever)")
_ACRONYM = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
# IFEval's rule-based sentence splitter: protect dots that do not end a sentence as <prd>, mark ends as <stop>.
_SENTENCE_STEPS: list[tuple[str, Any]] = [
    ("(Mr|St|Mrs|Ms|Dr)[.]", "\\1<prd>"),
    ("[.](com|net|org|io|gov|edu|me)", "<prd>\\1"),
    (_DIGIT + "[.]" + _DIGIT, "\\1<prd>\\2"),
    (r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>"),
]
_SENTENCE_STEPS_2: list[tuple[str, Any]] = [
    (r"\s" + _ALPHA + "[.] ", " \\1<prd> "),
    (_ACRONYM + " " + _STARTERS, "\\1<stop> \\2"),
    (_ALPHA + "[.]" + _ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>\\3<prd>"),
    (_ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>"),
    (" (Inc|Ltd|Jr|Sr|Co)[.] " + _STARTERS, " \\1<stop> \\2"),
    (" (Inc|Ltd|Jr|Sr|Co)[.]", " \\1<prd>"),
    (" " + _ALPHA + "[.]", " \\1<prd>"),
]


def split_into_sentences(text: str) -> list[str]:
    text = (" " + text + "  ").replace("\n", " ")
    for pattern, replacement in _SENTENCE_STEPS:
        text = re.sub(pattern, replacement, text)
    text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    for pattern, replacement in _SENTENCE_STEPS_2:
        text = re.sub(pattern, replacement, text)
    for closing in (".\u201d", '."', '!"', '?"'):  # move the mark outside the closing quote
        text = text.replace(closing, closing[1] + closing[0])
    for mark in ".?!":
        text = text.replace(mark, mark + "<stop>")
    sentences = [s.strip() for s in text.replace("<prd>", ".").split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_sentences(text: str) -> int:
    return len(split_into_sentences(text))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _compare(actual: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return actual < target
    if relation == "at least":
        return actual >= target
    raise ValueError(f"relation must be 'less than' or 'at least', got {relation!r}")


def _detect_language(text: str) -> str | None:
    import langdetect

    langdetect.DetectorFactory.seed = 0  # langdetect is random by default; IFEval runs are not, in practice
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None  # IFEval counts an undetectable language as followed


# ---------------------------------------------------------------- checkers: (response, kwargs, prompt) -> bool
def _bullets(value: str, kw: dict, variant: str) -> bool:
    if variant == SPEECH_IFEVAL:
        value = value.replace("\\n", "\n")
        # One pass per marker, summed, as upstream counts: a match can run over a line break ("*" then a newline),
        # so a single combined pass would swallow a bullet line that another marker's pass still counts.
        count = sum(len(re.findall(pattern, value, flags=re.MULTILINE))
                    for pattern in (r"^\s*\*[^\*].*$", r"^\s*-.*$", r"^\s*•.*$", r"^\s*\d.*$"))
    else:
        count = len(re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)) + len(
            re.findall(r"^\s*-.*$", value, flags=re.MULTILINE))
    return count == int(kw["num_bullets"])


def _paragraphs(value: str, kw: dict, variant: str, paragraph_split: str = "newline") -> bool:
    if variant == SPEECH_IFEVAL:
        # Speech-IFEval's checker (its instruction_following_eval/instructions.py): the reply is stripped, then a
        # `***` divider swallows all whitespace around it and a run of newlines is one break, so blank lines between
        # paragraphs are fine but a line holding only spaces leaves an empty middle piece.
        separator = r"\s*\*\*\*\s*|\n+" if paragraph_split == "newline" else r"\s*\*\*\*\s*|\n\s*"
        pieces = re.split(separator, value.strip())
    else:
        pieces = re.split(r"\s?\*\*\*\s?", value)
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if index in (0, len(pieces) - 1):
                count -= 1
            else:
                return False
    return count == int(kw["num_paragraphs"])


def _nth_paragraph_first_word(value: str, kw: dict, variant: str) -> bool:
    paragraphs = re.split(r"\n\n", value)
    count = sum(1 for p in paragraphs if p.strip())
    nth = int(kw["nth_paragraph"])
    if nth > count:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first += letter.lower()
    return count == int(kw["num_paragraphs"]) and first == str(kw["first_word"]).lower()


def _json(value: str, kw: dict, variant: str) -> bool:
    value = value.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(fence)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _title(value: str, kw: dict, variant: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


def _quotation(value: str, kw: dict, variant: str) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def _end_checker(value: str, kw: dict, variant: str) -> bool:
    return value.strip().strip('"').lower().endswith(str(kw["end_phrase"]).strip().lower())


def _repeat_prompt(value: str, kw: dict, variant: str) -> bool:
    target = str(kw["prompt_to_repeat"]).strip().lower()
    if variant == SPEECH_IFEVAL:
        return value.strip().strip("\"'").lower().startswith(target)
    return value.strip().lower().startswith(target)


def _english_capital(value: str, kw: dict, variant: str) -> bool:
    if variant == SPEECH_IFEVAL:
        return value.isupper()
    language = _detect_language(value)
    return value.isupper() and (language is None or language == "en")


def _english_lowercase(value: str, kw: dict, variant: str) -> bool:
    if variant == SPEECH_IFEVAL:
        return value.islower()
    language = _detect_language(value)
    return value.islower() and (language is None or language == "en")


def _keywords_existence(value: str, kw: dict, variant: str) -> bool:
    return all(re.search(k, value, flags=re.IGNORECASE) for k in kw["keywords"])


def _forbidden_words(value: str, kw: dict, variant: str) -> bool:
    return not any(re.search(r"\b" + w + r"\b", value, flags=re.IGNORECASE) for w in kw["forbidden_words"])


def _keyword_frequency(value: str, kw: dict, variant: str) -> bool:
    found = len(re.findall(str(kw["keyword"]).strip(), value, flags=re.IGNORECASE))
    return _compare(found, kw["relation"], int(kw["frequency"]))


def _letter_frequency(value: str, kw: dict, variant: str) -> bool:
    counts = collections.Counter(value.lower())
    return _compare(counts[str(kw["letter"]).lower()], kw["let_relation"], int(kw["let_frequency"]))


def _number_words(value: str, kw: dict, variant: str) -> bool:
    return _compare(count_words(value), kw["relation"], int(kw["num_words"]))


def _number_sentences(value: str, kw: dict, variant: str) -> bool:
    return _compare(count_sentences(value), kw["relation"], int(kw["num_sentences"]))


def _response_language(value: str, kw: dict, variant: str) -> bool:
    language = _detect_language(value)
    return language is None or language == kw["language"]


def _placeholders(value: str, kw: dict, variant: str) -> bool:
    return len(re.findall(r"\[.*?\]", value)) >= int(kw["num_placeholders"])


def _postscript(value: str, kw: dict, variant: str) -> bool:
    marker = str(kw["postscript_marker"]).strip()
    value = value.lower()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, value, flags=re.MULTILINE))


def _constrained_response(value: str, kw: dict, variant: str) -> bool:
    value = value.strip()
    return any(option in value for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _highlights(value: str, kw: dict, variant: str) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
    return count >= int(kw["num_highlights"])


def _sections(value: str, kw: dict, variant: str) -> bool:
    splitter = str(kw["section_spliter"]).strip()
    sections = re.split(r"\s?" + splitter + r"\s?\d+\s?", value)
    return len(sections) - 1 >= int(kw["num_sections"])


def _two_responses(value: str, kw: dict, variant: str) -> bool:
    valid = []
    pieces = value.split("******")
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if index not in (0, len(pieces) - 1):
                return False
        else:
            valid.append(piece)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _capital_word_frequency(value: str, kw: dict, variant: str) -> bool:
    capitals = [w for w in re.findall(r"\w+|[^\w\s]+", value) if w.isupper()]
    return _compare(len(capitals), kw["capital_relation"], int(kw["capital_frequency"]))


def _no_comma(value: str, kw: dict, variant: str) -> bool:
    return "," not in value


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": _keywords_existence,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _response_language,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:json_format": _json,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_checker,
    "startend:quotation": _quotation,
    "change_case:capital_word_frequency": _capital_word_frequency,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "punctuation:no_comma": _no_comma,
}


def check_instruction(instruction_id: str, response: str, kwargs: dict | None, *, variant: str = STOCK,
                      paragraph_split: str = "newline") -> bool:
    """Whether `response` follows one instruction (strict mode: the response as written; empty never follows)."""
    checker = CHECKERS.get(instruction_id)
    if checker is None:
        raise KeyError(f"unknown IFEval instruction id {instruction_id!r}; known: {', '.join(sorted(CHECKERS))}")
    if not response.strip():
        return False
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    if checker is _paragraphs:
        return _paragraphs(response, kwargs, variant, paragraph_split)
    return bool(checker(response, kwargs, variant))


def loose_variants(response: str) -> list[str]:
    """IFEval's loose mode: the response, without its first and/or last line, and without asterisks."""
    lines = response.split("\n")
    trimmed = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", "")] + trimmed + [t.replace("*", "") for t in trimmed]


def follow_list(instruction_ids: list[str], kwargs_list: list[dict], response: str, *, loose: bool = False,
                variant: str = STOCK) -> list[bool]:
    candidates = loose_variants(response) if loose else [response]
    return [
        any(check_instruction(iid, text, kw, variant=variant) for text in candidates)
        for iid, kw in zip(instruction_ids, kwargs_list)
    ]


def forgetting_delta(audio_rate: float, text_rate: float) -> float | None:
    """Speech-IFEval's forgetting delta (%): (rate_audio - rate_text) / rate_text x 100; None without a text rate."""
    return (audio_rate - text_rate) / text_rate * 100 if text_rate else None
