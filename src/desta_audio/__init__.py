"""DeSTA2.5-Audio: Whisper encoder -> Q-Former adapter -> frozen instruction-tuned LLM."""

__version__ = "0.1.0"
