"""`desta recipe`: the small recipe's steps. Heavy imports happen inside the commands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The small recipe: build its corpus from packaged speech, music and synthetic sounds.",
                  no_args_is_help=True)  # fmt: skip


@app.callback()
def _recipe() -> None:
    """Keeps `corpus` a named subcommand (later steps join it)."""


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

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = build_corpus(out_dir, size=size, seed=seed, workers=workers, progress=not quiet)
    except (RuntimeError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    summary = result.summary
    for split in ("train", "heldout"):
        part = summary[split]
        families = ", ".join(f"{k} {v}" for k, v in part["origin"].items())
        typer.echo(f"{split}: {part['clips']} clips, {part['hours']:.2f} h ({families})")
    if summary["settings"]["skipped"]:
        typer.echo(f"skipped (package missing): {', '.join(summary['settings']['skipped'])}", err=True)
    typer.echo(f"-> {out_dir / 'train.jsonl'}, {out_dir / 'heldout.jsonl'}, {out_dir / 'corpus.json'}")
