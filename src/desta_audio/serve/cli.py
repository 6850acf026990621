"""`desta serve` (OpenAI-compatible API) and `desta demo` (web demo). Heavy imports happen inside the commands."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from desta_audio import zoo
from desta_audio.audio_cache import DEFAULT_AUDIO_CACHE_MB
from desta_audio.cli_logging import setup_logging
from desta_audio.precision import DTYPE_HELP, check_dtype_names

logger = logging.getLogger(__name__)

_MODEL_HELP = "preset (`desta models list`), local model folder or hub id"


_DEVICE_HELP = "cpu or cuda (default: cuda when available)"
_AUDIO_CACHE_HELP = "MB of encoded clips kept for requests that send a clip again (multi-turn chats do); 0: off"


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _number(minimum: float, *, above: bool = False) -> Callable[[float], float]:
    """An option callback: a finite number at least (or above) `minimum`, checked before the model loads."""
    relation = "above" if above else "at least"

    def check(value: float) -> float:
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise typer.BadParameter(f"must be a number {relation} {minimum:g}, got {value:g}")
        return value

    return check


def _log_level(value: str) -> str:
    if value.lower() not in _LOG_LEVELS:
        raise typer.BadParameter(f"must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return value.lower()


_PORT = {"min": 1, "max": 65535}
_COUNT = {"min": 1}


def _check_can_listen(host: str, port: int) -> None:
    """Fail in a second, not after loading the model (minutes for a large one), when the address is taken."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        _fail(f"cannot listen on {host}:{port}: {error.strerror}")
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            _fail(f"cannot listen on {host}:{port}: {error.strerror}")


