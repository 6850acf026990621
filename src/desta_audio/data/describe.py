"""Metadata -> seed description, in the format of SPEC section 5.

    [00:00-00:02] Excuse me? (Gender: Female, Emotion: Neutral, Duration: 2s)
    [00:00-00:10] (Plastic crinkling as people talk)
    [00:00-00:03] Alice: Hi there. (Emotion: Happy)        <- one line per segment for multi-speaker audio

Deterministic: the same item (and audio file) always gives the same text. A clip whose metadata lacks a duration
takes it from its audio file's header, since every line opens with a time span. Any change to the output for an
existing input must bump `DESCRIPTION_FORMAT_VERSION`, which every generated record carries.
"""

from __future__ import annotations

import math

from desta_audio.data.audio_files import UnusableAudio, audio_duration
from desta_audio.data.sources import Segment, SourceItem

# 1.1: a missing duration is read from the audio header (was 00:00); a multi-speaker clip keeps its Duration.
DESCRIPTION_FORMAT_VERSION = "1.1"


def format_timestamp(seconds: float, round_up: bool = False) -> str:
    """MM:SS (minutes keep counting past 59). Starts round down and ends up, so a span covers its audio."""
    total = max(0, math.ceil(seconds - 1e-6) if round_up else math.floor(seconds + 1e-6))
    return f"{total // 60:02d}:{total % 60:02d}"


def format_duration(seconds: float) -> str:
    """Whole seconds when close to an integer ("2s"), else one decimal ("4.7s")."""
    rounded = round(seconds, 1)
    return f"{rounded:.0f}s" if math.isclose(rounded, round(rounded)) else f"{rounded:.1f}s"


def describe(item: SourceItem) -> str:
    """The seed description of one clip (a precomputed `item.seed_description` wins)."""
    if item.seed_description:
        return item.seed_description
    duration = item.duration if item.duration is not None else _measured_duration(item)
    if item.segments:
        return _describe_segments(item, duration)
    attributes = dict(item.attributes)
    attributes["Duration"] = format_duration(duration)
    return _line(0.0, duration, _spoken(item), item.caption, attributes)


def _measured_duration(item: SourceItem) -> float:
    try:
        return audio_duration(item.audio)
    except UnusableAudio as error:
        raise UnusableAudio(f"clip {item.id!r} ({item.dataset}) has no duration in its metadata and its audio "
                            f"cannot tell: {error}") from None


def _spoken(item: SourceItem) -> str | None:
    # Sound and music clips have no spoken content unless the source gives lyrics/transcript explicitly.
    return item.transcript


def _describe_segments(item: SourceItem, duration: float) -> str:
    # Clip-level facts (number of speakers, noise, a caption, the duration) get their own line spanning the clip.
    clip_attributes = dict(item.attributes)
    clip_attributes["Duration"] = format_duration(duration)
    lines = [_line(0.0, max(duration, *(s.end for s in item.segments)), None, item.caption, clip_attributes)]
    lines.extend(_segment_line(segment) for segment in item.segments)
    return "\n".join(lines)


def _segment_line(segment: Segment) -> str:
    text = segment.text
    if segment.speaker:
        text = f"{segment.speaker}: {text}" if text else f"{segment.speaker}:"
    return _line(segment.start, segment.end, text, None, segment.attributes)


def _line(start: float, end: float, text: str | None, caption: str | None, attributes: dict[str, str]) -> str:
    parts = [f"[{format_timestamp(start)}-{format_timestamp(end, round_up=True)}]"]
    if text:
        parts.append(_one_line(text))
    if caption:
        parts.append(f"({_one_line(caption)})")
    if attributes:
        parts.append("(" + ", ".join(f"{name}: {_one_line(value)}" for name, value in attributes.items()) + ")")
    return " ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_attributes(description: str) -> dict[str, list[str]]:
    """Attribute name -> values found in a description's `(Name: value, ...)` groups (used by `stats`)."""
    found: dict[str, list[str]] = {}
    for line in description.splitlines():
        if not line.endswith(")") or "(" not in line:
            continue
        group = line[line.rfind("(") + 1 : -1]
        for pair in group.split(", "):
            name, sep, value = pair.partition(": ")
            if sep and name and len(name) <= 40:
                found.setdefault(name.strip(), []).append(value.strip())
    return found
