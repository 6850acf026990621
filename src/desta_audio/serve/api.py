"""OpenAI-compatible HTTP API around a DeSTA model: `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`.

`create_app(model, settings)` builds the FastAPI app; `model` is anything with DeSTAModel's
`chat(conversations, max_new_tokens=..., do_sample=..., temperature=..., top_p=...) -> list[ChatReply]`.

Streaming (`stream: true`): requests are generated in batches, and a batched `generate` yields whole texts, so
the answer is produced first and then sent as server-sent events, one chunk per word. Clients get the standard
chunk format (and an exact final text); the first token does not arrive earlier than with `stream: false`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from desta_audio.audio import AudioError, duration_seconds
from desta_audio.serve.audio_input import AudioPolicy, decode_audio_url, decode_base64_audio
from desta_audio.serve.batcher import (
    BatcherClosedError,
    ChatFunction,
    Conversation,
    DynamicBatcher,
    QueueFullError,
    SamplingParams,
)
from desta_audio.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from desta_audio.serve.schemas import (
    AudioURLPart,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorDetail,
    ErrorResponse,
    InputAudioPart,
    ModelCard,
    ModelList,
    ResponseMessage,
    TextPart,
    Usage,
)

logger = logging.getLogger(__name__)

AUDIO_PLACEHOLDER = "<|AUDIO|>"
# The release's sampling defaults, used when a request leaves temperature / top_p out.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9


@dataclass
class ServeSettings:
    model_id: str = "desta-tiny"
    api_key: str | None = None
    max_batch_size: int = 16
    batch_window_ms: float = 15.0
    max_queue: int = 64
    max_audio_seconds: float = 600.0
    max_request_mb: float = 25.0
    request_timeout_s: float = 120.0
    default_max_tokens: int = 512
    max_tokens_limit: int = 2048
    cors_origins: list[str] = field(default_factory=list)
    allowed_audio_dir: Path | None = None
    allow_audio_urls: bool = False

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def audio_policy(self) -> AudioPolicy:
        return AudioPolicy(
            max_seconds=self.max_audio_seconds,
            max_bytes=self.max_request_bytes,
            allowed_dir=self.allowed_audio_dir,
            allow_urls=self.allow_audio_urls,
        )


class APIError(Exception):
    """An error answered in OpenAI's error format; `message` is shown to the client, so no internals in it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}


# -- request -> conversation ---------------------------------------------------------------------------------
def request_to_conversation(request: ChatCompletionRequest, policy: AudioPolicy) -> tuple[Conversation, float]:
    """Build the model's conversation from OpenAI messages; returns it and the total audio seconds.

    Content parts are joined in order; each audio part becomes `<|AUDIO|>` at its place, and its decoded clip
    goes into the message's `audios` list in the same order.
    """
    conversation: Conversation = []
    total_seconds = 0.0
    audio_index = 0
    for message_index, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        parts = [TextPart(type="text", text=message.content or "")] if not isinstance(message.content, list) else message.content
        pieces: list[str] = []
        audios: list[dict[str, Any]] = []
        for part_index, part in enumerate(parts):
            where = f"messages[{message_index}].content[{part_index}]"
            if isinstance(part, TextPart):
                if AUDIO_PLACEHOLDER in part.text:
                    raise APIError(
                        400,
                        f"{where}: text must not contain {AUDIO_PLACEHOLDER}; send each clip as an input_audio part "
                        "and it is placed where the part is",
                        param="messages",
                    )
                pieces.append(part.text)
                continue
            if role != "user":
                raise APIError(400, f"{where}: audio is only accepted in user messages, not {message.role}", param="messages")
            label = f"{where} (audio #{audio_index})"
            try:
                if isinstance(part, InputAudioPart):
                    samples = decode_base64_audio(part.input_audio.data, part.input_audio.format, policy, label)
                    transcript = part.input_audio.transcript
                else:
                    assert isinstance(part, AudioURLPart)
                    samples = decode_audio_url(part.audio_url.url, policy, label)
                    transcript = part.audio_url.transcript
            except AudioError as error:
                raise APIError(400, str(error), param="messages", code="invalid_audio") from None
            total_seconds += duration_seconds(samples)
            if total_seconds > policy.max_seconds:
                raise APIError(
                    400,
                    f"{label}: the request carries {total_seconds:.1f} s of audio in all, more than the "
                    f"{policy.max_seconds:.0f} s limit",
                    param="messages",
                    code="audio_too_long",
                )
            audios.append({"audio": samples, "text": transcript})
            pieces.append(AUDIO_PLACEHOLDER)
            audio_index += 1
        entry: dict[str, Any] = {"role": role, "content": _join_parts(pieces)}
        if audios:
            entry["audios"] = audios
        conversation.append(entry)
    if conversation[-1]["role"] != "user":
        raise APIError(400, "the last message must be a user message (the one to answer)", param="messages")
    return conversation, total_seconds


