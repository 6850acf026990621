"""OpenAI-compatible HTTP API around a DeSTA model: `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics`.

`create_app(model, settings)` builds the FastAPI app; `model` is anything with DeSTAModel's
`chat(conversations, max_new_tokens=..., do_sample=..., temperature=..., top_p=...) -> list[ChatReply]`.

Streaming (`stream: true`): the request joins the same dynamic batches as the others (streaming and plain requests
with equal sampling settings share a `generate` call). The model's `chat(..., on_text=..., on_start=...)` hooks
run on the worker thread and hand each token's text to the event loop, so server-sent events go out while the
batch is still generating. Events, in order: a role chunk at once; a chunk with the clip transcripts (extension
field `delta.transcripts`, empty content) as soon as the audio is processed and the batch starts generating;
content chunks as text becomes final; the finish chunk; a usage chunk when `stream_options.include_usage`; then
`[DONE]`. The content chunks join to exactly the `stream: false` answer. `stop` strings are applied on the fly:
text that may start a stop string is held back until the next token settles it. With a model whose `chat` takes
`stop_strings`, a request (streaming or not) also stops generating once its answer holds one of its stop strings,
while its batch-mates go on; the text is still cut here, so answers are the same either way. A full queue is
refused with 503 before the stream starts; failures after it has started (timeout, unusable audio, a model error,
shutdown) arrive as a `data: {"error": {...}}` event followed by `[DONE]`, as OpenAI does. A client that disconnects
(streamed or not) gives up its request: it leaves the queue, or its row stops at the next token; its batch-mates are
not affected. A model whose `chat` has no such hooks is still served: its answer is
sent in one content chunk when its batch is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
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
from desta_audio.processing import ContextLengthError
from desta_audio.serve.audio_input import AudioPolicy, decode_audio_url, decode_base64_audio
from desta_audio.serve.batcher import (
    BatcherClosedError,
    ChatFunction,
    Conversation,
    DynamicBatcher,
    QueueFullError,
    SamplingParams,
)
from desta_audio.audio_cache import DEFAULT_AUDIO_CACHE_MB
from desta_audio.serve.metrics import CONTENT_TYPE_LATEST, ResponseCounter, ServeMetrics
from desta_audio.serve.model_chat import model_chat_function
from desta_audio.serve.request_checks import unsupported_field
from desta_audio.serve.stop_strings import StopStringFilter, apply_stop
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
    # After a batch of N with M like it waiting, the next such batch waits for N + M requests, up to this fraction
    # of that batch's time (see batcher).
    batch_refill: float = 0.1
    max_queue: int = 64
    max_audio_seconds: float = 600.0
    max_request_mb: float = 25.0
    request_timeout_s: float = 120.0
    default_max_tokens: int = 512
    max_tokens_limit: int = 2048
    cors_origins: list[str] = field(default_factory=list)
    allowed_audio_dir: Path | None = None
    allow_audio_urls: bool = False
    # Encoded clips kept for requests that send them again (every turn of a multi-turn chat does); 0 turns it off.
    audio_cache_mb: float = DEFAULT_AUDIO_CACHE_MB

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
        text = _join_parts(pieces)
        if role == "user" and not audios and not text.strip():
            raise APIError(400, f"messages[{message_index}]: the user message is empty; send text or audio",
                           param="messages")
        entry: dict[str, Any] = {"role": role, "content": text}
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
    # The default never exceeds the limit: a request that leaves max_tokens out must not be refused for it.
    max_new_tokens = request.requested_max_tokens or min(settings.default_max_tokens, settings.max_tokens_limit)
    if max_new_tokens > settings.max_tokens_limit:
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"  # name what was sent
        raise APIError(
            400, f"{field}={max_new_tokens} is above this server's limit of {settings.max_tokens_limit}", param=field
        )
    temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    if temperature == 0:
        # Greedy: the other knobs do not matter, so leave them out and let all greedy requests share batches.
        return SamplingParams(max_new_tokens=max_new_tokens, do_sample=False)
    top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
    return SamplingParams(max_new_tokens, True, temperature, top_p, request.seed)


# -- reply -> response ---------------------------------------------------------------------------------------

def _count_completion_tokens(tokenizer: Any, reply: Any, text: str) -> int:
    token_ids = getattr(reply, "token_ids", None)
    if token_ids is not None and text == reply.text:
        return len(token_ids)
    if tokenizer is None or not text:
        return 0
    return len(tokenizer.encode(text, add_special_tokens=False))


def _count_prompt_tokens(model: Any, tokenizer: Any, conversation: Conversation) -> int:
    """Text tokens of the prompt as the model renders it (its own system prompt included); each clip's audio
    tokens and transcript are not counted (known only once the clip is processed)."""
    encoder = getattr(model, "conversations", None)
    if callable(getattr(encoder, "encode", None)):
        clips = sum(len(message.get("audios", ())) for message in conversation)
        return len(encoder.encode(conversation, [0] * clips, [[] for _ in range(clips)]).input_ids)
    if tokenizer is None:
        return 0
    try:
        messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return len(ids)
    except Exception:  # a tokenizer without a chat template: usage is informative only
        return 0


def _sse(payload: ChatCompletionChunk) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"


def _sse_error(error: APIError) -> str:
    body = ErrorResponse(error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code))
    return f"data: {body.model_dump_json()}\n\n"


SSE_DONE = "data: [DONE]\n\n"
# The status recorded for a request whose client left before its answer (nginx's convention; never sent).
CLIENT_CLOSED_REQUEST = 499


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed its connection. Starlette does not cancel a route whose client left,
    so without this a plain request would keep its queue slot or batch row until its answer was complete."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# The routes whose responses desta_requests_total counts, by route and status.
API_ROUTES = ("/v1/chat/completions", "/v1/models")


def _generation_error(error: BaseException, settings: ServeSettings) -> APIError | None:
    """The client-facing error for a request that failed in the queue or the model; None for an unexpected
    failure (answered as a plain 500: its details stay in the server log)."""
    if isinstance(error, QueueFullError):
        return APIError(503, str(error) + "; retry shortly", type="server_error", code="server_busy",
                        headers={"Retry-After": "1"})
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return APIError(504, f"no answer within the {settings.request_timeout_s:.0f} s request timeout; "
                        "ask for fewer max_tokens or retry later", type="server_error", code="timeout")
    if isinstance(error, BatcherClosedError):
        return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
    if isinstance(error, ContextLengthError):  # the clips' tokens took a prompt past the context
        return APIError(400, str(error).removeprefix("conversation 0: "), param="messages",
                        code="context_length_exceeded")
    if isinstance(error, AudioError):  # the model refused a clip (e.g. unusable audio found during generation)
        return APIError(400, str(error), code="invalid_audio")
    return None


def _internal_error() -> APIError:
    return APIError(500, "internal server error; see the server log", type="server_error")


class _StreamChannel:
    """Carries a streaming request's hooks from the worker thread to its response on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.forwarding = True  # off once the response is over (finished, stopped, client gone)

    def _hand_over(self, kind: str, value: Any) -> None:
        if self.forwarding:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def on_text(self, delta: str) -> None:
        self._hand_over("text", delta)

    def on_start(self, transcripts: list[str]) -> None:
        self._hand_over("start", list(transcripts))

    def on_done(self, _: asyncio.Future) -> None:  # runs on the loop, after every hook call already handed over
        self.events.put_nowait(("done", None))


