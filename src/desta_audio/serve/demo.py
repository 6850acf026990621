"""Gradio web demo: upload or record clips, ask, read the transcripts and the answer, keep the conversation going.

`build_demo(answer)` takes the function that answers one conversation, so the same model object serves the
demo alone (`desta demo`: `model.chat`) or next to the API (`desta serve --demo`: through the API's batcher).
The answer streams onto the page as it is generated; the transcripts show as soon as the audio is processed.

Files: the page uploads clips into Gradio's upload folder and sends their paths back. A request naming any other
file (or a URL) is refused before Gradio copies it, in both modes, with one message whether or not the file exists:
otherwise a caller of the demo's HTTP API could have the server read, and even serve back, any file it can open.
Mounted next to the API with an API key set, the demo asks for that key on a login page (any user name).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import queue
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from desta_audio.audio import DEFAULT_MAX_SECONDS, AudioError

# No usage reporting to a third party from a demo someone runs locally.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

AUDIO_PLACEHOLDER = "<|AUDIO|>"
Conversation = list[dict[str, Any]]
# (conversation, on_text=delta hook or None, on_start=transcripts hook or None) -> ChatReply (.text, .transcripts)
AnswerFunction = Callable[..., Any]

logger = logging.getLogger(__name__)
NOT_UPLOADED = "An audio file was not uploaded through this page; upload it again."
LOGIN_MESSAGE = "This server needs its API key: enter it as the password (any user name)."


class AnswerError(Exception):
    """A failure whose message is meant for the page (a timeout, a busy or stopping server)."""


_INTRO = (
    "# DeSTA2.5-Audio\n"
    "Upload one or more audio clips (or record one), type a question and press **Ask**. "
    "Clips attach to the question you send with them; follow-up questions keep the whole conversation."
)


class ModelAnswerer:
    """Answers with the model directly, one generate at a time on one worker thread (see `model_thread`)."""

    def __init__(self, model: Any, *, max_new_tokens: int = 256) -> None:
        from desta_audio.serve.model_chat import forwards_generate_kwargs
        from desta_audio.serve.model_thread import model_worker

        self._model, self._max_new_tokens = model, max_new_tokens
        self._worker = model_worker("desta-demo")
        self._closing = threading.Event()
        self._can_stop = forwards_generate_kwargs(model)

    def __call__(self, conversation: Conversation, on_text: Callable[[str], None] | None = None,
                 on_start: Callable[[list[str]], None] | None = None) -> Any:
        extra: dict[str, Any] = {}
        if self._can_stop:
            from desta_audio.serve.model_chat import stop_rows_when

            extra["stopping_criteria"] = stop_rows_when([self._closing.is_set])
        return self._worker.submit(self._model.chat, [conversation], max_new_tokens=self._max_new_tokens,
                                   do_sample=False, on_text=[on_text], on_start=[on_start], **extra).result()[0]

    def close(self, wait_s: float = 3.0) -> bool:
        """Stop the running generate at its next token and wait for it (True once it has ended): a process that
        exits while its worker is inside torch aborts ("terminate called without an active exception")."""
        self._closing.set()
        self._worker.shutdown(wait=False, cancel_futures=True)
        return self._worker.join(wait_s)


def model_answer_function(model: Any, *, max_new_tokens: int = 256) -> ModelAnswerer:
    return ModelAnswerer(model, max_new_tokens=max_new_tokens)


def batcher_answer_function(batcher: Any, timeout_s: float, *, max_new_tokens: int = 256) -> AnswerFunction:
    """Answer through the API's batcher (`desta serve --demo`), greedy, within the API's request timeout."""
    from desta_audio.serve.batcher import BatcherClosedError, QueueFullError, SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens)

    def answer(conversation: Conversation, on_text: Callable[[str], None] | None = None,
               on_start: Callable[[list[str]], None] | None = None) -> Any:
        future = batcher.submit_threadsafe(conversation, params, on_text=on_text, on_start=on_start)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # drops the request, or ends its row of the running batch at the next token
            raise AnswerError(f"No answer within the server's {timeout_s:g} s time limit; "
                              "ask something shorter or try again later.") from None
        except (QueueFullError, BatcherClosedError) as error:
            reason = str(error)
            raise AnswerError(f"{reason[:1].upper()}{reason[1:]}; try again later.") from None

    return answer


def mount_demo(app: Any, *, path: str = "/demo", max_new_tokens: int = 256) -> None:
    """Serve the demo inside the API app `app` (from `create_app`), answering through its batcher."""
    import gradio as gr

    settings = app.state.settings
    answer = batcher_answer_function(app.state.batcher, settings.request_timeout_s, max_new_tokens=max_new_tokens)
    login = _api_key_login(settings.api_key) if settings.api_key is not None else None
    demo = build_demo(answer, max_audio_seconds=settings.max_audio_seconds)
    gr.mount_gradio_app(app, demo, path=path, theme=theme(), auth=login, auth_message=LOGIN_MESSAGE if login else None)


def _api_key_login(api_key: str) -> Callable[[str, str], bool]:
    """Gradio's login check: any user name, the API key as the password (the page then keeps a session cookie)."""

    def login(_user: str, password: str) -> bool:
        return secrets.compare_digest(password.encode(), api_key.encode())

    return login


