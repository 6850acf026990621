"""Request and response bodies of the OpenAI-compatible chat API (the subset this server implements).

Unknown request fields are ignored, as OpenAI-compatible servers usually do, so that clients sending newer
fields keep working (user, metadata, store...). Known fields that would change the answer and are not supported
(n > 1, tools, logprobs, JSON response formats, penalties...) are declared here so that `request_checks` can refuse
them with a 400 that names them, instead of answering as if they had been honoured.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class InputAudio(_Lenient):
    data: str = Field(description="base64-encoded audio file bytes")
    format: str = Field(default="wav", description="container/codec hint: wav, mp3, flac, ogg, ...")
    # Extension: a known transcript skips ASR for this clip (the model's caller-supplied transcript).
    transcript: str | None = None


class InputAudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(_Lenient):
    url: str = Field(description="data: URL always; file:// or http(s):// only when the operator enabled them")
    transcript: str | None = None


class AudioURLPart(_Lenient):
    type: Literal["audio_url"]
    audio_url: AudioURL


def _part_type(part: Any) -> Any:
    return part.get("type") if isinstance(part, dict) else getattr(part, "type", None)


# A part of another type (image_url, file...) is refused with a message naming the types this server takes.
ContentPart = Annotated[
    Union[Annotated[TextPart, Tag("text")], Annotated[InputAudioPart, Tag("input_audio")],
          Annotated[AudioURLPart, Tag("audio_url")]],
    Discriminator(_part_type, custom_error_type="unsupported_content_part",
                  custom_error_message="content parts must be of type text, input_audio or audio_url "
                                       "(images and files are not supported)"),
]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    # OpenAI takes null for these as the default, and some clients send it.
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    # Declared to be refused when used (see request_checks).
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    # Extension: one transcript per audio of the conversation (ASR output or the caller's text), in order.
    transcripts: list[str] = Field(default_factory=list)


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    transcripts: list[str] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "desta-audio"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
