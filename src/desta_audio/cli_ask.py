"""`desta ask` (one question about one or more clips) and `desta chat` (an interactive multi-turn session)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from desta_audio import zoo
from desta_audio.audio import DEFAULT_MAX_SECONDS, SAMPLE_RATE
from desta_audio.audio_cache import DEFAULT_AUDIO_CACHE_MB
from desta_audio.cli_logging import setup_logging
from desta_audio.precision import DTYPE_HELP, check_dtype_names, dtype_name

DEFAULT_MODEL = zoo.DEFAULT_PRESET

_model_option = typer.Option(DEFAULT_MODEL, "--model", "-m",
                             help="Preset (`desta models list`), adapter folder, or hub id.")
_system_option = typer.Option(None, "--system", help="System prompt (default: the model's, "
                              "'Focus on the audio clips and instructions.').")
_max_tokens_option = typer.Option(512, "--max-new-tokens", help="Longest answer, in tokens.")
_sample_option = typer.Option(False, "--sample/--greedy", help="Sample (the release's temperature 0.7, top-p 0.9) "
                              "instead of greedy decoding.")
_temperature_option = typer.Option(0.7, "--temperature", help="Sampling temperature (with --sample).")
_top_p_option = typer.Option(0.9, "--top-p", help="Nucleus sampling mass (with --sample).")
_seed_option = typer.Option(None, "--seed", help="Random seed for sampling.")
_asr_option = typer.Option(True, "--asr/--no-asr", help="Transcribe speech with Whisper (VAD first).")
_device_option = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
_dtype_option = typer.Option(None, "--dtype", help=DTYPE_HELP)
_max_seconds_option = typer.Option(DEFAULT_MAX_SECONDS, "--max-audio-seconds", help="Refuse longer clips.")
_stream_option = typer.Option(True, "--stream/--no-stream", help="Print the answer as it is generated.")


def _print_streamed(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _check_settings(max_new_tokens: int, sample: bool, temperature: float, top_p: float,
                    max_audio_seconds: float, dtype: Optional[str], seed: Optional[int]) -> None:
    """Refuse bad settings before any audio or model is loaded."""
    from desta_audio.modeling import check_generation

    try:
        check_generation(max_new_tokens, sample, temperature, top_p)
        check_dtype_names(dtype)
    except ValueError as error:
        _fail(str(error))
    if not max_audio_seconds > 0:
        _fail(f"--max-audio-seconds must be above 0, got {max_audio_seconds}")
    if seed is not None and not -2**63 <= seed < 2**64:  # the range torch's generator takes
        _fail(f"--seed must fit in 64 bits, got {seed}")


def _load(model: str, asr: bool, device: Optional[str], dtype: Optional[str], max_audio_seconds: float) -> Any:
    from transformers.utils import logging as transformers_logging

    from desta_audio.loading import resolve_device, user_load_errors
    from desta_audio.modeling import DeSTAModel

    # Set here, not when the command is registered: the first basicConfig wins for the whole `desta` process,
    # and would silence the INFO lines of every other command (training progress, validation, checkpoints).
    setup_logging(logging.WARNING)
    # Weight-loading bars and generation-config deprecation notes are noise for someone asking a question.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        resolved = resolve_device(device)
        with _status(f"Loading {model}"):
            desta = DeSTAModel.from_pretrained(model, asr=asr, device=resolved, dtype=dtype)
    except user_load_errors() as error:
        _fail(str(error))
    desta.max_audio_seconds = max_audio_seconds  # the clips were checked against it already; the model re-checks
    return desta


def _status(message: str):
    from rich.console import Console

    return Console(stderr=True).status(message)


class _StreamedAnswer:
    """Prints an answer as it is generated, and stops the generation once nobody reads it (`| head -1`) instead of
    running on to --max-new-tokens unseen."""

    def __init__(self) -> None:
        self.reader_gone = False

    def print(self, text: str) -> None:
        if self.reader_gone:
            return
        try:
            _print_streamed(text)
        except BrokenPipeError:
            self.reader_gone = True

    def stop_when_gone(self, input_ids: Any, scores: Any, **_: Any) -> bool:  # a generate() stopping criterion
        return self.reader_gone

    def close(self) -> None:
        if self.reader_gone:
            # Whatever is still buffered for the closed pipe would fail again, noisily, when Python exits.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # a stdout without a file descriptor has nothing to fail on exit
                pass
            raise typer.Exit(1)
        typer.echo()


class _ListeningStatus:
    """A spinner on stderr while the clips are encoded and transcribed; it stops when the answer starts."""

    def __init__(self, audios: list) -> None:
        seconds = sum(len(a) for a in audios) / SAMPLE_RATE
        self._status = _status(f"Listening to {seconds:.1f} s of audio") if audios else None
        if self._status is not None:
            self._status.start()

    def stop(self, *_: Any) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _generation(max_new_tokens: int, sample: bool, temperature: float, top_p: float, seed: Optional[int]) -> dict:
    return {"max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": temperature, "top_p": top_p,
            "seed": seed}


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def ask(
    inputs: list[str] = typer.Argument(..., metavar="AUDIO... QUESTION",
                                       help="One or more audio files, then the question (after -- if it "
                                       "starts with -)."),
    model: str = _model_option,
    system: Optional[str] = _system_option,
    transcript: Optional[list[str]] = typer.Option(None, "--transcript", help="Use this transcript instead of ASR "
                                                   "(once per audio, in order)."),
    max_new_tokens: int = _max_tokens_option,
    sample: bool = _sample_option,
    temperature: float = _temperature_option,
    top_p: float = _top_p_option,
    seed: Optional[int] = _seed_option,
    asr: bool = _asr_option,
    as_json: bool = typer.Option(False, "--json", help="Print answer, transcripts and timings as JSON."),
    device: Optional[str] = _device_option,
    dtype: Optional[str] = _dtype_option,
    max_audio_seconds: float = _max_seconds_option,
    stream: bool = _stream_option,
) -> None:
    """Ask a question about one or more audio clips and print the answer."""
    from desta_audio.audio import AudioError, load_audio
    from desta_audio.processing import ConversationError

    _check_settings(max_new_tokens, sample, temperature, top_p, max_audio_seconds, dtype, seed)
    if len(inputs) < 2:
        _fail("give at least one audio file and a question, e.g. desta ask clip.wav \"What is said?\"")
    paths, question = inputs[:-1], inputs[-1]
    if Path(question).is_file():  # the question left out: the last clip would be asked as the question
        _fail(f"the last argument, {question}, is a file, but it is taken as the question; put the question "
              "after the audio files, e.g. desta ask clip.wav \"What is said?\"")
    if transcript and len(transcript) != len(paths):
        _fail(f"{len(transcript)} --transcript value(s) for {len(paths)} audio file(s)")
    placed = question.count("<|AUDIO|>")
    if placed and placed != len(paths):
        _fail(f"the question has {placed} <|AUDIO|> for {len(paths)} audio file(s); put one <|AUDIO|> per file "
              "where it belongs, or none to have the clips before the question")
    texts = list(transcript) if transcript else [None] * len(paths)
    try:  # check every input before spending time on loading the model
        audios = [load_audio(p, max_seconds=max_audio_seconds) for p in paths]
    except AudioError as error:
        _fail(str(error))
    started = time.perf_counter()
    desta = _load(model, asr, device, dtype, max_audio_seconds)
    load_seconds = time.perf_counter() - started
    content = question if placed else "<|AUDIO|>" * len(paths) + "\n" + question
    conversation = [{"role": "user", "content": content,
                     "audios": [{"audio": a, "text": t} for a, t in zip(audios, texts)]}]
    if system is not None:
        conversation.insert(0, {"role": "system", "content": system})
    streamed = _StreamedAnswer() if stream and not as_json else None
    listening = _ListeningStatus(audios)
    try:
        try:
            reply = desta.chat([conversation], **_generation(max_new_tokens, sample, temperature, top_p, seed),
                               on_text=[streamed.print] if streamed else None, on_start=[listening.stop],
                               **({"stopping_criteria": [streamed.stop_when_gone]} if streamed else {}))[0]
        finally:
            listening.stop()
    except (AudioError, ConversationError) as error:
        _fail(str(error))
    if streamed:
        streamed.close()
    elif as_json:
        payload = {"answer": reply.text, "transcripts": reply.transcripts, "audios": paths, "model": model,
                   "dtype": dtype_name(desta.llm_model.dtype),
                   "timings": {"model_load_s": round(load_seconds, 3),
                               **{k: round(v, 3) for k, v in reply.timings.items()}},
                   "generated_tokens": len(reply.token_ids)}
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        typer.echo(reply.text)


CHAT_HELP = """Commands: /audio PATH [PATH...] attaches clips to your next message (quote paths with spaces);
/system [TEXT] sets the system prompt (none: the model's); /reset starts over; /help shows this; /quit (or Ctrl-D)
leaves. Anything else is your message (<|AUDIO|> in it places the attached clips). Ctrl-C stops an answer."""
CHAT_COMMANDS = ("/audio", "/system", "/reset", "/help", "/quit")


def _chat_error(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)


def chat(
    model: str = _model_option,
    system: Optional[str] = _system_option,
    max_new_tokens: int = _max_tokens_option,
    sample: bool = _sample_option,
    temperature: float = _temperature_option,
    top_p: float = _top_p_option,
    seed: Optional[int] = _seed_option,
    asr: bool = _asr_option,
    device: Optional[str] = _device_option,
    dtype: Optional[str] = _dtype_option,
    max_audio_seconds: float = _max_seconds_option,
    stream: bool = _stream_option,
    audio_cache_mb: float = typer.Option(DEFAULT_AUDIO_CACHE_MB, "--audio-cache-mb", help="Keep the encoded "
                                         "clips of the conversation (MB), so later turns do not encode them again; "
                                         "0 turns this off."),
) -> None:
    """Talk with the model; attach audio files between turns."""
    from desta_audio.audio import AudioError, load_audio
    from desta_audio.config import AUDIO_LOCATOR
    from desta_audio.processing import ConversationError

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform
        pass
    _check_settings(max_new_tokens, sample, temperature, top_p, max_audio_seconds, dtype, seed)
    if not 0 <= audio_cache_mb < float("inf"):  # also refuses nan
        _fail(f"--audio-cache-mb must be a size in MB, 0 or more (0 turns the cache off), got {audio_cache_mb}")
    desta = _load(model, asr, device, dtype, max_audio_seconds)
    desta.enable_audio_cache(audio_cache_mb)
    generation = _generation(max_new_tokens, sample, temperature, top_p, seed)
    history: list[dict] = []
    pending: list[dict] = []  # clips attached for the next message
    pending_names: list[str] = []  # their file names, for the transcript lines
    typer.echo(CHAT_HELP, err=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            typer.echo(err=True)
            break
        except KeyboardInterrupt:  # as in a shell: the line being typed goes, the conversation stays
            typer.echo("\n(Ctrl-D or /quit leaves)", err=True)
            continue
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command == "/quit":
            break
        if command == "/help":
            typer.echo(CHAT_HELP, err=True)
            continue
        if command == "/reset":
            history, pending, pending_names = [], [], []
            typer.echo("(conversation cleared)", err=True)
            continue
        if command == "/system":
            system = rest.strip() or None
            typer.echo("(system prompt set)" if system else "(system prompt: the model's own)", err=True)
            continue
        if command == "/audio":
            try:
                paths = [os.path.expanduser(path) for path in shlex.split(rest)]  # ~ as a shell would
            except ValueError as error:
                _chat_error(f"{error}; quote a path with spaces whole, e.g. /audio 'my clip.wav'")
                continue
            if not paths:
                _chat_error("give the clips to attach: /audio PATH [PATH...]")
            try:
                for path in paths:
                    try:
                        pending.append({"audio": load_audio(path, max_seconds=max_audio_seconds), "text": None})
                        pending_names.append(Path(path).name)
                        typer.echo(f"(attached {Path(path).name})", err=True)
                    except AudioError as error:
                        _chat_error(str(error))
            except KeyboardInterrupt:  # a long clip takes seconds to decode: Ctrl-C stops attaching, not the session
                typer.echo(f"\n(stopped attaching; {len(pending)} clip(s) attached to your next message)", err=True)
            continue
        if command[:1] == "/" and command[1:].isalpha():  # a mistyped command must not reach the model
            _chat_error(f"unknown command {command}; the commands are {', '.join(CHAT_COMMANDS)} (/help)")
            continue
        placed = line.count(AUDIO_LOCATOR)
        if placed and placed != len(pending):
            _chat_error(f"your message has {placed} {AUDIO_LOCATOR} but {len(pending)} clip(s) are attached; "
                        f"put one {AUDIO_LOCATOR} per clip, or none to have the clips before your text")
            continue
        content = line if placed or not pending else AUDIO_LOCATOR * len(pending) + "\n" + line
        message = {"role": "user", "content": content, "audios": pending}
        conversation = ([{"role": "system", "content": system}] if system else []) + history + [message]
        attached, attached_names = pending, pending_names

        listening = _ListeningStatus([audio["audio"] for audio in attached])

        def show_transcripts(transcripts: list[str]) -> None:
            listening.stop()
            # Transcripts cover every clip of the conversation; the new clips are the last ones. Keeping them
            # means later turns give them as the caller's transcript instead of transcribing again.
            for audio, name, text in zip(attached, attached_names, transcripts[len(transcripts) - len(attached):]):
                audio["text"] = text
                typer.echo(f"(transcript of {name}: {text.strip() or '-'})", err=True)
            if stream:
                _print_streamed("desta> ")

        # A turn that fails or is stopped leaves the conversation as it was, its clips still attached.
        still_attached = f"; {len(pending)} clip(s) still attached to your next message" if pending else ""
        try:
            try:
                reply = desta.chat([conversation], **generation, on_start=[show_transcripts],
                                   on_text=[_print_streamed] if stream else None)[0]
            finally:
                listening.stop()
        except (AudioError, ConversationError) as error:
            typer.echo(err=True)
            _chat_error(f"{error} (the turn is dropped{still_attached})")
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
            typer.echo(f"\n(stopped; the turn is dropped{still_attached})", err=True)
            continue
        history += [message, {"role": "assistant", "content": reply.text}]
        pending, pending_names = [], []
        typer.echo("" if stream else f"desta> {reply.text}")
        sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
    app.command("chat")(chat)