def _join_parts(pieces: Sequence[str]) -> str:
    # Parts are separated by a line break unless whitespace is already there, so an audio placeholder never
    # glues onto a word of the text.
    out = ""
    for piece in pieces:
        if out and piece and not (out[-1].isspace() or piece[0].isspace()):
            out += "\n"
        out += piece
    return out


def sampling_params(request: ChatCompletionRequest, settings: ServeSettings) -> SamplingParams:
    max_new_tokens = request.requested_max_tokens or settings.default_max_tokens
    if max_new_tokens > settings.max_tokens_limit:
        raise APIError(
            400, f"max_tokens={max_new_tokens} is above this server's limit of {settings.max_tokens_limit}", param="max_tokens"
        )
    temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    if temperature == 0:
        # Greedy: the other knobs do not matter, so leave them out and let all greedy requests share batches.
        return SamplingParams(max_new_tokens=max_new_tokens, do_sample=False)
    top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
    return SamplingParams(max_new_tokens, True, temperature, top_p, request.seed)


def model_chat_function(model: Any) -> ChatFunction:
    def chat(conversations: Sequence[Conversation], params: SamplingParams) -> Sequence[Any]:
        return model.chat(list(conversations), **params.chat_kwargs())

    return chat


# -- reply -> response ---------------------------------------------------------------------------------------
def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(stop) for stop in stops if stop in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _count_completion_tokens(tokenizer: Any, reply: Any, text: str) -> int:
    token_ids = getattr(reply, "token_ids", None)
    if token_ids is not None and text == reply.text:
        return len(token_ids)
    if tokenizer is None or not text:
        return 0
    return len(tokenizer.encode(text, add_special_tokens=False))


def _count_prompt_tokens(tokenizer: Any, conversation: Conversation) -> int:
    """Text tokens of the templated prompt; audio embeddings are not counted (they depend on the clip)."""
    if tokenizer is None:
        return 0
    try:
        messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return len(ids)
    except Exception:  # a tokenizer without a chat template: usage is informative only
        return 0


_WORD_CHUNK = re.compile(r"\s*\S+|\s+")


def split_for_streaming(text: str) -> list[str]:
    """Word-sized deltas whose concatenation is exactly `text`."""
    return _WORD_CHUNK.findall(text)


def _sse(payload: ChatCompletionChunk) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"


