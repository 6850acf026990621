"""The live judge back ends on real components: OpenAIJudge through the official openai client against an
OpenAI-compatible server on loopback (what reaches the wire, scores from its verdicts, failures and resuming), and
TransformersJudge on the packaged SmolLM2 weights."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from desta_audio.eval import cli
from desta_audio.eval import judge as judge_module
from desta_audio.eval.benchmarks import sakura, voicebench
from desta_audio.eval.judge import CachedJudge, JudgeError, OpenAIJudge, build_judge

from tests.data.loopback import serve
from tests.eval.test_sakura_speech_ifeval import _sakura_fixture, _sakura_verdicts

KEY_ENV = "JUDGE_UNDER_TEST_KEY"
SAKURA_RESPONSES = {"Animal/clip1.wav/single": "It is a dog.", "Animal/clip1.wav/multi": "bone",
                    "Gender/clip1.wav/single": "male", "Gender/clip1.wav/multi": "garbled"}
# What _sakura_verdicts makes of those: Animal right twice, Gender wrong once and unreadable once.
SAKURA_SCORES = {"tracks": {"Animal": {"single": 100.0, "multi": 100.0}, "Gender": {"single": 0.0, "multi": 0.0}},
                 "average": {"single": 50.0, "multi": 50.0}, "judge_parse_failures": 1}

Reply = Callable[[dict[str, Any]], "str | dict[str, Any]"]


class JudgeServer:
    """An OpenAI-compatible chat endpoint on loopback with scripted verdicts. It records each request's JSON body
    and Authorization header; after `healthy` requests it answers every further one with HTTP `fail_status`.
    `reply(body)` returns the verdict text, or a whole completion body to script an odd answer."""

    def __init__(self, reply: Reply, healthy: int | None = None, fail_status: int = 500):
        self.reply, self.healthy, self.fail_status = reply, healthy, fail_status
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[str]:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            with self._lock:
                self.bodies.append(body)
                self.authorizations.append(request.headers.get("authorization"))
                number = len(self.bodies)
            if self.healthy is not None and number > self.healthy:
                return JSONResponse({"error": {"message": f"judge backend failed ({self.fail_status})"}},
                                    status_code=self.fail_status)
            answer = self.reply(body)
            if isinstance(answer, dict):
                return answer
            return completion(body["model"], {"role": "assistant", "content": answer})

        with serve(app) as url:
            yield url

    def asked(self) -> list[str]:
        """Each request's messages, as one comparable string."""
        return [json.dumps(body["messages"], sort_keys=True) for body in self.bodies]


def completion(model: str, *messages: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": i, "message": m, "finish_reason": finish_reason} for i, m in enumerate(messages)]}


def sakura_verdict(body: dict[str, Any]) -> str:
    return _sakura_verdicts(body["messages"], {})


def unused_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


@pytest.fixture
def sakura_predictions(tmp_path) -> Path:
    items, _ = sakura.load(_sakura_fixture(tmp_path / "data"))
    path = tmp_path / "run" / "sakura.predictions.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"id": item.id, **item.reference, "response": SAKURA_RESPONSES[item.id]})
                            + "\n" for item in items))
    return path


@pytest.fixture
def quick_retries(monkeypatch):
    """One retry instead of five keeps a failing server's backoff short; the bound itself is still exercised."""
    monkeypatch.setattr(judge_module, "OPENAI_MAX_RETRIES", 1)
    monkeypatch.setenv(KEY_ENV, "sk-under-test")


def score_sakura(predictions: Path, url: str, model: str = "some-model"):
    return CliRunner().invoke(cli.app, ["score", str(predictions), "--benchmark", "sakura",
                                        "--judge", f"openai:{model}", "--judge-base-url", url,
                                        "--judge-key-env", KEY_ENV], env={"COLUMNS": "300"})


def failure_line(result) -> str:
    """The one error line of a command that must fail cleanly: exit 2, no traceback."""
    assert isinstance(result.exception, SystemExit), f"a traceback instead of a message: {result.exception!r}"
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def sakura_scores(predictions: Path) -> dict[str, Any]:
    return json.loads(predictions.with_name("sakura.scores.json").read_text())


def test_sakura_scored_by_a_served_judge_with_its_official_parameters(sakura_predictions, quick_retries):
    server = JudgeServer(sakura_verdict)
    with server.running() as url:
        first = score_sakura(sakura_predictions, url)
        assert first.exit_code == 0, first.output
        replayed = score_sakura(sakura_predictions, url)
    assert replayed.exit_code == 0, replayed.output
    assert len(server.bodies) == 4  # the second scoring replayed every verdict from the cache
    rows = [json.loads(line) for line in sakura_predictions.read_text().splitlines()]
    for body, row in zip(server.bodies, rows):
        assert body == {"model": "some-model", "temperature": 0, "top_p": 0.9,
                        "messages": sakura.judge_messages(row["question"], row["answer"], row["response"])}
    assert server.authorizations == ["Bearer sk-under-test"] * 4
    scores = sakura_scores(sakura_predictions)
    assert {key: scores[key] for key in SAKURA_SCORES} == SAKURA_SCORES
    assert scores["judge"] == "some-model" and scores["judge_params"] == sakura.JUDGE_PARAMS
    assert "never run" not in first.output  # no manifest: no item is known to be missing


