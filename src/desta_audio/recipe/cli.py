"""`desta recipe`: the small recipe's steps. Heavy imports happen inside the commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from desta_audio.cli_logging import setup_logging

app = typer.Typer(help="The small recipe: corpus, self-generated targets, a trained desta-mini adapter and the "
                  "comparative study, from packaged sources on one CPU.",
                  no_args_is_help=True)  # fmt: skip


@app.callback()
def _recipe() -> None:
    """Keeps the steps named subcommands."""


@contextmanager
def _reported_as_one_line(kept: str) -> Iterator[None]:
    """Errors and Ctrl-C end the command with one line (no traceback) that says how to go on."""
    try:
        yield
    except (OSError, RuntimeError, ValueError) as err:  # OSError: OUT_DIR a file, disk full, no permission
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as interrupt:
        # An interrupted training run names the checkpoint it resumes from; other steps keep what they wrote.
        reason = str(interrupt) or f"{kept}; rerun the same command to resume"
        typer.echo(f"\ninterrupted: {reason}", err=True)
        raise typer.Exit(130) from None  # the shell's code for Ctrl-C


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        typer.echo(f"error: {out_dir} exists and is not a folder; name a new or existing folder", err=True)
        raise typer.Exit(1)


@app.command()
def corpus(
    out_dir: Annotated[Path, typer.Argument(help="Folder for audio/, train.jsonl, heldout.jsonl, corpus.json.")],
    size: Annotated[int, typer.Option(help="Approximate number of clips (every source family gets a share).")] = (
        3500
    ),
    seed: Annotated[int, typer.Option(help="Seed of every choice: the same seed and size give the same corpus.")] = 0,
    workers: Annotated[int, typer.Option(help="Synthesis processes.")] = 2,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Build the corpus (resumable: clips already written are kept) and print its counts."""
    from desta_audio.recipe.corpus import build_corpus

    _check_out_dir(out_dir)
    setup_logging()
    with _reported_as_one_line(kept=f"the clips written so far stay in {out_dir}"):
        result = build_corpus(out_dir, size=size, seed=seed, workers=workers, progress=not quiet)
    summary = result.summary
    for split in ("train", "heldout"):
        part = summary[split]
        families = ", ".join(f"{k} {v}" for k, v in part["origin"].items())
        typer.echo(f"{split}: {part['clips']} clips, {part['hours']:.2f} h ({families})")
    if summary["settings"]["skipped"]:
        typer.echo(f"skipped (package missing): {', '.join(summary['settings']['skipped'])}", err=True)
    typer.echo(f"-> {out_dir / 'train.jsonl'}, {out_dir / 'heldout.jsonl'}, {out_dir / 'corpus.json'}")


@app.command()
def mini(
    out_dir: Annotated[Path, typer.Argument(help="Working folder: corpus/, targets/, runs/, eval/, report.*")],
    clips: Annotated[int, typer.Option(help="Training clips that get targets (the same for every source).")] = 1100,
    records: Annotated[int, typer.Option(help="Records each adapter trains on (the shared data budget).")] = 768,
    source: Annotated[Optional[list[str]], typer.Option(
        "--source", help="Target sources to train and compare (repeat): self, other-llm, template (default: all "
                         "three).")] = None,
    corpus_size: Annotated[int, typer.Option(help="Approximate corpus size (clips).")] = 3500,
    seed: Annotated[int, typer.Option(help="Seed of the corpus, subset, sampling and training.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run the whole small recipe (about 2 h on 2 CPU cores); rerun the same command to resume.

    Builds the corpus, writes targets three ways (the desta-mini backbone itself, SmolLM2-135M, templates),
    trains one desta-mini adapter per source on the same data budget, and evaluates them on the held-out split
    against the untrained adapter and the text-only backbone. Result: OUT_DIR/report.md, report.json, report.png,
    and OUT_DIR/adapter, the self-generated adapter in bfloat16 (use it with `desta ask --model OUT_DIR/adapter
    ...`). OUT_DIR/recipe.json records the settings: a rerun with others is refused."""
    from desta_audio.recipe.mini import TARGET_SOURCES, RecipeSettings, run_recipe

    _check_out_dir(out_dir)
    setup_logging()
    unknown = sorted(set(source or []) - set(TARGET_SOURCES))
    if unknown:
        raise typer.BadParameter(f"unknown source(s) {unknown}; choose from {', '.join(TARGET_SOURCES)}")
    settings = RecipeSettings(out_dir=out_dir, corpus_size=corpus_size, clips=clips, records=records, seed=seed)
    with _reported_as_one_line(kept=f"the clips, targets, checkpoints and answers written so far stay in {out_dir}"):
        report = run_recipe(settings, source or None, progress=not quiet, echo=typer.echo)
    typer.echo(report.read_text(encoding="utf-8").split("```")[0])
    typer.echo(f"-> {report}, {report.with_suffix('.png')}")
