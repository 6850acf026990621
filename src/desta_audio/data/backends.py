"""Text generators that write the targets, behind one interface.

- `TransformersBackend`: a local HF causal LM, batched with left padding and length-sorted batches (CPU or GPU).
- `OpenAIBackend`: any OpenAI-compatible endpoint (`vllm serve`, SGLang, `desta serve`...), bounded concurrency;
  timeouts, retries and exponential backoff on 408/409/429/5xx and connection errors come from the official client.
- `TemplateBackend`: the task-specific templated baseline ("The speaker is female."); no model at all.

torch/transformers/openai are imported inside the backends so that importing this module stays cheap.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desta_audio.data.store import Decoding

logger = logging.getLogger(__name__)

# Names of the packaged backbones that `desta_audio.zoo.prepare_llm` converts into local HF folders.
PACKAGED_LLMS = ("smollm2-135m-instruct", "qwen2.5-0.5b-instruct")
# End-of-turn tokens of common chat templates: generation must stop there, not only at the tokenizer's eos.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>")
DTYPES = ("float32", "bfloat16", "float16")

# Called with the number of requests just answered, so a caller can show progress within one call.
Progress = Callable[[int], None] | None


class BackendError(RuntimeError):
    """The generator could not answer (an endpoint unreachable or refusing); records already stored stay."""


@dataclass
class GenerationRequest:
    messages: list[dict[str, Any]]  # text-only chat (system, user) for the generator
    seed: int
    template_answer: str | None = None  # only for TemplateBackend


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" or "length"
    tokens: int | None = None


class Backend(abc.ABC):
    name: str = "backend"
    model_id: str = ""

    def weights_sha256(self) -> str | None:
        return None

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest], decoding: Decoding, progress: Progress = None
                 ) -> list[Generation]:
        """One answer per request, in request order; `progress(n)` after each n answered."""


def resolve_llm(model: str | Path) -> Path:
    """A local HF folder for a model argument: a packaged backbone name or a folder path."""
    if str(model) in PACKAGED_LLMS:
        from desta_audio import zoo

        return Path(zoo.prepare_llm(str(model)))
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither a packaged backbone ({', '.join(PACKAGED_LLMS)}) nor a local HF folder"
        )
    return path


def folder_sha256(folder: Path) -> str:
    """sha256 over the folder's weight files (names and bytes), so records name the exact weights used."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")) or sorted(folder.glob("*.gguf"))
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model: str | Path,
        batch_size: int = 16,
        device: str = "cpu",
        dtype: str = "float32",
        model_id: str | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = resolve_llm(model)
        self.model_id = model_id or str(model)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        from desta_audio.few_rows_linear import use_few_rows_linear

        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype)).to(self.device)
        use_few_rows_linear(self.model.eval())
        self.eos_ids = self._stop_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._sha: str | None = None

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        ids += configured if isinstance(configured, list) else [configured] if configured is not None else []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[token] for token in _END_OF_TURN_TOKENS if token in vocab]
        if not ids:
            raise ValueError(f"{self.path}: no end-of-sequence token found in the tokenizer or generation config")
        return list(dict.fromkeys(ids))

    def weights_sha256(self) -> str | None:
        if self._sha is None:
            self._sha = folder_sha256(self.path)
        return self._sha

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        # Render with the model's own chat template, then tokenize without adding a second BOS.
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: list[GenerationRequest], decoding: Decoding, progress: Progress = None
                 ) -> list[Generation]:
        encoded = [self.encode(r.messages) for r in requests]
        # Longest first: similar lengths share a batch (little padding), and an out-of-memory shows up at once.
        order = sorted(range(len(requests)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            outputs = self._generate_batch([encoded[i] for i in batch], requests[batch[0]].seed, decoding)
            for index, output in zip(batch, outputs):
                results[index] = output
            if progress:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], seed: int, decoding: Decoding) -> list[Generation]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if decoding.do_sample:
            torch.manual_seed(seed)  # sampling is reproducible for the same batch composition
            sampling = {"do_sample": True, "temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=decoding.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                repetition_penalty=1.0,
                **sampling,
            )
        results = []
        for row in output[:, width:].tolist():
            stop = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
            new_tokens = row if stop is None else row[:stop]
            results.append(
                Generation(
                    text=self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
                    finish_reason="stop" if stop is not None else "length",
                    tokens=len(new_tokens) + (stop is not None),
                )
            )
        return results


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url
        self.model_id = model
        self.api_key = api_key or "EMPTY"  # local servers (vllm serve) accept any key
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries

    def generate(self, requests: list[GenerationRequest], decoding: Decoding, progress: Progress = None
                 ) -> list[Generation]:
        import openai

        try:
            return asyncio.run(self._generate_all(requests, decoding, progress))
        except openai.APIConnectionError as error:  # timeouts included, once the retries are spent
            raise BackendError(f"could not reach {self.base_url} ({error}) after {self.max_retries} retries; check "
                               "--base-url and that the server is up, then rerun to resume") from error
        except openai.APIStatusError as error:
            raise BackendError(f"{self.base_url} answered HTTP {error.status_code} ({error.message}); rerun to "
                               "resume once the server accepts requests") from error

    async def _generate_all(self, requests: list[GenerationRequest], decoding: Decoding, progress: Progress
                            ) -> list[Generation]:
        from openai import AsyncOpenAI

        # The client retries 408/409/429/5xx, timeouts and dropped connections with exponential backoff + jitter.
        async with AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=self.max_retries
        ) as client:
            limit = asyncio.Semaphore(self.concurrency)
            return await asyncio.gather(*(self._one(client, limit, r, decoding, progress) for r in requests))

    async def _one(self, client: Any, limit: asyncio.Semaphore, request: GenerationRequest, decoding: Decoding,
                   progress: Progress):
        messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
        async with limit:
            response = await client.chat.completions.create(
                model=self.model_id,
                messages=messages,
                max_tokens=decoding.max_new_tokens,
                temperature=decoding.temperature if decoding.do_sample else 0.0,
                top_p=decoding.top_p if decoding.do_sample else 1.0,
                seed=request.seed % (2**31),
            )
        choice = response.choices[0]
        tokens = response.usage.completion_tokens if response.usage else None
        if progress:
            progress(1)
        return Generation((choice.message.content or "").strip(), choice.finish_reason or "stop", tokens)


class RemoteBackendInfo(Backend):
    """Names the backend that remote workers (Ray actors) run, without loading a model in the driver."""

    def __init__(self, name: str, model_id: str, weights_sha256: str | None = None):
        self.name = name
        self.model_id = model_id
        self._sha = weights_sha256

    def weights_sha256(self) -> str | None:
        return self._sha

    def generate(self, requests: list[GenerationRequest], decoding: Decoding, progress: Progress = None
                 ) -> list[Generation]:
        raise RuntimeError(f"{self.name} generation runs on remote workers; this object only describes it")


class TemplateBackend(Backend):
    """Returns the templated answer planned for each request (the task-specific baseline)."""

    name = "template"
    model_id = "template"

    def generate(self, requests: list[GenerationRequest], decoding: Decoding, progress: Progress = None
                 ) -> list[Generation]:
        missing = [i for i, r in enumerate(requests) if r.template_answer is None]
        if missing:
            raise ValueError(f"requests {missing[:5]} have no template answer; plan them with target_source='template'")
        if progress:
            progress(len(requests))
        return [Generation(r.template_answer or "", "stop", None) for r in requests]