def test_voicebench_asks_the_official_model_three_times_without_private_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    predictions = tmp_path / "voicebench.commoneval.predictions.jsonl"
    predictions.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "commoneval_0", "subset": "commoneval", "prompt": "Capital of France?", "response": "Paris."},
        {"id": "commoneval_1", "subset": "commoneval", "prompt": "Sky colour?", "response": "Blue."}]))
    ratings = iter(["4", "5", "3", "2", "4", "1"])
    server = JudgeServer(lambda body: next(ratings))
    with server.running() as url:
        result = CliRunner().invoke(cli.app, ["score", str(predictions), "--benchmark", "voicebench",
                                              "--judge", "openai", "--judge-base-url", url])
    assert result.exit_code == 0, result.output
    official = {"model": voicebench.JUDGE_MODEL, **voicebench.JUDGE_PARAMS}
    assert official == {"model": "gpt-4o-mini", "max_tokens": 1024, "frequency_penalty": 0, "presence_penalty": 0,
                        "temperature": 0.5, "top_p": 0.95}
    assert [{k: v for k, v in body.items() if k != "messages"} for body in server.bodies] == [official] * 6
    assert server.bodies[0] == server.bodies[1] == server.bodies[2] != server.bodies[3]  # 3 samples, same request
    assert "Capital of France?" in server.bodies[0]["messages"][1]["content"]
    assert server.authorizations == ["Bearer not-needed"] * 6  # a local server without a key variable set
    scores = json.loads(predictions.with_name("voicebench.commoneval.scores.json").read_text())
    assert scores["gpt_score"] == pytest.approx(19 / 6) and scores["score"] == pytest.approx(20 * 19 / 6)


def test_unreachable_judge_is_one_line_naming_it(sakura_predictions, quick_retries):
    url = unused_url()
    line = failure_line(score_sakura(sakura_predictions, url))
    assert f"judge 'some-model' at {url}: no answer" in line and "--judge-base-url" in line
    assert "run the same command again" in line


def test_failing_judge_stops_then_the_rerun_asks_only_for_the_missing_verdicts(sakura_predictions, quick_retries):
    dying = JudgeServer(sakura_verdict, healthy=2, fail_status=500)
    with dying.running() as url:
        line = failure_line(score_sakura(sakura_predictions, url))
    assert f"judge 'some-model' at {url}: HTTP 500: judge backend failed (500);" in line
    assert "after 1 retries" in line
    assert len(dying.bodies) == 2 + 2  # two verdicts, then the failing request and its one retry
    cache = sakura_predictions.parent / "judge-cache.jsonl"
    assert len(cache.read_text().splitlines()) == 2
    assert not sakura_predictions.with_name("sakura.scores.json").exists()

    healthy = JudgeServer(sakura_verdict)
    with healthy.running() as url:
        resumed = score_sakura(sakura_predictions, url)
    assert resumed.exit_code == 0, resumed.output
    assert len(healthy.bodies) == 2 and not set(healthy.asked()) & set(dying.asked()[:2])
    scores = sakura_scores(sakura_predictions)
    assert {key: scores[key] for key in SAKURA_SCORES} == SAKURA_SCORES


def test_refused_key_is_not_retried_and_says_which_variable(sakura_predictions, quick_retries):
    server = JudgeServer(sakura_verdict, healthy=0, fail_status=401)
    with server.running() as url:
        line = failure_line(score_sakura(sakura_predictions, url))
    assert "HTTP 401" in line and f"${KEY_ENV}" in line and "--judge-key-env" in line
    assert len(server.bodies) == 1
    assert not (sakura_predictions.parent / "judge-cache.jsonl").exists()


@pytest.mark.parametrize("status, hint, attempts", [
    (404, "check the model name", 1),
    (429, "after 1 retries", 2),
    (503, "after 1 retries", 2),
])
def test_http_errors_name_the_judge_and_what_to_do(status, hint, attempts, quick_retries):
    server = JudgeServer(sakura_verdict, healthy=0, fail_status=status)
    with server.running() as url:
        with pytest.raises(JudgeError, match=f"judge 'm' at {url}: HTTP {status}: .*{hint}"):
            OpenAIJudge("m", base_url=url).judge([{"role": "user", "content": "rate"}])
    assert len(server.bodies) == attempts


