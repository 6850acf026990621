"""`desta data`: describe, annotate, prompts, generate, stats. Heavy imports happen inside the commands."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any

import typer

from desta_audio.cli_logging import setup_logging

app = typer.Typer(help="Build self-generated alignment data (seed descriptions -> backbone-written targets).",
                  no_args_is_help=True)  # fmt: skip
logger = logging.getLogger(__name__)

MappingOption = Annotated[
    Path | None, typer.Option("--mapping", "-m", help="YAML mapping of metadata columns to description attributes.")
]


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes (unreadable sources, malformed rows, missing files, bad options) end the command with their
    message and exit code 2; failures of the run itself (an unreachable endpoint, a full disk) with exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from desta_audio.data.backends import BackendError

        try:
            return command(*args, **kwargs)
        except (FileNotFoundError, ValueError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except (BackendError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None

    return run


def _setup_logging(verbose: bool) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def _items(source: Path, mapping: Path | None):
    from desta_audio.data.sources import SourceMapping, read_source

    return read_source(source, SourceMapping.from_yaml(mapping) if mapping else None)


def _check_out(source: Path, out: Path, folder: bool = False) -> None:
    """Refuse an --out that would overwrite the source or cannot be written, before any work (instead of an OS
    error naming a hidden temp file once the work is done)."""
    if out.exists() and source.exists() and os.path.samefile(source, out):
        raise ValueError(f"--out {out} is the source itself; write somewhere else")
    if folder:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; `generate` writes a folder of shards, so name a folder")
        return
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the file to write, e.g. {out / 'out.jsonl'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--out {out}: {out.parent} is a file, not a folder")


@app.command()
@_one_line_errors
def describe(
    source: Annotated[Path, typer.Argument(help="Manifest (.jsonl/.csv/.tsv), parquet file or datasets folder.")],
    mapping: MappingOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write JSONL here (default: stdout).")] = None,
) -> None:
    """Metadata -> seed descriptions; writes a manifest that `generate` accepts as is."""
    from desta_audio.data.describe import DESCRIPTION_FORMAT_VERSION
    from desta_audio.data.describe import describe as describe_item
    from desta_audio.data.store import atomic_writer

    if out:
        _check_out(source, out)
    lines = []  # every row read and described before anything is written: a bad source leaves --out untouched
    for item in list(_items(source, mapping)):
        row = item.to_row()
        row["seed_description"] = describe_item(item)
        row["description_format_version"] = DESCRIPTION_FORMAT_VERSION
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    if not out:
        sys.stdout.writelines(lines)
        return
    with atomic_writer(out) as handle:
        handle.writelines(lines)
    typer.echo(f"{len(lines)} descriptions -> {out}", err=True)


@app.command()
@_one_line_errors
def annotate(
    source: Annotated[Path, typer.Argument(help="Manifest, parquet file or datasets folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Annotated JSONL manifest to write.")],
    mapping: MappingOption = None,
    annotators: Annotated[str, typer.Option(help="Comma-separated: duration,vad,loudness,pitch,rate,snr,asr.")] = (
        "duration,vad,loudness,pitch,snr"
    ),
    cache: Annotated[Path | None, typer.Option(help="sqlite cache of annotations (default: beside --out).")] = None,
    whisper: Annotated[str | None, typer.Option(help="HF Whisper folder for `asr` (default: the packaged base).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace metadata the source already has.")] = False,
    verbose: bool = False,
) -> None:
    """Label audio that lacks metadata (duration, speech segments, transcript, volume, pitch, speed, noise).

    --out is replaced only once every clip is annotated; an interrupted run loses nothing (the cache keeps the
    annotations made, so a rerun continues where it stopped)."""
    from tqdm.auto import tqdm

    from desta_audio.data.annotate import AnnotationCache, annotate_item, build_annotators
    from desta_audio.data.audio_files import UnusableAudio, unusable_audio_summary
    from desta_audio.data.store import atomic_writer

    _setup_logging(verbose)
    _check_out(source, out)
    chosen = build_annotators([a.strip() for a in annotators.split(",") if a.strip()], whisper=whisper)
    items = list(_items(source, mapping))
    unusable = unusable_audio_summary(items)
    if unusable:
        raise UnusableAudio(f"{unusable}. Nothing was annotated; fix the paths or the files, or remove those rows, "
                            "then rerun")  # fmt: skip
    with AnnotationCache(cache or out.with_suffix(".cache.sqlite")) as store, atomic_writer(out) as handle:
        for item in tqdm(items, desc="annotating", unit="clip"):
            row = annotate_item(item, chosen, store, overwrite=overwrite)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    typer.echo(f"{len(items)} clips annotated -> {out}", err=True)


@app.command()
@_one_line_errors
def prompts(
    build: Annotated[bool, typer.Option(help="Rebuild the shipped pool file and manifest from the templates.")] = False,
    show: Annotated[int, typer.Option(help="Print this many prompts sampled by weight.")] = 0,
    expand: Annotated[int, typer.Option(help="Ask a backbone for this many new prompts per category.")] = 0,
    model: Annotated[str, typer.Option(help="Backbone for --expand (packaged name or HF folder).")] = (
        "qwen2.5-0.5b-instruct"
    ),
    pool: Annotated[Path | None, typer.Option(help="Pool file (default: the shipped one).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where --expand writes the grown pool.")] = None,
    seed: int = 0,
) -> None:
    """Inspect, rebuild or grow the instruction pool."""
    import random
    from collections import Counter

    from desta_audio.data import prompts as prompt_module

    if build:
        built, manifest = prompt_module.build_pool()
        prompt_module.write_pool(built, manifest)
        typer.echo(f"{len(built)} prompts -> {prompt_module.POOL_PATH}: {manifest['per_category']}")
    loaded = prompt_module.PromptPool.load(pool)
    if expand:
        from desta_audio.data.backends import TransformersBackend
        from desta_audio.data.expand import expand_pool

        target = out or Path("prompt_pool.expanded.jsonl")
        grown, added = expand_pool(loaded, TransformersBackend(model), per_category=expand, seed=seed)
        prompt_module.write_pool(grown.prompts, {"pool_version": grown.version, "expanded_with": model,
                                                 "added": added, "prompts": len(grown)},
                                 target, target.with_name(target.stem + ".manifest.json"))  # fmt: skip
        typer.echo(f"{added} new prompts ({len(grown)} in all) -> {target}")
        loaded = grown
    counts = Counter(p.category for p in loaded.prompts)
    typer.echo(f"pool version {loaded.version}: {len(loaded)} prompts; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    rng = random.Random(seed)
    for _ in range(show):
        prompt = loaded.sample(rng)
        typer.echo(f"[{prompt.category}] {prompt.text}")


@app.command()
@_one_line_errors
def generate(
    source: Annotated[Path, typer.Argument(help="Manifest, describe output, parquet file or datasets folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (shards); rerun to resume.")],
    mapping: MappingOption = None,
    target: Annotated[str, typer.Option(help="self (the backbone), other-llm (baseline) or template (baseline).")] = (
        "self"
    ),
    backend: Annotated[str, typer.Option(help="transformers or openai (template targets need none).")] = "transformers",
    model: Annotated[str, typer.Option(help="Packaged backbone name, HF folder, or the endpoint's model name.")] = (
        "qwen2.5-0.5b-instruct"
    ),
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://host:8000/v1.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the endpoint's API key.")] = (
        "OPENAI_API_KEY"
    ),
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight (openai backend).")] = 16,
    timeout: Annotated[float, typer.Option(help="Seconds per request before retrying (openai backend).")] = 120.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass (transformers backend).")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (transformers backend).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (transformers backend).")] = "float32",
    samples_per_clip: Annotated[int, typer.Option(min=1, help="Records per clip; each draws its own instruction.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the plan: each record's instruction and sampling seed.")] = 0,
    shard_size: Annotated[int, typer.Option(min=1, help="Records per atomically written shard.")] = 256,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longer answers are quarantined as truncated.")] = 512,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (the release's 0.7).")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold (the release's 0.9).")] = 0.9,
    greedy: Annotated[bool, typer.Option(help="Greedy decoding instead of sampling.")] = False,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt of the chat (recorded).")] = None,
    pool: Annotated[Path | None, typer.Option(help="Prompt pool file (default: the shipped one).")] = None,
    language_check: Annotated[bool, typer.Option(help="Quarantine answers in the wrong language.")] = True,
    # `\[` keeps the extra's name: help text is rich markup, where a bare [ray] is a style tag and vanishes.
    ray: Annotated[bool, typer.Option(
        help="Distribute generation with Ray Data (pip install 'desta-audio\\[ray]').")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    ray_workers: Annotated[int, typer.Option(help="Generator actors (each loads its own model).")] = 1,
    verbose: bool = False,
) -> None:
    """Write targets for every clip: the generator answers a sampled instruction from the seed description."""
    from desta_audio.data.generate import DEFAULT_SYSTEM_PROMPT, GenerationSettings, run_generation
    from desta_audio.data.prompts import PromptPool
    from desta_audio.data.store import Decoding

    _setup_logging(verbose)
    _check_out(source, out, folder=True)
    settings = GenerationSettings(
        target_source=target,
        system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT,
        decoding=Decoding(do_sample=not greedy, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
        seed=seed,
        samples_per_clip=samples_per_clip,
        shard_size=shard_size,
        check_language=language_check,
    )
    factory = _backend_factory(target, backend, model, base_url, os.environ.get(api_key_env), concurrency, timeout,
                               batch_size, device, dtype)  # fmt: skip
    items = _items(source, mapping)
    loaded_pool = None if target == "template" else PromptPool.load(pool)
    generate_fn = None
    if ray:
        from desta_audio.data.backends import RemoteBackendInfo, folder_sha256, resolve_llm
        from desta_audio.data.ray_engine import ray_generate_fn

        generate_fn = ray_generate_fn(factory, settings, workers=ray_workers, address=ray_address,
                                      gpus_per_worker=1.0 if device.startswith("cuda") else 0.0)  # fmt: skip
        if target != "template" and backend == "transformers":  # the driver only names the model
            driver_backend = RemoteBackendInfo("transformers", model, folder_sha256(resolve_llm(model)))
        else:
            driver_backend = factory()
    else:
        driver_backend = factory()
    try:
        summary = run_generation(items, driver_backend, out, settings, loaded_pool, generate_fn=generate_fn)
    except KeyboardInterrupt:
        # Completed shards are on disk and only the one being written is lost, so say how to go on.
        typer.echo(f"\ninterrupted: the records written so far stay in {out}; rerun the same command to continue",
                   err=True)  # fmt: skip
        raise typer.Exit(130) from None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.reasons.items())) or "none"
    typer.echo(f"{summary.kept} kept, {summary.quarantined} quarantined ({reasons}), "
               f"{summary.skipped} already done, of {summary.planned} planned -> {out}")  # fmt: skip


def _backend_factory(target, backend, model, base_url, api_key, concurrency, timeout, batch_size, device, dtype):
    """A picklable zero-argument constructor, so Ray workers can build their own copy."""
    from functools import partial

    from desta_audio.data import backends

    if target == "template":
        return backends.TemplateBackend
    if backend == "transformers":
        return partial(backends.TransformersBackend, model, batch_size=batch_size, device=device, dtype=dtype)
    if backend == "openai":
        if not base_url:
            raise ValueError("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
        return partial(backends.OpenAIBackend, base_url, model, api_key=api_key, concurrency=concurrency,
                       timeout=timeout)  # fmt: skip
    raise ValueError(f"unknown backend {backend!r}; use transformers or openai")


@app.command()
@_one_line_errors
def stats(
    folder: Annotated[Path, typer.Argument(help="Output folder of `desta data generate`.")],
    png: Annotated[Path | None, typer.Option(help="Histogram PNG (default: <folder>/response_lengths.png).")] = None,
) -> None:
    """Mix by dataset, prompt category and attribute; response-length distribution and histogram."""
    from desta_audio.data.stats import collect, render, write_histogram

    if not (folder / "data").is_dir():
        raise ValueError(f"{folder} has no data/ folder; is it an output of `desta data generate`?")
    collected = collect(folder)
    render(collected)
    written = write_histogram(collected, png or folder / "response_lengths.png")
    typer.echo(f"histogram -> {written}")


if __name__ == "__main__":
    app()
