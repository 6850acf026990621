"""Chat request fields this server does not implement and must not silently ignore.

Ignoring one of these would answer a different question than the one asked (several choices, a tool call, JSON
only, token log-probabilities, penalised sampling, spoken output), so the request is refused with a 400 naming
the field. Values that ask for nothing beyond the default (`tool_choice: "none"`, `response_format: text`,
penalties of 0) pass.
"""

from __future__ import annotations

from desta_audio.serve.schemas import ChatCompletionRequest

_NO_TOOLS = "tools / function calling is not supported by this model"
# OpenAI takes 4. Every stop string is checked at every token (on the event loop for a stream), so a body full of
# them (100,000 took 0.16 s a token) would stall every client of the server.
MAX_STOP_STRINGS = 16


def unsupported_field(request: ChatCompletionRequest) -> tuple[str, str] | None:
    """(param, message) for the first field the request uses that this server cannot honour, else None."""
    if len(request.stop_sequences) > MAX_STOP_STRINGS:
        return "stop", (f"{len(request.stop_sequences)} stop strings is more than this server's limit of "
                        f"{MAX_STOP_STRINGS}")
    if request.n not in (None, 1):
        return "n", f"n={request.n} is not supported; send n=1 (or several requests)"
    if request.tools or request.functions:
        return ("tools" if request.tools else "functions"), _NO_TOOLS
    for param, choice in (("tool_choice", request.tool_choice), ("function_call", request.function_call)):
        if choice not in (None, "none", "auto"):
            return param, f"{param}={choice!r}: {_NO_TOOLS}"
    if request.logprobs or request.top_logprobs:
        param = "logprobs" if request.logprobs else "top_logprobs"
        return param, "logprobs are not supported by this server; leave logprobs and top_logprobs out"
    kind = (request.response_format or {}).get("type", "text")
    if kind != "text":
        return "response_format", (f"response_format {kind!r} is not supported: answers cannot be constrained to "
                                   "JSON here; leave response_format out")
    for param, penalty in (("frequency_penalty", request.frequency_penalty),
                           ("presence_penalty", request.presence_penalty)):
        if penalty:
            return param, f"{param} is not supported by this server; leave it out or send 0"
    if request.logit_bias:
        return "logit_bias", "logit_bias is not supported by this server; leave it out"
    if request.audio is not None or any(modality != "text" for modality in request.modalities or ()):
        return "modalities", "this server answers in text only; leave audio output (modalities, audio) out"
    return None