def theme() -> Any:
    import gradio as gr

    # System fonts: the default theme pulls web fonts from the internet, which an offline machine cannot reach.
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_demo(answer: AnswerFunction, *, title: str = "DeSTA2.5-Audio",
               max_audio_seconds: float = DEFAULT_MAX_SECONDS) -> Any:
    import gradio as gr

    from desta_audio.serve.audio_input import check_file_header

    def ask(
        question: str,
        uploads: list[str] | None,
        recording: str | None,
        conversation: Conversation,
        history: list[dict[str, Any]],
    ) -> Iterator[tuple[Any, ...]]:
        question = (question or "").strip()
        clips = [str(path) for path in (uploads or [])] + ([str(recording)] if recording else [])
        if not question and not clips:
            raise gr.Error("Type a question (and attach audio clips, if any) first.")
        for clip in clips:  # the API's header checks, before a small upload can decode to gigabytes
            try:
                check_file_header(Path(clip), max_audio_seconds, Path(clip).name)
            except AudioError as error:
                raise gr.Error(str(error)) from None
        content = "".join(f"{AUDIO_PLACEHOLDER}\n" for _ in clips) + (question or "Describe the audio.")
        message: dict[str, Any] = {"role": "user", "content": content}
        if clips:
            message["audios"] = [{"audio": clip, "text": None} for clip in clips]
        asked = [*conversation, message]
        shown = [{"role": "user", "content": {"path": clip}} for clip in clips]
        shown.append({"role": "user", "content": question or "Describe the audio."})
        transcripts = ""
        answer_text = ""
        for kind, value in _answer_events(answer, asked):
            if kind == "start":
                transcripts = _transcripts_markdown(asked, list(value))
            elif kind == "text":
                answer_text += value
            elif kind == "error":
                if isinstance(value, (AudioError, AnswerError)):
                    raise gr.Error(str(value)) from None
                logger.error("the demo's answer failed", exc_info=value)
                raise gr.Error("Something went wrong while answering; the server log has the details.") from None
            else:  # the reply: its text is exactly the streamed text, but take it as the record
                answer_text = value.text
                conversation = [*asked, {"role": "assistant", "content": answer_text}]
                transcripts = _transcripts_markdown(conversation, list(getattr(value, "transcripts", []) or []))
                yield ([*history, *shown, {"role": "assistant", "content": answer_text}], conversation, transcripts,
                       "", None, None)
                return
            partial = [{"role": "assistant", "content": answer_text}] if answer_text else []
            yield [*history, *shown, *partial], conversation, transcripts, gr.skip(), gr.skip(), gr.skip()

    def reset() -> tuple[Any, ...]:
        return [], [], "", "", None, None

    with _uploads_only_blocks()(title=title, analytics_enabled=False) as demo:
        gr.Markdown(_INTRO)
        conversation_state = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                uploads = gr.File(
                    label="Audio clips", file_count="multiple", file_types=["audio"], type="filepath", elem_id="clips"
                )
                recording = gr.Audio(sources=["microphone"], type="filepath", label="Or record", elem_id="recording")
                transcripts = gr.Markdown(elem_id="transcripts")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="conversation", height=420)
                question = gr.Textbox(label="Question", placeholder="What did the speaker say?", elem_id="question")
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear_button = gr.Button("New conversation", elem_id="clear")
        outputs = [chatbot, conversation_state, transcripts, question, uploads, recording]
        inputs = [question, uploads, recording, conversation_state, chatbot]
        ask_button.click(ask, inputs, outputs, api_name="ask")
        question.submit(ask, inputs, outputs, api_name=False)
        clear_button.click(reset, None, outputs, api_name=False)
    return demo


def _upload_folder() -> Path:
    # Where Gradio stores uploads and its cache (GRADIO_TEMP_DIR moves it).
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def _check_uploaded(value: Any, folder: Path) -> None:
    """Raise NOT_UPLOADED for any file in an event's input that is not an existing file in the upload folder."""
    if isinstance(value, dict):
        path = value.get("path")
        if isinstance(path, str):
            resolved = Path(path).resolve() if "://" not in path else None
            if resolved is None or not resolved.is_relative_to(folder) or not resolved.is_file():
                import gradio as gr

                raise gr.Error(NOT_UPLOADED)
        for item in value.values():
            _check_uploaded(item, folder)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_uploaded(item, folder)


@functools.cache
def _uploads_only_blocks() -> type:
    import gradio as gr

    class UploadsOnlyBlocks(gr.Blocks):
        """Blocks that check an event's files before Gradio preprocesses them: Gradio checks them itself only in an
        app it launched, and otherwise copies any file (or fetches any URL) it is handed into its cache."""

        async def preprocess_data(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
            _check_uploaded(inputs, _upload_folder())
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)

    return UploadsOnlyBlocks


def _answer_events(answer: AnswerFunction, conversation: Conversation) -> Iterator[tuple[str, Any]]:
    """Run `answer` on a thread and hand out what it reports, in order: ("start", transcripts), ("text", delta)...,
    then ("reply", reply) or ("error", exception)."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def run() -> None:
        try:
            reply = answer(conversation, on_text=lambda delta: events.put(("text", delta)),
                           on_start=lambda transcripts: events.put(("start", transcripts)))
            events.put(("reply", reply))
        except Exception as error:  # handed to the page's handler, which shows it
            events.put(("error", error))

    threading.Thread(target=run, name="demo-answer", daemon=True).start()
    while True:
        kind, value = events.get()
        yield kind, value
        if kind in ("reply", "error"):
            return


def _transcripts_markdown(conversation: Conversation, latest: list[str]) -> str:
    """All clips of the conversation with their transcripts; the latest turn's come from the reply."""
    clips = [audio["audio"] for message in conversation for audio in message.get("audios", [])]
    if not clips:
        return ""
    # The reply lists a transcript for every audio of the conversation, in order.
    lines = ["**Transcripts**", ""]
    for index, clip in enumerate(clips):
        text = latest[index] if index < len(latest) else ""
        lines.append(f"{index + 1}. `{Path(str(clip)).name}`: {text.strip() or '(no speech)'}")
    return "\n".join(lines)
