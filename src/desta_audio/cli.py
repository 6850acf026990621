"""The `desta` command. Each stage registers its commands or sub-app here; imports stay lazy so `--help` is fast."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="desta",
    help="DeSTA2.5-Audio: ask audio questions, build self-generated alignment data, train, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    _register_subcommands()
    app()


def _register_subcommands() -> None:
    # One line per stage; each module exposes a typer app or commands.
    from desta_audio import cli_ask

    cli_ask.register(app)  # ask, chat
    from desta_audio.cli_models import models_app

    app.add_typer(models_app, name="models")
    from desta_audio.serve import cli as serve_cli

    serve_cli.register(app)  # serve, demo
    from desta_audio.data.cli import app as data_app

    app.add_typer(data_app, name="data")
    from desta_audio.train import cli as train_cli

    train_cli.register(app)
    from desta_audio.eval.cli import app as eval_app

    app.add_typer(eval_app, name="eval")
    from desta_audio.recipe.cli import app as recipe_app

    app.add_typer(recipe_app, name="recipe")


if __name__ == "__main__":
    main()
