"""`desta train CONFIG [section.key=value ...]`. Heavy imports happen inside the command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from desta_audio.cli_logging import setup_logging

# One command and no callback: `python -m desta_audio.train` runs it directly (usage without a COMMAND).
app = typer.Typer(add_completion=False)
_SETTINGS = {"allow_interspersed_args": True}


@app.command(context_settings=_SETTINGS)
def train(
    config: Annotated[Path, typer.Argument(help="YAML training config, e.g. configs/train_tiny.yaml")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="overrides as section.key=value, e.g. optim.lr=2e-4 run.max_steps=100 lora.enabled=true")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="print the resolved config and exit")] = False,
    cache_only: Annotated[bool, typer.Option("--cache-only", help="build the feature cache and exit")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Train the adapter (and optional LoRA) on self-generated alignment records.

    Train from CONFIG. Run under `torchrun --nproc-per-node N -m desta_audio.train ...` for several processes; a
    run resumes from the latest checkpoint of its output_dir (run.resume=never starts over).
    """
    from desta_audio.train.config import ConfigError, dump_config, load_config

    # Under torchrun every process would print the same setup lines; the first one speaks for the run.
    level = logging.DEBUG if verbose else logging.INFO if _first_process() else logging.ERROR
    setup_logging(level, timestamps=True)
    try:
        resolved = load_config(config, overrides or [])
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if show_config:
        typer.echo(dump_config(resolved))
        return

    from tqdm.contrib.logging import logging_redirect_tqdm

    from desta_audio.audio import AudioError
    from desta_audio.train.recipe import Trainer, TrainingError, TrainingInterrupted
    from desta_audio.train.records import RecordError

    try:
        if cache_only and not resolved.cache.enabled:
            typer.echo("cache.enabled is false in this config: nothing to build", err=True)
            raise typer.Exit(2)
        with logging_redirect_tqdm():  # log lines above the progress bars, not glued to the end of a bar's line
            if cache_only:
                Trainer(resolved).setup(cache_only=True)
                typer.echo(f"feature cache ready under {resolved.cache_dir}")
                return
            trainer = Trainer(resolved).setup()
            try:
                result = trainer.fit()
            finally:
                trainer.close()
    except ConfigError as error:  # found once the model or the output folder is seen
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    except TrainingError as error:
        typer.echo(f"training stopped: {error}", err=True)
        raise typer.Exit(1) from None
    except TrainingInterrupted as error:
        if _first_process():  # every process stops at the same checkpoint: one report
            typer.echo(str(error), err=True)
        raise typer.Exit(130) from None  # the shell's code for Ctrl-C
    except KeyboardInterrupt:  # before the first step: loading, or building the feature cache
        typer.echo("interrupted before the first step; nothing new was trained: run the same command again "
                   "(audios already in the feature cache are kept)", err=True)
        raise typer.Exit(130) from None
    except (RecordError, AudioError) as error:
        typer.echo(f"cannot train on this data: {error}", err=True)
        raise typer.Exit(2) from None
    except OSError as error:  # e.g. a disk that filled up while metrics or the loss curve were written
        typer.echo(f"training stopped: {error}", err=True)
        raise typer.Exit(1) from None
    if not _first_process():  # one report per run under torchrun
        return
    if result.final_adapter is not None:
        typer.echo(f"adapter: {result.final_adapter}  (load with DeSTAModel.from_pretrained)")
    if result.steps:
        typer.echo(f"last step {result.steps[-1].step}: loss {result.steps[-1].loss:.4f}; metrics in "
                   f"{result.output_dir}/metrics.csv")


def _first_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def register(parent: typer.Typer) -> None:
    parent.command("train", context_settings=_SETTINGS)(train)
