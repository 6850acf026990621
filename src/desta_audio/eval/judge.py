"""LLM judges: one small interface, several back ends, and a cache that replays verdicts offline.

- `OpenAIJudge`: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server...), key read from an env variable.
- `TransformersJudge`: a local HF causal LM folder.
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


def _api_params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if not key.startswith("_") and value is not None}


def judge_samples(judge: Judge, messages: Messages, n: int, **params: Any) -> list[str]:
    """n independent verdicts (the official n=3 of VoiceBench), each cached on its own."""
    return [judge.judge(messages, _sample=index, **params) for index in range(n)]


class OpenAIJudge:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 5):
        from openai import OpenAI

        self.name = model
        key = os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise RuntimeError(
                f"OpenAI judge {model!r}: environment variable {api_key_env} is not set; export it (or name another "
                "with --judge-key-env), or point --judge-base-url at a local OpenAI-compatible server (its key "
                "may be any string)"
            )
        self._client = OpenAI(base_url=base_url, api_key=key or "not-needed", timeout=timeout, max_retries=max_retries)

    def judge(self, messages: Messages, **params: Any) -> str:
        reply = self._client.chat.completions.create(model=self.name, messages=messages, **_api_params(params))
        return reply.choices[0].message.content or ""


class TransformersJudge:
    """A local HF chat model as judge (greedy unless a temperature > 0 is given)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"local:{Path(path).name}"
        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        from desta_audio.few_rows_linear import use_few_rows_linear

        self._model = use_few_rows_linear(AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval())

    def judge(self, messages: Messages, **params: Any) -> str:
        import torch

        params = _api_params(params)
        inputs = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self._model.device)
        temperature = float(params.get("temperature") or 0.0)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p", 1.0))} \
            if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = self._model.generate(**inputs, max_new_tokens=int(params.get("max_tokens", 512)), **sampling)
        return self._tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


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
                "with a live judge (--judge openai:MODEL or hf:PATH, same prompts) to fill the cache"
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
    """Judge from a CLI spec: `none`, `fake`, `openai:MODEL`, `hf:PATH`, or `replay:MODEL` (cache only).

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
        raise ValueError(f"unknown judge {spec!r}: use none, fake, openai:MODEL, hf:PATH or replay:MODEL")
    return CachedJudge(inner, cache_path) if cache_path is not None else inner