def _load_model(reference: str, device: Optional[str] = None, dtype: Optional[str] = None):
    """The model, loaded on a passing thread; a bad reference, device or dtype exits with one line (status 2)."""
    from desta_audio.loading import resolve_device, user_load_errors
    from desta_audio.modeling import DeSTAModel
    from desta_audio.serve.model_thread import load_on_passing_thread

    logger.info("loading %s", reference)
    try:
        check_dtype_names(dtype)
    except ValueError as error:
        _fail(str(error))
    try:
        resolved = resolve_device(device)
        return load_on_passing_thread(DeSTAModel.from_pretrained, reference, device=resolved, dtype=dtype)
    except user_load_errors() as error:
        _fail(str(error))


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def serve(
    model: Annotated[str, typer.Option(help=_MODEL_HELP)] = zoo.DEFAULT_PRESET,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 exposes it to the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", **_PORT)] = 8000,
    device: Annotated[Optional[str], typer.Option(help=_DEVICE_HELP)] = None,
    dtype: Annotated[Optional[str], typer.Option(help=DTYPE_HELP)] = None,
    served_name: Annotated[Optional[str], typer.Option(help="model id clients send (default: --model)")] = None,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="DESTA_API_KEY", help="require 'Authorization: Bearer KEY' (env DESTA_API_KEY)")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="most conversations in one batched generate", **_COUNT)] = 16,
    batch_window_ms: Annotated[float, typer.Option(help="how long the first request waits for companions",
                                                   callback=_number(0))] = 15.0,
    batch_refill: Annotated[float, typer.Option(
        help="after a batch of N with M like it waiting, the next such batch waits for N+M requests, up to this "
             "fraction of the last batch's time (clients that wait for each answer come back together); 0: off",
        callback=_number(0))] = 0.1,
    max_queue: Annotated[int, typer.Option(help="waiting requests before new ones get 503", **_COUNT)] = 64,
    max_connections: Annotated[int, typer.Option(
        help="open connections before new requests get 503 (bounds what slow uploads can hold)", **_COUNT)] = 256,
    max_audio_seconds: Annotated[float, typer.Option(help="most audio per request, in seconds",
                                                     callback=_number(0, above=True))] = 600.0,
    max_request_mb: Annotated[float, typer.Option(help="largest request body, in MB",
                                                  callback=_number(0, above=True))] = 25.0,
    request_timeout: Annotated[float, typer.Option(help="seconds before a request gets 504",
                                                   callback=_number(0, above=True))] = 120.0,
    max_tokens_limit: Annotated[int, typer.Option(help="largest max_tokens a request may ask for", **_COUNT)] = 2048,
    cors_origin: Annotated[Optional[list[str]], typer.Option(help="allow browser calls from this origin (repeat)")] = None,
    allowed_audio_dir: Annotated[
        Optional[Path], typer.Option(help="let requests name audio files (file:// URLs) below this folder")
    ] = None,
    allow_audio_urls: Annotated[bool, typer.Option(help="let the server fetch http(s) audio URLs named by requests")] = False,
    audio_cache_mb: Annotated[float, typer.Option(help=_AUDIO_CACHE_HELP, callback=_number(0))] = DEFAULT_AUDIO_CACHE_MB,
    demo: Annotated[bool, typer.Option(
        help="also serve the web demo at /demo, through the same batcher (behind a login with --api-key)")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error", callback=_log_level)] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API.

    Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics (and /demo with --demo).
    """
    from desta_audio.serve.api import ServeSettings, create_app
    from desta_audio.serve.server import run_server

    setup_logging(log_level.upper(), timestamps=True)
    _check_can_listen(host, port)
    settings = ServeSettings(
        model_id=served_name or model,
        api_key=api_key,
        max_batch_size=max_batch,
        batch_window_ms=batch_window_ms,
        batch_refill=batch_refill,
        max_queue=max_queue,
        max_audio_seconds=max_audio_seconds,
        max_request_mb=max_request_mb,
        request_timeout_s=request_timeout,
        max_tokens_limit=max_tokens_limit,
        cors_origins=list(cors_origin or []),
        allowed_audio_dir=allowed_audio_dir,
        allow_audio_urls=allow_audio_urls,
        audio_cache_mb=audio_cache_mb,
    )
    app = create_app(_load_model(model, device, dtype), settings)
    if demo:
        from desta_audio.serve.demo import mount_demo

        mount_demo(app)
    run_server(app, host=host, port=port, log_level=log_level, max_connections=max_connections)


def run_demo(
    model: Annotated[str, typer.Option(help=_MODEL_HELP)] = zoo.DEFAULT_PRESET,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 exposes it to the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", **_PORT)] = 7860,
    device: Annotated[Optional[str], typer.Option(help=_DEVICE_HELP)] = None,
    dtype: Annotated[Optional[str], typer.Option(help=DTYPE_HELP)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="longest answer, in tokens", **_COUNT)] = 256,
    audio_cache_mb: Annotated[float, typer.Option(help=_AUDIO_CACHE_HELP, callback=_number(0))] = DEFAULT_AUDIO_CACHE_MB,
) -> None:
    """Run the web demo (upload or record audio, ask, chat).

    The demo alone, greedy answers; `desta serve --demo` serves it beside the API instead.
    """
    from desta_audio.audio import DEFAULT_MAX_SECONDS
    from desta_audio.serve.demo import build_demo, model_answer_function, theme

    setup_logging(timestamps=True)
    _check_can_listen(host, port)
    loaded = _load_model(model, device, dtype)
    loaded.enable_audio_cache(audio_cache_mb)
    answer = model_answer_function(loaded, max_new_tokens=max_new_tokens)
    demo = build_demo(answer, max_audio_seconds=getattr(loaded, "max_audio_seconds", None) or DEFAULT_MAX_SECONDS)
    # quiet: Gradio's start-up text advises editing launch() for a public link, which a command user cannot do.
    demo.launch(server_name=host, server_port=port, share=False, theme=theme(), footer_links=[], quiet=True,
                prevent_thread_lock=True)
    typer.echo(f"desta demo: open {demo.local_url} in a browser (Ctrl-C to stop)")
    try:
        demo.block_thread()
    finally:
        answer.close()  # stop an answer still generating: exiting while it runs in torch aborts the process


def register(app: typer.Typer) -> None:
    # Plain commands, not sub-apps: a sub-app's usage line would promise subcommands that do not exist.
    app.command("serve")(serve)
    app.command("demo")(run_demo)
