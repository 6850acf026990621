"""`desta models`: list the presets and prepare their packaged weights (converted once into the cache)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from desta_audio import zoo

models_app = typer.Typer(
    help="List model presets and prepare their packaged weights (converted once into the local cache).",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 1) -> None:
    """code: 2 for a mistake in the command line, as the other commands; 1 for a failure of the cache or network."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)  # one line, however narrow the terminal
    raise typer.Exit(code=code)


def _human_size(num_bytes: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            break
        num_bytes /= 1000
    return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"


def _component_state(ref: str | None) -> tuple[str, int]:
    """('yes'/'no'/'hub'/'-', bytes in cache) of one preset component."""
    if ref is None:
        return "-", 0
    if isinstance(ref, Path):  # shipped inside the package
        return ("yes", zoo.folder_size(ref)) if ref.exists() else ("no", 0)
    if ref in zoo.PACKAGED:
        path = zoo.cached_path(ref)
        return ("yes", zoo.folder_size(path)) if zoo.is_prepared(ref) else ("no", 0)
    return "hub", 0


def _adapter_label(adapter: str | Path | None) -> str:
    if adapter is None:
        return "none"
    if isinstance(adapter, Path) and adapter.is_relative_to(zoo.SHIPPED_ADAPTERS):
        return f"shipped ({adapter.name})"
    return str(adapter)


def _show(console: Console, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table where it fits the terminal; otherwise one block per row (the name, then `column: value` lines), so
    that narrow terminals never cut ids such as `openai/whisper-large-v3` into fragments."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    if console.measure(table, options=console.options.update(max_width=10**6)).maximum <= console.width:
        console.print(table)
        return
    console.print(title, style="italic")
    for name, *values in rows:
        console.print(f"  [bold]{escape(name)}[/bold]")
        for column, value in zip(columns[1:], values):
            console.print(f"    {column}: {escape(value)}")


@models_app.command("list")
def list_models() -> None:
    """Show the presets and the packaged models, and whether they are prepared in the cache."""
    console = Console()
    names = {name: f"{name} (default)" if name == zoo.DEFAULT_PRESET else name for name in zoo.PRESETS}
    preset_rows = []
    for preset in zoo.PRESETS.values():
        states = [_component_state(ref) for ref in (preset.encoder, preset.llm, preset.adapter)]
        packaged = [state for state, _ in states if state in ("yes", "no")]
        hub = any(state == "hub" for state, _ in states)
        prepared = "hub" if hub and not packaged else ("yes" if all(s == "yes" for s in packaged) else "no")
        size = sum(num_bytes for _, num_bytes in states)
        preset_rows.append((
            names[preset.name],
            str(preset.encoder),
            str(preset.llm),
            _adapter_label(preset.adapter),
            "yes" if preset.trained else "no",
            prepared,
            _human_size(size) if size else "-",
        ))
    _show(console, "Presets", ("name", "encoder", "llm", "adapter", "trained", "prepared", "size"), preset_rows)

    packaged_rows = []
    for weights in zoo.PACKAGED.values():
        state, size = _component_state(weights.name)
        packaged_rows.append((weights.name, weights.kind, weights.description, state,
                              _human_size(size) if size else "-"))
    _show(console, f"Packaged models (cache: {zoo.models_dir()})", ("name", "kind", "description", "prepared", "size"),
          packaged_rows)


@models_app.command("prepare")
def prepare_model(
    name: str = typer.Argument(..., help="A preset (see `desta models list`) or a packaged model name."),
) -> None:
    """Make a model load offline: convert its packaged weights into the cache. Safe to re-run.

    A model already in the cache has its files checked (sha256) and is converted again if one is damaged. For a hub
    preset, download its components into the Hugging Face cache instead."""
    if name not in zoo.PRESETS and name not in zoo.PACKAGED:
        _fail(f"unknown model {name!r}; presets: {', '.join(zoo.PRESETS)}; packaged models: "
              f"{', '.join(zoo.PACKAGED)}", code=2)
    try:
        if name in zoo.PACKAGED:
            typer.echo(f"{name}: {zoo.prepare_packaged(name, verify=True)}")  # echo: a path must not wrap as markup
            return
        preset = zoo.prepare(name, verify=True)
        downloaded = zoo.download_hub_components(preset)
    except (ValueError, zoo.PackagedWeightsError) as error:
        _fail(str(error))
    except zoo.HubDownloadError as error:
        _fail(f"{error}; preparing {name} needs network access once")
    for role in ("encoder", "llm", "adapter"):
        ref = getattr(preset, role)
        where = f"{ref} (downloaded to {downloaded[role]})" if role in downloaded else ref
        typer.echo(f"{role}: {where or 'none (untrained adapter)'}")
    if not preset.trained:
        Console().print(f"[yellow]note:[/yellow] {preset.notes}")