# -- app -----------------------------------------------------------------------------------------------------
class _BodySizeLimit:
    """Refuses bodies over the limit: by Content-Length up front, else while reading. The body is read here (the
    app would read it whole anyway) because errors raised while the app reads it become FastAPI's generic 400."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        error = APIError(
            413,
            f"the request body is larger than this server's limit of {self.max_bytes / 1024 / 1024:.0f} MB; "
            "send shorter or compressed (mp3/ogg) audio",
            code="request_too_large",
            headers={"Connection": "close"},
        )
        await _error_response(error)(scope, receive, send)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_response(error: APIError) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code))
    return JSONResponse(body.model_dump(), status_code=error.status, headers=error.headers)


def _validation_message(error: RequestValidationError) -> str:
    problems = []
    for problem in error.errors()[:5]:
        location = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        problems.append(f"{location or 'body'}: {problem.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(problems)


def create_app(model: Any, settings: ServeSettings | None = None, *, chat: ChatFunction | None = None) -> FastAPI:
    """The API app. The model runs in one worker thread, fed by a dynamic batcher started with the app."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    batcher = DynamicBatcher(
        chat or model_chat_function(model),
        max_batch_size=settings.max_batch_size,
        window_s=settings.batch_window_ms / 1000.0,
        max_queue=settings.max_queue,
        on_batch=metrics.batch_size.observe,
    )
    metrics.watch_queue(lambda: batcher.queue_depth, lambda: batcher.running)
    tokenizer = getattr(model, "tokenizer", None)
    policy = settings.audio_policy
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="desta-audio", summary="OpenAI-compatible DeSTA2.5-Audio API", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.model = model

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_BodySizeLimit, max_bytes=settings.max_request_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(APIError(400, _validation_message(error)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(error.status_code, str(error.detail), headers=getattr(error, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error")  # the trace stays in the server log, never in the response
        return _error_response(APIError(500, "internal server error; see the server log", type="server_error"))

    async def require_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key; send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_id, "queue_depth": batcher.queue_depth, "running": batcher.running}

    @app.get("/metrics", dependencies=[Depends(require_api_key)])
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_id, created=created)])

    @app.post("/v1/chat/completions", dependencies=[Depends(require_api_key)], response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await _complete(body)
            status = response.status_code
            return response
        except APIError as error:
            status = error.status
            raise
        finally:
            metrics.requests.labels(status=str(status)).inc()
            if status == 200:
                metrics.latency.observe(time.perf_counter() - started)

    async def _complete(body: ChatCompletionRequest) -> Response:
        if body.model != settings.model_id:
            raise APIError(
                404, f"model {body.model!r} is not served here; this server serves {settings.model_id!r}",
                param="model", code="model_not_found",
            )
        if body.n != 1:
            raise APIError(400, f"n={body.n} is not supported; send n=1 (or several requests)", param="n")
        if body.tools:
            raise APIError(400, "tools / function calling is not supported by this model", param="tools")
        params = sampling_params(body, settings)
        conversation, audio_seconds = await run_in_threadpool(request_to_conversation, body, policy)
        metrics.audio_seconds.inc(audio_seconds)
        try:
            reply = await asyncio.wait_for(batcher.submit(conversation, params), timeout=settings.request_timeout_s)
        except QueueFullError as error:
            raise APIError(503, str(error) + "; retry shortly", type="server_error", code="server_busy",
                           headers={"Retry-After": "1"}) from None
        except (asyncio.TimeoutError, TimeoutError):
            raise APIError(504, f"no answer within the {settings.request_timeout_s:.0f} s request timeout; "
                           "ask for fewer max_tokens or retry later", type="server_error", code="timeout") from None
        except BatcherClosedError:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
        except AudioError as error:  # the model refused a clip (e.g. unusable audio found during generation)
            raise APIError(400, str(error), code="invalid_audio") from None

        text, stopped = _apply_stop(reply.text, body.stop_sequences)
        completion_tokens = await run_in_threadpool(_count_completion_tokens, tokenizer, reply, text)
        prompt_tokens = await run_in_threadpool(_count_prompt_tokens, tokenizer, conversation)
        metrics.completion_tokens.inc(completion_tokens)
        finish = "length" if not stopped and completion_tokens >= params.max_new_tokens else "stop"
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)
        transcripts = list(getattr(reply, "transcripts", None) or [])
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if not body.stream:
            completion = ChatCompletion(
                id=completion_id, created=now, model=settings.model_id, usage=usage,
                choices=[Choice(message=ResponseMessage(content=text, transcripts=transcripts), finish_reason=finish)],
            )
            return JSONResponse(completion.model_dump())

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: Delta, finish_reason: str | None = None) -> str:
            return _sse(ChatCompletionChunk(id=completion_id, created=now, model=settings.model_id,
                                            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)]))

        async def events() -> AsyncIterator[str]:
            yield chunk(Delta(role="assistant", content="", transcripts=transcripts))
            for piece in split_for_streaming(text):
                yield chunk(Delta(content=piece))
            yield chunk(Delta(), finish)
            if include_usage:
                yield _sse(ChatCompletionChunk(id=completion_id, created=now, model=settings.model_id, choices=[], usage=usage))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
