"""Quality filters for generated targets. Rejected records are quarantined with a reason, never dropped.

Checks, in order (the first that fires is the reason):
- `empty`: no visible text.
- `truncated`: the generator stopped at `max_new_tokens` (finish reason "length").
- `refusal`: the generator declined or claimed it cannot hear audio (it is given text, so this is a failure).
- `mentions_description`: the answer talks about "the description"/"metadata" instead of the audio: the audio
  model would learn to refer to text it never sees.
- `wrong_language:<got>!=<want>`: the answer is not in the language the instruction asked for (English by default);
  only judged on answers long enough for language identification to be reliable.
- `duplicate_of:<key>`: the same clip already has a near-identical instruction, or a long answer (>= 12 words)
  is a near-duplicate of an earlier one (boilerplate). Short answers ("The speaker is female.") are legitimately
  shared across clips and are not deduplicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from desta_audio.data.dedup import NearDuplicateIndex

_REFUSAL = re.compile(
    r"\b(i'?m sorry,? but|i am sorry,? but|i apologi[sz]e,? but|i can(?:no|')t (?:help|assist|comply|provide|"
    r"listen|hear|access|process|play)|i(?: am|'m) (?:unable|not able) to (?:listen|hear|access|process|play|help)|"
    r"as an ai(?: language model)?|i don'?t have (?:the ability|access) to (?:listen|hear|audio|play)|"
    r"i do not have (?:the ability|access) to (?:listen|hear|audio|play)|"
    r"(?:cannot|can't|unable to) (?:listen to|hear|play|analy[sz]e) (?:the |this |any )?(?:audio|recording|clip|sound))",
    re.IGNORECASE,
)
_MENTIONS_DESCRIPTION = re.compile(
    r"\b(the (?:given|provided|text|seed|audio) description|the description (?:provided|given|says|mentions|states|"
    r"indicates|notes)|(?:according to|based on|from) the (?:description|metadata)\b|(?:according to|based on|from) "
    r"the (?:text|information) (?:provided|given|above)|the metadata|the (?:provided|given) text|"
    r"the timestamps? (?:provided|given))",
    re.IGNORECASE,
)
MIN_WORDS_FOR_LANGUAGE_ID = 6
MIN_WORDS_FOR_RESPONSE_DEDUP = 12


def detect_language(text: str) -> str | None:
    """ISO code of the text's language, or None when it cannot tell (deterministic `langdetect`)."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return None


def _same_language(got: str, want: str) -> bool:
    return got.split("-")[0] == want.split("-")[0]


@dataclass
class ResponseFilter:
    """Stateful filter: call `check` for each record in order; returns a quarantine reason or None (keep)."""

    check_language: bool = True
    dedup_threshold: float = 0.85
    _responses: NearDuplicateIndex = field(init=False)
    _prompts_per_clip: dict[str, NearDuplicateIndex] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._responses = NearDuplicateIndex(threshold=self.dedup_threshold)

    def remember(self, key: str, clip: str, prompt: str, response: str) -> None:
        """Register an already-kept record (e.g. from existing shards when resuming)."""
        self._clip_index(clip).add(key, prompt)
        if len(response.split()) >= MIN_WORDS_FOR_RESPONSE_DEDUP:
            self._responses.add(key, response)

    def _clip_index(self, clip: str) -> NearDuplicateIndex:
        if clip not in self._prompts_per_clip:
            self._prompts_per_clip[clip] = NearDuplicateIndex(threshold=self.dedup_threshold, num_perm=32)
        return self._prompts_per_clip[clip]

    def check(
        self,
        key: str,
        clip: str,
        prompt: str,
        response: str,
        finish_reason: str | None = None,
        expected_language: str | None = "en",
    ) -> str | None:
        reason = quality_reason(response, finish_reason, expected_language if self.check_language else None)
        if reason:
            return reason
        earlier = self._clip_index(clip).find(prompt)
        if earlier is not None:
            return f"duplicate_of:{earlier}"
        if len(response.split()) >= MIN_WORDS_FOR_RESPONSE_DEDUP:
            earlier = self._responses.find(response)
            if earlier is not None:
                return f"duplicate_of:{earlier}"
        self.remember(key, clip, prompt, response)
        return None


def quality_reason(response: str, finish_reason: str | None, expected_language: str | None) -> str | None:
    """The stateless checks (empty, truncated, refusal, mentions_description, wrong_language)."""
    text = response.strip()
    if not text:
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if _REFUSAL.search(text):
        return "refusal"
    if _MENTIONS_DESCRIPTION.search(text):
        return "mentions_description"
    long_enough = len(text.split()) >= MIN_WORDS_FOR_LANGUAGE_ID or (
        _is_cjk_language(expected_language) and len(text) >= 4
    )
    if expected_language and long_enough:
        got = detect_language(text)
        if got and not _same_language(got, expected_language):
            return f"wrong_language:{got}!={expected_language}"
    return None


def _is_cjk_language(code: str | None) -> bool:
    # Chinese/Japanese answers have no spaces, so word counts say nothing about their length.
    return bool(code) and code.split("-")[0] in {"zh", "ja", "ko"}
