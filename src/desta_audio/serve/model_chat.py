"""The batcher's chat function for a model: which optional hooks it takes, and stopping rows nobody waits for."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from desta_audio.serve.batcher import (
    STOP_REQUESTED,
    STOP_STRINGS,
    STREAMING_HOOKS,
    ChatFunction,
    Conversation,
    SamplingParams,
    accepts_stop_strings,
    accepts_stream_hooks,
)


def model_chat_function(model: Any) -> ChatFunction:
    """A chat function for `model` that names exactly the optional keywords the batcher may pass: the streaming
    hooks and stop strings when `model.chat` takes them, and `stop_requested` when the model's extra keywords go to
    a transformers `generate()` (then a row whose request was given up, or every row at shutdown, stops at its next
    token instead of running to max_new_tokens)."""
    optional = [*(STREAMING_HOOKS if accepts_stream_hooks(model.chat) else ()),
                *((STOP_STRINGS,) if accepts_stop_strings(model.chat) else ()),
                *((STOP_REQUESTED,) if forwards_generate_kwargs(model) else ())]

    def chat(conversations: Sequence[Conversation], params: SamplingParams, **extra: Any) -> Sequence[Any]:
        stop_requested = extra.pop(STOP_REQUESTED, None)
        if stop_requested is not None:
            extra["stopping_criteria"] = stop_rows_when(stop_requested)
        return model.chat(list(conversations), **extra, **params.chat_kwargs())

    # The batcher reads the signature to know what to pass, so it lists only what this model can use.
    chat.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("conversations", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in optional),
    ])
    return chat


def forwards_generate_kwargs(model: Any) -> bool:
    # DeSTAModel.chat passes unknown keywords on to its LLM's generate(); a model without an LLM to generate with
    # (test fakes, wrappers) would get a keyword it does not know.
    if not callable(getattr(getattr(model, "llm_model", None), "generate", None)):
        return False
    try:
        parameters = inspect.signature(model.chat).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def stop_rows_when(stop_requested: Sequence[Callable[[], bool]]) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowsNoLongerWanted(StoppingCriteria):
        """Ends each row whose `stop_requested()` is true; the others go on."""

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            return torch.tensor([bool(stop()) for stop in stop_requested], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([RowsNoLongerWanted()])