# -- app -----------------------------------------------------------------------------------------------------
class _BodySizeLimit:
    """Refuses bodies over the limit: by Content-Length up front, else while reading. The body is read here (the
    app would read it whole anyway) because errors raised while the app reads it become FastAPI's generic 400.
    A body must be complete within `read_timeout_s` (408): uvicorn has no read timeout, so a client that never
    finished its body would hold its connection, and what it sent, for good."""

    def __init__(self, app: Any, max_bytes: int, read_timeout_s: float) -> None:
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        error = APIError(
            413,
            f"the request body is larger than this server's limit of {round(self.max_bytes / 2**20, 3):g} MB; "
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
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except (asyncio.TimeoutError, TimeoutError):
                error = APIError(408, f"the request body did not arrive within {self.read_timeout_s:g} s",
                                 code="request_timeout", headers={"Connection": "close"})
                await _error_response(error)(scope, receive, send)
                return
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
    errors = error.errors()
    for problem in errors:
        if problem.get("type") == "json_invalid":
            detail = (problem.get("ctx") or {}).get("error", "")
            return f"invalid request: the body is not valid JSON ({detail}); send a JSON object"
        if problem.get("type") == "model_attributes_type" and tuple(problem.get("loc", ())) == ("body",):
            return ("invalid request: the body must be a JSON object sent with 'Content-Type: application/json', "
                    "like {\"model\": ..., \"messages\": [...]}")
    # A field that takes several shapes (content: a string or a list of parts) fails once per shape; the error from
    # the shape that got furthest is the one that explains the mistake.
    deepest: dict[str, tuple[int, list[str]]] = {}
    for problem in errors:
        loc = tuple(problem.get("loc", ()))
        branch_at = next((i for i, part in enumerate(loc) if _is_union_branch(part)), len(loc))
        key = repr(loc[:branch_at])
        depth, messages = deepest.get(key, (-1, []))
        line = f"{_location(loc) or 'body'}: {problem.get('msg', 'invalid')}"
        if len(loc) > depth:
            deepest[key] = (len(loc), [line])
        elif len(loc) == depth and line not in messages:
            messages.append(line)
    problems = [line for _, lines in deepest.values() for line in lines]
    return "invalid request: " + "; ".join(problems[:5])


def _is_union_branch(part: Any) -> bool:
    # pydantic names the member of a union that failed ('str', 'list[...]', 'tagged-union[...]') in the location.
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _location(loc: Sequence[Any]) -> str:
    """`messages[0].content[1].text` from pydantic's ('body', 'messages', 0, 'content', <branch>, 1, <tag>, 'text')."""
    out = ""
    tagged = tag_next = False
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
            tag_next, tagged = tagged, False
        elif _is_union_branch(part):
            tagged = "tagged-union" in part
        elif tag_next:
            tag_next = False  # the part type's name, which the location already implies
        else:
            out += f".{part}" if out else str(part)
    return out


def create_app(model: Any, settings: ServeSettings | None = None, *, chat: ChatFunction | None = None) -> FastAPI:
    """The API app. The model runs in one worker thread, fed by a dynamic batcher started with the app."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    batcher = DynamicBatcher(
        chat or model_chat_function(model),
        max_batch_size=settings.max_batch_size,
        window_s=settings.batch_window_ms / 1000.0,
        refill_fraction=settings.batch_refill,
        max_queue=settings.max_queue,
        on_batch=metrics.batch_size.observe,
        on_wait=metrics.queue_wait.observe,
    )
    metrics.watch_queue(lambda: batcher.queue_depth, lambda: batcher.running)
    if hasattr(model, "enable_audio_cache"):
        model.enable_audio_cache(settings.audio_cache_mb)
        metrics.watch_audio_cache(lambda: model.audio_cache)
    if hasattr(model, "max_audio_seconds"):  # the model re-checks decoded clips against its own limit
        model.max_audio_seconds = settings.max_audio_seconds
    tokenizer = getattr(model, "tokenizer", None)
    # The LLM's context in tokens, when the model tells it (audio tokens come on top of the counted text).
    llm_config = getattr(getattr(model, "llm_model", None), "config", None)
    context_tokens = getattr(llm_config, "max_position_embeddings", None)
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

    # The last added runs first: every API response is counted, and the 413 passes through CORS (browsers can
    # read it).
    app.add_middleware(_BodySizeLimit, max_bytes=settings.max_request_bytes, read_timeout_s=settings.request_timeout_s)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(ResponseCounter, counter=metrics.requests, routes=API_ROUTES)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(APIError(400, _validation_message(error)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code in (404, 405):  # a wrong base_url or method: say what is served, as OpenAI does
            message = (f"Invalid URL ({request.method} {request.url.path}); this server answers "
                       "POST /v1/chat/completions and GET /v1/models (a client's base_url ends in /v1)")
        return _error_response(APIError(error.status_code, message, headers=getattr(error, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error")  # the trace stays in the server log, never in the response
        return _error_response(_internal_error())

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
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        started = time.perf_counter()
        response = await _complete(body, started, request)
        # A stream records its latency when its last event is out.
        if not isinstance(response, StreamingResponse) and response.status_code != CLIENT_CLOSED_REQUEST:
            metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _complete(body: ChatCompletionRequest, started: float, request: Request) -> Response:
        if body.model != settings.model_id:
            raise APIError(
                404, f"model {body.model!r} is not served here; this server serves {settings.model_id!r}",
                param="model", code="model_not_found",
            )
        unsupported = unsupported_field(body)
        if unsupported is not None:
            param, message = unsupported
            raise APIError(400, message, param=param)
        params = sampling_params(body, settings)
        conversation, audio_seconds = await run_in_threadpool(request_to_conversation, body, policy)
        metrics.audio_seconds.inc(audio_seconds)
        prompt_tokens = await run_in_threadpool(_count_prompt_tokens, model, tokenizer, conversation)
        params = _fit_context(prompt_tokens, params, asked_length=body.requested_max_tokens is not None)
        if body.stream:
            return _stream(body, conversation, params, started, prompt_tokens)
        answer = asyncio.ensure_future(asyncio.wait_for(
            batcher.submit(conversation, params, stop=body.stop_sequences), timeout=settings.request_timeout_s))
        client_gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait([answer, client_gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            client_gone.cancel()
            if not answer.done():
                answer.cancel()  # drops the request from the queue, or stops its row at the next token
        if not answer.done() or answer.cancelled():
            metrics.client_disconnects.inc()
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; /metrics counts it
        try:
            reply = answer.result()
        except Exception as error:
            # An unexpected failure was logged where it happened; the client gets a plain 500.
            raise (_generation_error(error, settings) or _internal_error()) from None

        text, stopped = apply_stop(reply.text, body.stop_sequences)
        completion_tokens, usage = await _usage(prompt_tokens, reply, text)
        finish = _finish_reason(stopped, completion_tokens, params)
        transcripts = list(getattr(reply, "transcripts", None) or [])
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=settings.model_id, usage=usage,
            choices=[Choice(message=ResponseMessage(content=text, transcripts=transcripts), finish_reason=finish)],
        )
        return JSONResponse(completion.model_dump())

    def _fit_context(prompt_tokens: int, params: SamplingParams, asked_length: bool) -> SamplingParams:
        """Refuses a request whose prompt and answer cannot fit in the LLM's context: past it the LLM would run for
        minutes on a prompt it cannot use (then time out), or fail. A default answer length shrinks to fit."""
        if not isinstance(context_tokens, int) or prompt_tokens + params.max_new_tokens <= context_tokens:
            return params
        if not asked_length and prompt_tokens < context_tokens:
            return dataclasses.replace(params, max_new_tokens=context_tokens - prompt_tokens)
        raise APIError(
            400, f"this model's context is {context_tokens} tokens, but the request asks for "
            f"{prompt_tokens + params.max_new_tokens} ({prompt_tokens} in the messages' text, "
            f"{params.max_new_tokens} for the answer); shorten the messages or ask for fewer max_tokens",
            param="messages", code="context_length_exceeded")

    async def _usage(prompt_tokens: int, reply: Any, text: str) -> tuple[int, Usage]:
        prompt_tokens = getattr(reply, "prompt_tokens", 0) or prompt_tokens  # the model's count includes the clips
        completion_tokens = await run_in_threadpool(_count_completion_tokens, tokenizer, reply, text)
        metrics.completion_tokens.inc(completion_tokens)
        return completion_tokens, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                        total_tokens=prompt_tokens + completion_tokens)

    def _finish_reason(stopped: bool, completion_tokens: int, params: SamplingParams) -> str:
        return "length" if not stopped and completion_tokens >= params.max_new_tokens else "stop"

    def _stream(body: ChatCompletionRequest, conversation: Conversation, params: SamplingParams,
                started: float, prompt_tokens: int) -> StreamingResponse:
        """Queue the request (a full queue still gets its 503 here) and answer with its event stream."""
        loop = asyncio.get_running_loop()
        channel = _StreamChannel(loop)
        try:
            future = batcher.enqueue(conversation, params, on_text=channel.on_text, on_start=channel.on_start,
                                     stop=body.stop_sequences)
        except (QueueFullError, BatcherClosedError) as error:
            raise _generation_error(error, settings) from None  # type: ignore[misc]
        future.add_done_callback(channel.on_done)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        deadline = loop.time() + settings.request_timeout_s

        def chunk(delta: Delta, finish_reason: str | None = None) -> str:
            return _sse(ChatCompletionChunk(id=completion_id, created=now, model=settings.model_id,
                                            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)]))

        async def events() -> AsyncIterator[str]:
            stop_filter = StopStringFilter(body.stop_sequences)
            received = ""  # the model's text so far, before stop strings
            transcripts_sent = False
            try:
                yield chunk(Delta(role="assistant", content=""))
                while True:
                    try:
                        kind, value = await asyncio.wait_for(channel.events.get(), max(0.0, deadline - loop.time()))
                    except (asyncio.TimeoutError, TimeoutError) as error:
                        yield _sse_error(_generation_error(error, settings) or _internal_error())
                        yield SSE_DONE
                        return
                    if kind == "start" and not transcripts_sent:
                        transcripts_sent = True
                        yield chunk(Delta(content="", transcripts=value))
                    elif kind == "text":
                        received += value
                        piece = stop_filter.feed(value)
                        if piece:
                            yield chunk(Delta(content=piece))
                        if stop_filter.stopped:
                            break  # finish now; the batch goes on generating for the others
                    elif kind == "done":
                        break
                reply = None
                if not stop_filter.stopped:
                    error = future.exception()
                    if error is not None:
                        yield _sse_error(_generation_error(error, settings) or _internal_error())
                        yield SSE_DONE
                        return
                    reply = future.result()
                    # The reply is the reference: send whatever of it the hooks did not (e.g. a model without them).
                    final = str(reply.text)
                    if final.startswith(received):
                        rest = stop_filter.feed(final[len(received):])
                    else:
                        logger.warning("the streamed text differs from the final answer; keeping what was sent")
                        rest = ""
                    rest += stop_filter.flush()
                    late_transcripts = None if transcripts_sent else list(getattr(reply, "transcripts", None) or [])
                    if rest or late_transcripts is not None:
                        yield chunk(Delta(content=rest, transcripts=late_transcripts))
                completion_tokens, usage = await _usage(prompt_tokens, reply, stop_filter.sent)
                yield chunk(Delta(), _finish_reason(stop_filter.stopped, completion_tokens, params))
                if include_usage:
                    yield _sse(ChatCompletionChunk(id=completion_id, created=now, model=settings.model_id,
                                                   choices=[], usage=usage))
                yield SSE_DONE
                metrics.latency.observe(time.perf_counter() - started)
            except (asyncio.CancelledError, GeneratorExit):  # the client left (the response stops iterating)
                metrics.client_disconnects.inc()
                raise
            finally:
                channel.forwarding = False
                if not future.done():
                    future.cancel()  # drops the request if its batch has not started, else stops its row

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
