"""Self-generated targets: plan -> chats -> backend -> filters -> crash-safe shards.

The chat (audio slot first, then the instruction; the same layout for every record):

    system: <system prompt>                                     (default "Focus on the audio clips and instructions.")
    user:   <start_audio><|AUDIO|><end_audio>\\n<instruction>     audios=[{"audio": path, "text": transcript}]

The generator sees it with `<|AUDIO|>` replaced by the seed description text; its answer becomes the assistant
turn of the stored (training) chat, which keeps the `<|AUDIO|>` form.

The plan is deterministic: clips in source order, `samples_per_clip` keys per clip (`<dataset>/<id>#<n>`), prompt
choices and seeds derived from the global seed and the key. A rerun skips keys already in completed shards; it must
use the settings that shaped the records already there (`RECORD_SHAPING`), or one folder would mix two kinds.
Before generating, every clip still to do must have audio whose header reads: a record must point at usable audio.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desta_audio import __version__
from desta_audio.data.audio_files import UnusableAudio, unusable_audio_summary
from desta_audio.data.backends import Backend, Generation, GenerationRequest
from desta_audio.data.baselines import TEMPLATE_POOL_VERSION, template_choices
from desta_audio.data.describe import DESCRIPTION_FORMAT_VERSION, describe
from desta_audio.data.filters import ResponseFilter
from desta_audio.data.prompts import Prompt, PromptPool
from desta_audio.data.sources import SourceItem
from desta_audio.data.store import Decoding, Provenance, Record, ShardStore

logger = logging.getLogger(__name__)

AUDIO_LOCATOR = "<|AUDIO|>"
AUDIO_SLOT = f"<start_audio>{AUDIO_LOCATOR}<end_audio>"
DEFAULT_SYSTEM_PROMPT = "Focus on the audio clips and instructions."
TARGET_SOURCES = ("self", "other-llm", "template")
# Run settings that decide what a record holds (generation.json keys); a resumed run must keep them.
RECORD_SHAPING = ("target_source", "backend", "generator", "weights_sha256", "system_prompt", "decoding", "seed",
                  "pool_version", "description_format_version", "check_language")


@dataclass
class PlannedSample:
    key: str
    item: SourceItem
    description: str
    prompt: Prompt
    seed: int
    template_answer: str | None = None


@dataclass
class GenerationSettings:
    target_source: str = "self"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    decoding: Decoding = field(default_factory=Decoding)
    seed: int = 0
    samples_per_clip: int = 1
    shard_size: int = 256
    check_language: bool = True

    def __post_init__(self) -> None:
        if self.target_source not in TARGET_SOURCES:
            raise ValueError(f"unknown target {self.target_source!r} (--target): use {', '.join(TARGET_SOURCES)}")
        if self.samples_per_clip < 1 or self.shard_size < 1:
            raise ValueError("samples_per_clip and shard_size must be >= 1")


@dataclass
class RunSummary:
    planned: int = 0
    skipped: int = 0  # already done by an earlier run
    kept: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def derive_seed(global_seed: int, key: str) -> int:
    """A 63-bit seed that depends only on the run seed and the record key."""
    return int.from_bytes(hashlib.sha256(f"{global_seed}:{key}".encode()).digest()[:8], "big") >> 1


def clip_transcript(item: SourceItem) -> str | None:
    if item.transcript:
        return item.transcript
    texts = [s.text for s in item.segments if s.text]
    return " ".join(texts) if texts else None


def training_messages(item: SourceItem, instruction: str, system_prompt: str) -> list[dict[str, Any]]:
    """The chat the audio model trains on (without the assistant turn)."""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": f"{AUDIO_SLOT}\n{instruction}",
            "audios": [{"audio": item.audio, "text": clip_transcript(item)}],
        },
    ]


def generator_messages(messages: list[dict[str, Any]], description: str) -> list[dict[str, str]]:
    """The same chat as text: the audio slot carries the seed description; the audio list is dropped."""
    return [{"role": m["role"], "content": m["content"].replace(AUDIO_LOCATOR, description)} for m in messages]


def plan_samples(
    items: Iterable[SourceItem], pool: PromptPool | None, settings: GenerationSettings
) -> Iterator[PlannedSample]:
    """The deterministic plan. Clips of one run must have distinct (dataset, id)."""
    seen: set[str] = set()
    for item in items:
        clip_key = f"{item.dataset}/{item.id}"
        if clip_key in seen:
            raise ValueError(f"clip {clip_key!r} appears twice in the sources; ids must be unique per dataset")
        seen.add(clip_key)
        description = describe(item)
        clip_rng = random.Random(derive_seed(settings.seed, clip_key))
        used: set[str] = set()
        templates = template_choices(item, clip_rng) if settings.target_source == "template" else []
        for number in range(settings.samples_per_clip):
            key = f"{clip_key}#{number}"
            template_answer = None
            if settings.target_source == "template":
                prompt, template_answer = templates[number % len(templates)]
            else:
                if pool is None:
                    raise ValueError("a prompt pool is needed unless target_source is 'template'")
                prompt = pool.sample(clip_rng, item.kind)
                for _ in range(8):  # prefer distinct instructions for the samples of one clip
                    if prompt.id not in used:
                        break
                    prompt = pool.sample(clip_rng, item.kind)
            used.add(prompt.id)
            yield PlannedSample(key, item, description, prompt, derive_seed(settings.seed, key), template_answer)


def _record(
    sample: PlannedSample,
    generation: Generation,
    backend: Backend,
    settings: GenerationSettings,
    pool_version: str,
) -> Record:
    messages = training_messages(sample.item, sample.prompt.text, settings.system_prompt)
    messages.append({"role": "assistant", "content": generation.text})
    template = settings.target_source == "template"
    return Record(
        key=sample.key,
        id=sample.item.id,
        dataset=sample.item.dataset,
        seed_description=sample.description,
        prompt=sample.prompt.text,
        response=generation.text,
        messages=messages,
        provenance=Provenance(
            target_source=settings.target_source,
            backend=backend.name,
            generator=backend.model_id,
            weights_sha256=backend.weights_sha256(),
            decoding=None if template else settings.decoding,
            seed=sample.seed,
            prompt_id=sample.prompt.id,
            prompt_category=sample.prompt.category,
            pool_version=TEMPLATE_POOL_VERSION if template else pool_version,
            description_format_version=DESCRIPTION_FORMAT_VERSION,
            system_prompt=settings.system_prompt,
            project_version=__version__,
            finish_reason=generation.finish_reason,
            response_tokens=generation.tokens,
        ),
    )


def request_for(sample: PlannedSample, settings: GenerationSettings) -> GenerationRequest:
    messages = training_messages(sample.item, sample.prompt.text, settings.system_prompt)
    return GenerationRequest(generator_messages(messages, sample.description), sample.seed, sample.template_answer)


GenerateFn = Callable[[list[GenerationRequest]], list[Generation]]


def run_generation(
    items: Iterable[SourceItem],
    backend: Backend,
    out_dir: str | Path,
    settings: GenerationSettings,
    pool: PromptPool | None = None,
    generate_fn: Callable[[list[PlannedSample]], Iterator[tuple[list[PlannedSample], list[Generation]]]] | None = None,
    progress: bool = True,
) -> RunSummary:
    """Generate every planned record not already stored; one atomic shard per `settings.shard_size` records.

    `generate_fn` lets a distributed engine (Ray Data) produce the generations: it receives all pending samples
    and yields (samples, generations) chunks in any order; storage and filtering stay here, in one process.
    """
    from tqdm.auto import tqdm

    # A new output folder is made only once the plan and its audio passed their checks: a refused run leaves none.
    store = ShardStore(out_dir) if Path(out_dir).exists() else None
    done = store.completed_keys() if store else set()
    pool_version = pool.version if pool else TEMPLATE_POOL_VERSION
    run_settings = {
        "target_source": settings.target_source,
        "backend": backend.name,
        "generator": backend.model_id,
        "weights_sha256": backend.weights_sha256(),
        "system_prompt": settings.system_prompt,
        "decoding": settings.decoding.model_dump(),
        "seed": settings.seed,
        "samples_per_clip": settings.samples_per_clip,
        "check_language": settings.check_language,
        "pool_version": pool_version,
        "description_format_version": DESCRIPTION_FORMAT_VERSION,
        "project_version": __version__,
    }
    if store and done:
        check_same_record_settings(store, run_settings)
    plan = list(plan_samples(list(items), pool, settings))  # the whole source is read (and checked) first
    pending = [s for s in plan if s.key not in done]
    check_audio(pending)
    store = store or ShardStore(out_dir)
    response_filter = ResponseFilter(check_language=settings.check_language)
    for row in store.iter_rows():
        response_filter.remember(row["key"], f"{row['dataset']}/{row['id']}", row["prompt"], row["response"])
    summary = RunSummary(planned=len(plan), skipped=len(plan) - len(pending))
    store.write_run_settings({**run_settings, "planned": summary.planned, "already_done": summary.skipped})
    logger.info("%d records planned, %d already done, %d to generate", summary.planned, summary.skipped, len(pending))
    bar = tqdm(total=len(pending), desc="generating", unit="rec", disable=not progress)

    def local_chunks() -> Iterator[tuple[list[PlannedSample], list[Generation]]]:
        for start in range(0, len(pending), settings.shard_size):
            chunk = pending[start : start + settings.shard_size]
            requests = [request_for(s, settings) for s in chunk]
            yield chunk, backend.generate(requests, settings.decoding, progress=bar.update)

    chunks = generate_fn(pending) if generate_fn else local_chunks()
    with bar:
        for chunk, generations in chunks:
            kept, quarantined = [], []
            for sample, generation in zip(chunk, generations, strict=True):
                record = _record(sample, generation, backend, settings, pool_version)
                reason = response_filter.check(
                    sample.key,
                    f"{sample.item.dataset}/{sample.item.id}",
                    record.prompt,
                    record.response,
                    generation.finish_reason,
                    # templated answers quote transcripts verbatim, so their language is the clip's, not a choice
                    None if settings.target_source == "template" else sample.prompt.response_language,
                )
                if reason:
                    record.quarantine_reason = reason
                    quarantined.append(record)
                    key = reason.split(":")[0]
                    summary.reasons[key] = summary.reasons.get(key, 0) + 1
                else:
                    kept.append(record)
            store.write_shard(kept, quarantined)
            summary.kept += len(kept)
            summary.quarantined += len(quarantined)
            if generate_fn:  # the local backend moves the bar itself, batch by batch
                bar.update(len(chunk))
    return summary


def check_same_record_settings(store: ShardStore, current: dict[str, Any]) -> None:
    """Refuse to add records made with other settings to a folder that already holds some."""
    history = store.run_settings_history()
    if not history:
        return
    earlier = history[-1]  # every run that added records shared these (each was checked in turn)
    changed = [key for key in RECORD_SHAPING if key in earlier and earlier[key] != current[key]]
    same_weights = earlier.get("weights_sha256") is not None and earlier["weights_sha256"] == current["weights_sha256"]
    if "generator" in changed and same_weights:
        changed.remove("generator")  # the same weights named another way (a folder path vs a packaged name)
    if changed:
        listed = "; ".join(f"{key}: {earlier[key]!r} -> {current[key]!r}" for key in changed)
        raise ValueError(f"{store.root} already holds records generated with other settings ({listed}); rerun with "
                         "the earlier settings to resume, or write to a new output folder")  # fmt: skip


def check_audio(samples: Iterable[PlannedSample]) -> None:
    """Every clip still to generate must point at an existing file whose audio header reads (nothing decoded)."""
    summary = unusable_audio_summary(sample.item for sample in samples)
    if summary:
        raise UnusableAudio(f"{summary}. Nothing was generated; fix the paths (audio_root in the mapping) or the "
                            "files, or remove those rows, then rerun")  # fmt: skip
