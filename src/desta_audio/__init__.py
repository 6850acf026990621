"""DeSTA2.5-Audio: Whisper encoder -> Q-Former adapter -> frozen instruction-tuned LLM.

    from desta_audio import DeSTAModel
    model = DeSTAModel.from_pretrained("desta-mini")
    print(model.ask(["clip.wav"], "What does the speaker say?").text)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["DeSTAConfig", "DeSTAModel", "ChatReply", "AudioError", "load_audio"]

_LAZY = {  # imported on first use, so `desta --help` does not pay for torch
    "DeSTAConfig": "desta_audio.config",
    "DeSTAModel": "desta_audio.modeling",
    "ChatReply": "desta_audio.modeling",
    "AudioError": "desta_audio.audio",
    "load_audio": "desta_audio.audio",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'desta_audio' has no attribute {name!r}")