def test_replies_without_a_verdict_are_errors_and_never_cached(tmp_path, quick_retries):
    odd = {
        "no choices": lambda body: {**completion(body["model"]), "choices": []},
        "no text": lambda body: completion(body["model"], {"role": "assistant", "content": None},
                                           finish_reason="length"),
    }
    for what, reply in odd.items():
        server = JudgeServer(reply)
        cache = tmp_path / f"{what}.jsonl"
        with server.running() as url:
            judge = CachedJudge(OpenAIJudge("m", base_url=url), cache)
            for _ in range(2):
                with pytest.raises(JudgeError, match=f"judge 'm' at {url}: the reply has {what}"):
                    judge.judge([{"role": "user", "content": "rate"}], temperature=0)
        assert len(server.bodies) == 2 and not cache.exists()  # asked again: nothing was recorded as a verdict


def test_a_refusal_is_the_judges_answer(quick_retries):
    server = JudgeServer(lambda body: completion(body["model"], {"role": "assistant", "content": None,
                                                                 "refusal": "I can't grade this."}))
    with server.running() as url:
        assert OpenAIJudge("m", base_url=url).judge([{"role": "user", "content": "rate"}]) == "I can't grade this."


# ----------------------------------------------------------------------------------------- local judges


def test_hf_judge_names_what_it_accepts(tmp_path):
    with pytest.raises(ValueError, match="not a packaged LLM \\(qwen2.5-0.5b-instruct, smollm2-135m-instruct\\)"):
        build_judge("hf:no-such-llm")
    with pytest.raises(ValueError, match="'whisper-base' is a packaged whisper, not a llm"):
        build_judge("hf:whisper-base")
    with pytest.raises(ValueError, match="needs a model: hf:NAME"):
        build_judge("hf:")
    with pytest.raises(ValueError, match="is not a transformers model folder \\(no config.json\\)"):
        build_judge(f"hf:{tmp_path}")


def test_unloadable_hf_judge_is_one_line_from_the_cli(sakura_predictions, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    for spec, message in ((f"hf:{broken}", "cannot load a chat model from"), ("hf:no-such-llm", "not a packaged LLM")):
        line = failure_line(CliRunner().invoke(cli.app, ["score", str(sakura_predictions), "--benchmark", "sakura",
                                                         "--judge", spec], env={"COLUMNS": "300"}))
        assert message in line


QUESTION = [{"role": "system", "content": "You grade answers."},
            {"role": "user", "content": "Question: What animal barks?\nGround truth: dog\nResponse: a dog\n"
                                        "Is the response correct?"}]


@pytest.fixture(scope="module")
def smollm2_judge():
    return build_judge("hf:smollm2-135m-instruct")  # a packaged LLM by name: converted once into the cache


@pytest.mark.integration
def test_packaged_llm_judge_is_greedy_by_default_and_honours_max_tokens(smollm2_judge):
    assert smollm2_judge.name == "local:smollm2-135m-instruct"
    greedy = smollm2_judge.judge(QUESTION, max_tokens=6)
    assert greedy.strip()
    assert smollm2_judge.judge(QUESTION, max_tokens=6, **sakura.JUDGE_PARAMS, _sample=1) == greedy
    short = smollm2_judge.judge(QUESTION, max_tokens=2)
    assert greedy.startswith(short) and len(short) < len(greedy)
    assert len(smollm2_judge._tokenizer(short, add_special_tokens=False)["input_ids"]) <= 2


@pytest.mark.integration
def test_packaged_llm_judge_samples_above_temperature_zero_within_top_p(smollm2_judge):
    import torch

    torch.manual_seed(0)
    greedy = smollm2_judge.judge(QUESTION, max_tokens=6)
    samples = [smollm2_judge.judge(QUESTION, max_tokens=6, temperature=1.5) for _ in range(2)]
    assert len({greedy, *samples}) > 1
    # A tiny top_p leaves only the likeliest token however hot the sampling: the greedy answer again.
    assert smollm2_judge.judge(QUESTION, max_tokens=6, temperature=1.5, top_p=1e-6) == greedy


@pytest.mark.integration
def test_packaged_llm_judge_ignores_the_models_own_generation_defaults(smollm2_judge):
    """Only the request's parameters count, as on an OpenAI endpoint: a generation config's top_k or repetition
    penalty (Qwen ships both) must not change a verdict."""
    import torch

    config = smollm2_judge._model.generation_config
    greedy = smollm2_judge.judge(QUESTION, max_tokens=6)
    saved = config.top_k, config.repetition_penalty
    config.top_k, config.repetition_penalty = 1, 50.0
    try:
        assert smollm2_judge.judge(QUESTION, max_tokens=6) == greedy
        torch.manual_seed(0)
        samples = {smollm2_judge.judge(QUESTION, max_tokens=6, temperature=1.5) for _ in range(3)}
        assert samples - {greedy}  # top_k 1 would make every sample the greedy answer
    finally:
        config.top_k, config.repetition_penalty = saved
