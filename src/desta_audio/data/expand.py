"""Grow the prompt pool with the backbone itself (`desta data prompts --expand N`).

For each category the backbone sees a few of the category's instructions and writes one new one (sampled, seeded).
Answers are cleaned (first line, no numbering or quotes), kept only if they look like an instruction (3-40 words),
and deduplicated against the pool (exact + near-duplicate). Existing prompts keep their ids; weights are
recomputed so each category keeps its share.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import replace

from desta_audio.data.backends import Backend, GenerationRequest
from desta_audio.data.dedup import NearDuplicateIndex
from desta_audio.data.prompts import CATEGORY_WEIGHTS, Prompt, PromptPool
from desta_audio.data.store import Decoding

EXAMPLES_PER_REQUEST = 5
_LEADING_JUNK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|instruction\s*:|new instruction\s*:)\s*", re.IGNORECASE)


def _request_text(category: str, examples: list[str]) -> str:
    shown = "\n".join(f"- {example}" for example in examples)
    return (
        f"Here are instructions a user could give an assistant about an audio clip (category: "
        f"{category.replace('_', ' ')}):\n{shown}\n\nWrite one new instruction of the same kind, different from "
        f"these. Reply with the instruction only."
    )


def clean_instruction(text: str) -> str | None:
    """The instruction in a model's answer, or None when the answer does not look like one."""
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    line = _LEADING_JUNK.sub("", line).strip().strip("\"'“”").strip()
    words = line.split()
    if not 3 <= len(words) <= 40 or not line[0].isalpha() or line[-1] not in ".?!":
        return None
    return line


def expand_pool(
    pool: PromptPool, backend: Backend, per_category: int, seed: int = 0, max_new_tokens: int = 48
) -> tuple[PromptPool, int]:
    """A new pool with up to `per_category` backbone-written prompts added to each category; returns (pool, added)."""
    rng = random.Random(seed)
    index = NearDuplicateIndex(threshold=0.85)
    for prompt in pool.prompts:
        index.add(prompt.id, prompt.text)
    by_category: dict[str, list[Prompt]] = {}
    for prompt in pool.prompts:
        by_category.setdefault(prompt.category, []).append(prompt)
    requests, meta = [], []
    for category, members in sorted(by_category.items()):
        for attempt in range(per_category * 2):  # answers get rejected; ask twice as often as needed
            examples = rng.sample(members, min(EXAMPLES_PER_REQUEST, len(members)))
            message = {"role": "user", "content": _request_text(category, [p.text for p in examples])}
            requests.append(GenerationRequest([message], seed=rng.getrandbits(63)))
            meta.append((category, examples))
    decoding = Decoding(do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=max_new_tokens)
    answers = backend.generate(requests, decoding)
    added: list[Prompt] = []
    per_category_added: Counter = Counter()
    for (category, examples), answer in zip(meta, answers):
        text = clean_instruction(answer.text) if answer.finish_reason == "stop" else None
        if text is None or per_category_added[category] >= per_category:
            continue
        digest = hashlib.sha1(f"{category}|{text}".encode()).hexdigest()[:10]
        key = f"x{len(pool.prompts) + len(added):05d}-{digest}"
        if index.add_if_new(key, text) is not None:
            continue
        kinds = tuple(sorted({k for p in examples for k in p.audio_kinds}))
        language = Counter(p.response_language for p in examples).most_common(1)[0][0]
        added.append(Prompt(key, category, text, 0.0, kinds, language, f"expanded:{backend.model_id}"))
        per_category_added[category] += 1
    prompts = list(pool.prompts) + added
    counts = Counter(p.category for p in prompts)
    reweighted = [replace(p, weight=round(CATEGORY_WEIGHTS.get(p.category, 0.05) / counts[p.category], 8))
                  for p in prompts]  # fmt: skip
    suffix = hashlib.sha1("".join(p.id for p in added).encode()).hexdigest()[:8]
    return PromptPool(reweighted, f"{pool.version}+x{suffix}" if added else pool.version), len(added)
