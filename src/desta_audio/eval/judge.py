"""LLM judges: one small interface, several back ends, and a cache that replays verdicts offline.

- `OpenAIJudge`: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server...), key read from an env variable.
- `TransformersJudge`: a local HF chat model: a packaged LLM by name, a model folder or a hub id.
- `FakeJudge`: deterministic rules, for tests and offline plumbing checks.
- `CachedJudge`: wraps any judge; keyed by sha256 of (model, messages, params); a JSONL file that replays.

Parameters whose name starts with "_" (e.g. `_sample` for the i-th of n samples) only enter the cache key: they
are never sent to the back end, so n independent samples of a stochastic judge replay one by one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, messages: Messages, **params: Any) -> str: ...


class JudgeCacheMiss(LookupError):
    """A verdict was asked of a replay-only cache that does not hold it."""


class JudgeError(RuntimeError):
    """A live judge gave no verdict (unreachable, refused, failing, or an answer without text); one line, naming
    the judge and what to do. Nothing is cached for that request, so a rerun asks it again."""


# Attempts after the first failure, with the client's exponential backoff (about 15 s in all before giving up).
OPENAI_MAX_RETRIES = 5


def _api_params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if not key.startswith("_") and value is not None}


def _one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def judge_samples(judge: Judge, messages: Messages, n: int, **params: Any) -> list[str]:
    """n independent verdicts (the official n=3 of VoiceBench), each cached on its own."""
    return [judge.judge(messages, _sample=index, **params) for index in range(n)]


class OpenAIJudge:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int | None = None):
        from openai import OpenAI

        self.name = model
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise RuntimeError(
                f"OpenAI judge {model!r}: environment variable {api_key_env} is not set; export it (or name another "
                "with --judge-key-env), or point --judge-base-url at a local OpenAI-compatible server (its key "
                "may be any string)"
            )
        self.max_retries = OPENAI_MAX_RETRIES if max_retries is None else max_retries
        self._client = OpenAI(base_url=base_url, api_key=key or "not-needed", timeout=timeout,
                              max_retries=self.max_retries)
        self.url = str(self._client.base_url).rstrip("/")

    def judge(self, messages: Messages, **params: Any) -> str:
        import openai

        try:
            reply = self._client.chat.completions.create(model=self.name, messages=messages, **_api_params(params))
        except openai.APIConnectionError as error:  # refused, DNS, timeout: the client already retried
            raise self._error(f"no answer ({_one_line(error)}); is the server running, and is --judge-base-url "
                              "its address (it usually ends in /v1)?") from None
        except openai.APIStatusError as error:
            detail = re.sub(r"^Error code: \d+ - ", "", error.message)  # the client's prefix repeats the status
            raise self._error(f"HTTP {error.status_code}: {_one_line(detail)}; "
                              f"{self._status_hint(error.status_code)}") from None
        except openai.APIError as error:  # a body the client cannot read as a chat completion
            raise self._error(f"unreadable reply ({_one_line(error)}); is it an OpenAI-compatible server?") from None
        choices = getattr(reply, "choices", None)
        if not choices:
            raise self._error("the reply has no choices; is it an OpenAI-compatible chat completions server?")
        message = choices[0].message
        if message is not None and message.content is not None:
            return message.content
        refusal = getattr(message, "refusal", None)
        if refusal:
            return refusal  # the judge's own answer: scored as an unreadable verdict, like any off-format reply
        # No text at all (a tool call, a reasoning model that spent max_tokens thinking, a server fault): caching
        # "" would score it as a wrong verdict forever, so stop here and leave it to be asked again.
        raise self._error(f"the reply has no text (finish_reason {choices[0].finish_reason!r}); a judge must answer "
                          "in text: check the model, or use another judge")

    def _status_hint(self, status: int) -> str:
        if status in (401, 403):
            key = f"the key in ${self.api_key_env}" if os.environ.get(self.api_key_env) else \
                f"to answer without a key (${self.api_key_env} is not set)"
            return f"the server refused {key}: export the right key, or name another variable with --judge-key-env"
        if status == 404:
            return "check the model name (openai:MODEL) and --judge-base-url (it usually ends in /v1)"
        if status in (400, 422):
            return "the server rejected the request or its parameters"
        return f"the server still failed after {self.max_retries} retries; try again later"

    def _error(self, what: str) -> JudgeError:
        return JudgeError(f"judge {self.name!r} at {self.url}: {what}")


class TransformersJudge:
    """A local HF chat model as judge (greedy unless a temperature > 0 is given).

    `model` is a packaged LLM name (see `desta models list`; converted once into the cache), a model folder, or a
    hub id (owner/name)."""

    def __init__(self, model: str | Path, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from desta_audio.few_rows_linear import use_few_rows_linear

        path = resolve_local_judge(model)
        self.name = f"local:{Path(path).name}"
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
            llm = AutoModelForCausalLM.from_pretrained(str(path))
        except (OSError, ValueError) as error:  # transformers' messages run over several lines
            raise ValueError(f"hf judge {str(model)!r}: cannot load a chat model from {path} "
                             f"({_one_line(error, 200)})") from None
        self._model = use_few_rows_linear(llm.to(device).eval())

    def judge(self, messages: Messages, **params: Any) -> str:
        import torch

        params = _api_params(params)
        inputs = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self._model.device)
        temperature = float(params.get("temperature") or 0.0)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p", 1.0)),
                    "top_k": 0} if temperature > 0 else {"do_sample": False}
        # Only the request's own parameters shape the verdict, as on an OpenAI endpoint: a model folder's generation
        # defaults (the hub's Qwen2.5 ships top_k 20 and a repetition penalty) and transformers' top_k are off.
        with torch.no_grad():
            output = self._model.generate(**inputs, max_new_tokens=int(params.get("max_tokens", 512)),
                                          repetition_penalty=1.0, **sampling)
        return self._tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def resolve_local_judge(model: str | Path) -> str | Path:
    """hf:MODEL -> what from_pretrained loads: a packaged LLM's prepared folder, a model folder, or a hub id.
    A ValueError names the packaged LLMs when `model` is none of these."""
    from desta_audio import zoo

    llms = ", ".join(sorted(name for name, weights in zoo.PACKAGED.items() if weights.kind == "llm"))
    if not str(model):
        raise ValueError(f"--judge hf needs a model: hf:NAME (packaged: {llms}), hf:FOLDER or hf:OWNER/NAME")
    if isinstance(model, str) and model in zoo.PACKAGED:
        return zoo.prepare_llm(model)  # a packaged Whisper is a ValueError that lists the LLMs
    try:
        resolved = zoo.resolve_component(model)
    except ValueError:
        raise ValueError(f"hf judge {str(model)!r}: not a packaged LLM ({llms}), a model folder, or a hub id "
                         "(owner/name)") from None
    if isinstance(resolved, Path) and not (resolved / "config.json").is_file():
        raise ValueError(f"hf judge {str(model)!r}: {resolved} is not a transformers model folder (no config.json)")
    return resolved


Rule = Callable[[Messages, dict[str, Any]], "str | None"]


class FakeJudge:
    """Deterministic judge: the first rule that returns a string wins, else `default`.

    Rules are callables or (regex, reply) pairs matched against the whole conversation text. `calls` records every
    request so tests can check the prompts and parameters a scorer sent.
    """

    def __init__(self, rules: list[Rule | tuple[str, str]] | None = None, default: str = "", name: str = "fake"):
        self.name = name
        self.default = default
        self.calls: list[tuple[Messages, dict[str, Any]]] = []
        self._rules: list[Rule] = [self._regex_rule(r) if isinstance(r, tuple) else r for r in (rules or [])]

    @staticmethod
    def _regex_rule(rule: tuple[str, str]) -> Rule:
        pattern, reply = re.compile(rule[0], re.DOTALL), rule[1]
        return lambda messages, _params: reply if pattern.search(_conversation_text(messages)) else None

    def judge(self, messages: Messages, **params: Any) -> str:
        self.calls.append((messages, params))
        for rule in self._rules:
            reply = rule(messages, params)
            if reply is not None:
                return reply
        return self.default

    @classmethod
    def heuristic(cls) -> FakeJudge:
        """A rough offline stand-in for smoke runs: answers each official prompt format by word overlap.
        Its numbers mean nothing; it only exercises the whole pipeline without a network."""
        return cls(rules=[_heuristic_rule], default="Result: NO", name="fake-heuristic")


def _conversation_text(messages: Messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)


def _field(text: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}\s*(.*?)(?:\n|$)", text, re.DOTALL)
    return match.group(1).strip().lower() if match else ""


def _heuristic_rule(messages: Messages, _params: dict[str, Any]) -> str:
    text = _conversation_text(messages)
    if "Judgement:" in text:  # SAKURA format
        truth, response = _field(text, "Ground truth:"), _field(text, "Response:")
        verdict = "correct" if truth and truth.split(")")[-1].strip() in response else "incorrect"
        return f"Explanation: word overlap.\nJudgement: {verdict}"
    if "score only" in text:  # VoiceBench open-ended
        return "3"
    if '"Yes" or "No"' in text:  # VoiceBench sd-qa
        return "Yes" if _field(text, "### Reference answer\n") in text.split("### Candidate answer")[-1].lower() else "No"
    if "**substring**" in text:  # Speech-IFEval transcript extraction
        return text.split("Model's Response:")[-1].strip()
    if "reasoning behavior" in text:
        response = text.split("Model's Response:")[-1]
        return "Result: YES" if len(response.split()) > 25 else "Result: NO"
    truth = _field(text, "Ground Truth Answer:") or _field(text, "Ground truth:")
    response = text.split("Response:")[-1].lower()
    return "Result: YES" if truth and truth in response else "Result: NO"


class CachedJudge:
    """Any judge plus a JSONL cache; with `inner=None` it only replays and raises JudgeCacheMiss on a miss."""

    def __init__(self, inner: Judge | None, cache_path: str | Path, name: str | None = None):
        self.inner = inner
        self.name = name or (inner.name if inner is not None else "cache-replay")
        self.path = Path(cache_path)
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, str] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a half-written last line of an interrupted run
                    self._entries[entry["key"]] = entry["reply"]

    @staticmethod
    def key(model: str, messages: Messages, params: dict[str, Any]) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def judge(self, messages: Messages, **params: Any) -> str:
        key = self.key(self.name, messages, params)
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        if self.inner is None:
            asked = " ".join(str(messages[-1].get("content", "")).split())[:60] if messages else ""
            raise JudgeCacheMiss(
                f"{self.path}: no cached verdict of {self.name!r} for the request {asked!r}...; run the scoring once "
                "with a live judge (--judge openai:MODEL or hf:MODEL, same prompts) to fill the cache"
            )
        self.misses += 1
        reply = self.inner.judge(messages, **params)
        self._entries[key] = reply
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "model": self.name, "messages": messages, "params": params,
                                     "reply": reply}, ensure_ascii=False) + "\n")
        return reply


def build_judge(spec: str | None, cache_path: str | Path | None = None, base_url: str | None = None,
                api_key_env: str = "OPENAI_API_KEY", model_name: str | None = None) -> Judge | None:
    """Judge from a CLI spec: `none`, `fake`, `openai:MODEL`, `hf:MODEL` (a packaged LLM name, a model folder or a
    hub id), or `replay:MODEL` (cache only).

    With a cache path every judge but `none` is wrapped in a CachedJudge, so verdicts are stored and replayed.
    """
    if spec is None or spec == "none":
        return None
    kind, _, arg = spec.partition(":")
    inner: Judge | None
    if kind == "fake":
        inner = FakeJudge.heuristic()
    elif kind == "openai":
        inner = OpenAIJudge(arg or model_name or "gpt-4o-2024-11-20", base_url=base_url, api_key_env=api_key_env)
    elif kind == "hf":
        inner = TransformersJudge(arg)
    elif kind == "replay":
        if cache_path is None:
            raise ValueError("--judge replay:MODEL needs --judge-cache PATH")
        return CachedJudge(None, cache_path, name=arg or model_name)
    else:
        raise ValueError(f"unknown judge {spec!r}: use none, fake, openai:MODEL, hf:MODEL or replay:MODEL")
    return CachedJudge(inner, cache_path) if cache_path is not None else inner
