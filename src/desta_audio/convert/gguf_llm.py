"""GGUF causal LM -> dense transformers safetensors folder (weights, tokenizer with chat template, generation config).

transformers reads GGUF itself and dequantizes every tensor; this module makes the result a plain checkpoint that
reloads in seconds instead of re-dequantizing on every start.

Weights are saved in float32 by default: GGUF blocks dequantize to `scale * q (+ min)` with an fp16 scale and a
4-8 bit integer, which needs up to ~16 significant bits, so bfloat16 (8) would round most weights and float16 (11)
some of them. float32 holds them exactly, so the saved model computes what the GGUF file encodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
_PROBE_TEXT = "The capital of France is"


class GGUFConversionError(RuntimeError):
    """A GGUF file could not be turned into a clean transformers checkpoint."""


def read_gguf_chat_template(gguf_path: str | Path) -> str | None:
    """The Jinja chat template stored in a GGUF file's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get(_CHAT_TEMPLATE_KEY)
    if field is None:
        return None
    template = field.contents()
    return template if isinstance(template, str) and template.strip() else None


def convert_gguf_llm(
    gguf_path: str | Path,
    output_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Dequantize a GGUF causal LM and save it as a transformers folder (safetensors + tokenizer + generation config).

    The tokenizer keeps the model's chat template (restored from the GGUF metadata if transformers drops it). The
    written folder is reloaded and must give the same logits as the freshly dequantized model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    step = progress or (lambda message: logger.info(message))
    gguf_path = Path(gguf_path)
    output_dir = Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist.")

    step("reading tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        template = read_gguf_chat_template(gguf_path)
        if template is None:
            raise GGUFConversionError(
                f"{gguf_path} has no chat template ({_CHAT_TEMPLATE_KEY}); an instruction-tuned model needs one."
            )
        tokenizer.chat_template = template

    step("dequantizing weights")
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    _drop_quantizer_state(model)
    _check_dense(model, gguf_path)
    model = model.to(dtype).eval()
    _complete_generation_config(model, tokenizer)

    step("saving transformers model")
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)

    step("checking the saved model")
    _check_reload(model, tokenizer, output_dir)
    return output_dir


def _drop_quantizer_state(model) -> None:
    # The weights are dense now; left in place, the quantizer state makes save_pretrained refuse ("not
    # serializable") and would tell a later loader to expect GGUF blocks.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _check_dense(model, gguf_path: Path) -> None:
    packed = [name for name, module in model.named_modules() if "gguf" in type(module).__module__.lower()]
    not_float = [name for name, param in model.named_parameters() if not param.is_floating_point()]
    if packed or not_float:
        raise GGUFConversionError(
            f"{gguf_path}: transformers left GGUF-packed modules {packed[:3]} / non-float weights {not_float[:3]}; "
            "the model could not be fully dequantized."
        )


def _complete_generation_config(model, tokenizer) -> None:
    """Stop at the end-of-turn token and pad with the tokenizer's pad token, as chat generation expects."""
    generation = model.generation_config
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        pad = tokenizer.pad_token_id
        generation.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    if generation.eos_token_id is None:
        raise GGUFConversionError("GGUF model defines no end-of-sequence token; generation would never stop.")


@torch.no_grad()
def _check_reload(model, tokenizer, output_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded, info = AutoModelForCausalLM.from_pretrained(output_dir, dtype=model.dtype, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    if problems:
        raise GGUFConversionError(f"Converted LLM in {output_dir} does not load cleanly: {problems}.")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(output_dir)
    if not reloaded_tokenizer.chat_template:
        raise GGUFConversionError(f"Converted tokenizer in {output_dir} lost its chat template.")
    ids = tokenizer(_PROBE_TEXT, return_tensors="pt").input_ids
    if not torch.equal(ids, reloaded_tokenizer(_PROBE_TEXT, return_tensors="pt").input_ids):
        raise GGUFConversionError(f"Converted tokenizer in {output_dir} encodes text differently from the GGUF one.")
    expected = model(ids).logits
    actual = reloaded.eval()(ids).logits
    if not torch.allclose(expected, actual, rtol=0, atol=1e-5):
        diff = (expected - actual).abs().max().item()
        raise GGUFConversionError(f"Converted LLM in {output_dir} gives different logits after reload (max {diff}).")
