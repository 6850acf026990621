"""The OpenAI-compatible backend against real HTTP servers on loopback."""

import socket

import pytest

from desta_audio.data.backends import BackendError, GenerationRequest, OpenAIBackend, TransformersBackend
from desta_audio.data.generate import GenerationSettings, run_generation
from desta_audio.data.prompts import PromptPool
from desta_audio.data.sources import read_source
from desta_audio.data.store import Decoding, ShardStore
from tests.data.loopback import ServerState, make_app, serve

GREEDY = Decoding(do_sample=False, max_new_tokens=16)


def _echo(messages, max_tokens, temperature):
    return f"echo: {messages[-1]['content'][-30:]}", "stop", 3


def _requests(count):
    return [GenerationRequest([{"role": "user", "content": f"question {n}"}], seed=n) for n in range(count)]


def test_bounded_concurrency_and_order():
    state = ServerState(delay=0.05)
    with serve(make_app(_echo, state)) as url:
        answers = OpenAIBackend(url, "echo", concurrency=3).generate(_requests(12), GREEDY)
    assert [a.text for a in answers] == [f"echo: question {n}" for n in range(12)]
    assert state.requests == 12
    assert 1 < state.max_in_flight <= 3


def test_retries_after_server_errors_and_timeouts():
    state = ServerState(fail_first=2, stall_first=1, stall_seconds=3.0)
    with serve(make_app(_echo, state)) as url:
        backend = OpenAIBackend(url, "echo", concurrency=1, timeout=1.0, max_retries=4)
        answers = backend.generate(_requests(1), GREEDY)
    assert answers[0].text == "echo: question 0"
    assert state.requests == 4  # two 503s, one timed-out attempt, then success


def test_gives_up_with_a_clear_error_when_retries_run_out():
    state = ServerState(fail_first=100)
    with serve(make_app(_echo, state)) as url:
        with pytest.raises(BackendError, match=f"{url} answered HTTP 503"):
            OpenAIBackend(url, "echo", concurrency=1, max_retries=1).generate(_requests(1), GREEDY)
    assert state.requests == 2


def test_unreachable_server_is_named_and_finished_records_stay(speech_manifest, tmp_path):
    settings = GenerationSettings(target_source="other-llm", decoding=GREEDY, shard_size=2, check_language=False)
    state = ServerState(fail_after=4)  # goes down after two shards' worth of answers
    with serve(make_app(_echo, state)) as url:
        backend = OpenAIBackend(url, "echo", concurrency=1, max_retries=0)
        with pytest.raises(BackendError, match="HTTP 503"):
            run_generation(read_source(speech_manifest), backend, tmp_path, settings, PromptPool.load(), progress=False)
    assert len(ShardStore(tmp_path).completed_keys()) == 4
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(BackendError, match=f"could not reach {gone}"):
        run_generation(read_source(speech_manifest), OpenAIBackend(gone, "echo", max_retries=0), tmp_path, settings,
                       PromptPool.load(), progress=False)  # fmt: skip
    with serve(make_app(_echo, ServerState())) as url:
        resumed = run_generation(read_source(speech_manifest), OpenAIBackend(url, "echo"), tmp_path, settings,
                                 PromptPool.load(), progress=False)  # fmt: skip
    assert resumed.skipped == 4 and resumed.kept + resumed.quarantined == 2


@pytest.mark.integration
def test_generation_through_a_loopback_server_serving_smollm2(smollm2_dir, speech_manifest, tmp_path):
    """A real model behind a real HTTP server: endpoint answers equal the same model run locally (greedy)."""
    local = TransformersBackend(smollm2_dir, batch_size=4)

    def answer(messages, max_tokens, temperature):
        assert temperature == 0.0  # greedy requested
        generation = local.generate([GenerationRequest(messages, seed=0)], Decoding(do_sample=False,
                                                                                 max_new_tokens=max_tokens))[0]  # fmt: skip
        return generation.text, generation.finish_reason, generation.tokens

    settings = GenerationSettings(decoding=GREEDY, shard_size=3, check_language=False)
    state = ServerState()
    with serve(make_app(answer, state)) as url:
        summary = run_generation(read_source(speech_manifest), OpenAIBackend(url, "smollm2", concurrency=2),
                                 tmp_path / "remote", settings, PromptPool.load(), progress=False)  # fmt: skip
    assert state.requests == 6 and summary.kept + summary.quarantined == 6
    run_generation(read_source(speech_manifest), local, tmp_path / "local", settings, PromptPool.load(), progress=False)

    def responses(folder):
        store = ShardStore(folder)
        rows = list(store.iter_rows()) + list(store.iter_rows(quarantine=True))
        return {r["key"]: r["response"] for r in rows}

    remote = responses(tmp_path / "remote")
    assert remote == responses(tmp_path / "local")
    assert sum(bool(text) for text in remote.values()) >= 5
    assert all(r.provenance.backend == "openai" for r in ShardStore(tmp_path / "remote").iter_records())
