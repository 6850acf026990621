"""DeSTAConfig: the adapter's configuration; reads the released `config.json` (model_type "desta25") as is."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

DEFAULT_SYSTEM_PROMPT = "Focus on the audio clips and instructions."
AUDIO_LOCATOR = "<|AUDIO|>"
AUDIO_START = "<start_audio>"  # plain text markers (ordinary BPE tokens), as in the release
AUDIO_END = "<end_audio>"


def default_tap_layers(num_encoder_layers: int, num_taps: int = 4) -> list[int]:
    """Evenly spaced encoder layers, last one included (large-v3: [7, 15, 23, 31]; tiny: [0, 1, 2, 3])."""
    if num_taps > num_encoder_layers:
        raise ValueError(f"cannot tap {num_taps} layers of a {num_encoder_layers}-layer encoder")
    return [(k + 1) * num_encoder_layers // num_taps - 1 for k in range(num_taps)]


class DeSTAConfig(PretrainedConfig):
    """Configuration of a DeSTA2.5 model.

    The first block of fields is the released checkpoint's; the rest are this project's, with defaults that
    reproduce the release. `encoder_model_id` / `llm_model_id` accept hub ids, local paths or packaged names
    (see `desta_audio.zoo`).
    """

    model_type = "desta25"

    def __init__(
        self,
        llm_model_id: str = "DeSTA-ntu/Llama-3.1-8B-Instruct",
        encoder_model_id: str = "openai/whisper-large-v3",
        connector_mode: str = "qformer_1",
        qformer_num_hidden_layers: int = 6,
        prompt_size: int = 64,
        use_lora: bool = False,
        audio_locator: str = AUDIO_LOCATOR,
        placeholder_token: str | None = "<|reserved_special_token_87|>",
        # --- project fields ---
        target_layer_ids: list[int] | None = None,
        qformer_intermediate_size: int = 3072,
        qformer_dropout: float = 0.1,
        qformer_layer_norm_eps: float = 1e-12,
        max_transcript_tokens: int = 128,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        lora_rank: int = 16,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        lora_target_modules: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # The release serialised the two sub-model configs as nested dicts; they are informative only
        # (the real configs load from the component folders), so keep them out of the way.
        self.llm_config = kwargs.pop("llm_config", None)
        self.encoder_config = kwargs.pop("encoder_config", None)
        super().__init__(**kwargs)
        if connector_mode != "qformer_1":
            raise ValueError(f"connector_mode {connector_mode!r} is not supported (only 'qformer_1' exists)")
        self.llm_model_id = llm_model_id
        self.encoder_model_id = encoder_model_id
        self.connector_mode = connector_mode
        self.qformer_num_hidden_layers = qformer_num_hidden_layers
        self.prompt_size = prompt_size
        self.use_lora = use_lora
        self.audio_locator = audio_locator
        self.placeholder_token = placeholder_token
        self.target_layer_ids = list(target_layer_ids) if target_layer_ids is not None else None
        self.qformer_intermediate_size = qformer_intermediate_size
        self.qformer_dropout = qformer_dropout
        self.qformer_layer_norm_eps = qformer_layer_norm_eps
        self.max_transcript_tokens = max_transcript_tokens
        self.system_prompt = system_prompt
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules or ["q_proj", "k_proj", "v_proj"]

    def tap_layers(self, num_encoder_layers: int) -> list[int]:
        layers = self.target_layer_ids or default_tap_layers(num_encoder_layers)
        bad = [i for i in layers if not 0 <= i < num_encoder_layers]
        if bad:
            raise ValueError(f"target_layer_ids {bad} do not exist in a {num_encoder_layers}-layer encoder")
        return list(layers)
