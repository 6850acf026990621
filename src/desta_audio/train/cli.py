"""`desta train CONFIG [section.key=value ...]`. Heavy imports happen inside the command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

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

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        resolved = load_config(config, overrides or [])
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if show_config:
        typer.echo(dump_config(resolved))
        return

    from desta_audio.audio import AudioError
    from desta_audio.train.recipe import Trainer, TrainingError, TrainingInterrupted
    from desta_audio.train.records import RecordError

    try:
        if cache_only:
            if not resolved.cache.enabled:
                typer.echo("cache.enabled is false in this config: nothing to build", err=True)
                raise typer.Exit(2)
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
        typer.echo(str(error), err=True)
        raise typer.Exit(130) from None  # the shell's code for Ctrl-C
    except (RecordError, AudioError) as error:
        typer.echo(f"cannot train on this data: {error}", err=True)
        raise typer.Exit(2) from None
    if os.environ.get("RANK", "0") != "0":  # one report per run under torchrun
        return
    if result.final_adapter is not None:
        typer.echo(f"adapter: {result.final_adapter}  (load with DeSTAModel.from_pretrained)")
    if result.steps:
        typer.echo(f"last step {result.steps[-1].step}: loss {result.steps[-1].loss:.4f}; metrics in "
                   f"{result.output_dir}/metrics.csv")


def register(parent: typer.Typer) -> None:
    parent.command("train", context_settings=_SETTINGS)(train)
