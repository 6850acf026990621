"""Task-specific templated targets: the "task instruction data" baseline the paper compares against.

Each clip gets one question about one attribute it has, answered by a fixed sentence ("The speaker is female.").
"""

from __future__ import annotations

import random

from desta_audio.data.prompts import Prompt
from desta_audio.data.sources import SourceItem

TEMPLATE_POOL_VERSION = "template-1"

# attribute -> (question, answer with {value} / {lower})
_TEMPLATES: dict[str, tuple[str, str]] = {
    "Gender": ("What is the gender of the speaker?", "The speaker is {lower}."),
    "Emotion": ("What emotion does the speaker convey?", "The speaker sounds {lower}."),
    "Pitch": ("How would you describe the pitch of the speaker's voice?", "The speaker's pitch is {lower}."),
    "Volume": ("How loud is the speaker?", "The speaker's volume is {lower}."),
    "Speaking speed": ("How fast is the speaker talking?", "The speaking speed is {lower}."),
    "Age": ("How old does the speaker sound?", "The speaker's age is {value}."),
    "Accent": ("What accent does the speaker have?", "The speaker has a {value} accent."),
    "Language": ("What language is spoken?", "The language spoken is {value}."),
    "Noise level": ("How noisy is the recording?", "The noise level is {lower}."),
    "Audio category": ("What sound can you hear?", "The sound is {value}."),
    "Genre": ("What genre is this music?", "The genre of the music is {value}."),
    "Instrument": ("Which instrument is playing?", "The instrument is {value}."),
    "Command": ("What command is spoken?", "The command is \"{value}\"."),
    "Number of speakers": ("How many speakers are there?", "There are {value} speakers."),
}
_TRANSCRIPT = ("What did the speaker say?", "The speaker said: \"{value}\"")
_CAPTION = ("Describe the audio.", "{value}")


def template_targets(item: SourceItem) -> list[tuple[str, str, str]]:
    """(attribute, question, answer) for every attribute of the clip that has a template."""
    targets = []
    if item.transcript:
        targets.append(("transcript", _TRANSCRIPT[0], _TRANSCRIPT[1].format(value=item.transcript)))
    if item.caption:
        caption = item.caption if item.caption.endswith(".") else item.caption + "."
        targets.append(("caption", _CAPTION[0], caption[0].upper() + caption[1:]))
    for name, value in item.attributes.items():
        question, answer = _TEMPLATES.get(name, (f"What is the {name.lower()}?", f"The {name.lower()} is {{value}}."))
        targets.append((name, question, answer.format(value=value, lower=value.lower())))
    return targets


def template_choices(item: SourceItem, rng: random.Random) -> list[tuple[Prompt, str]]:
    """The clip's templated (question, answer) pairs in a seeded random order (samples take them in turn)."""
    targets = template_targets(item)
    if not targets:
        raise ValueError(f"clip {item.id!r} ({item.dataset}) has no transcript, caption or attribute to template")
    rng.shuffle(targets)
    return [(Prompt(id=f"template:{attribute}", category="template", text=question, weight=1.0), answer)
            for attribute, question, answer in targets]  # fmt: skip
