"""`--system api`: the harness against a real `desta serve` app on loopback, driven by the official openai client.
The served model is a recording fake, so these tests check the wire path itself: what reaches the model, what
comes back into the predictions, and what happens on refusals, server errors and resume."""

from __future__ import annotations

import shutil

import numpy as np
import openai
import pytest

from desta_audio.eval.records import AudioRef, EvalItem, audio_message, read_jsonl
from desta_audio.eval.remote import OpenAIChatSystem, openai_messages
from desta_audio.eval.runner import errors_path, materialize, run_inference
from desta_audio.serve.api import ServeSettings, create_app

from tests.eval.helpers import write_tone
from tests.serve.helpers import FakeModel, free_port, running_server

MODEL_ID = "desta-under-test"


class RecordingModel(FakeModel):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conversations: list[list[dict]] = []

    def chat(self, conversations, **generation):
        self.conversations.extend(conversations)
        return super().chat(conversations, **generation)


def serve(model, **settings):
    return running_server(create_app(model, ServeSettings(model_id=MODEL_ID, **settings)))


def tone(seconds: float, rate: int = 16_000, frequency: float = 440.0) -> AudioRef:
    t = np.arange(int(seconds * rate)) / rate
    return AudioRef(array=(0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), sample_rate=rate)


def test_conversations_reach_the_server_as_a_local_model_would_see_them(tmp_path):
    clip_file = write_tone(tmp_path / "clip.wav", 300, seconds=0.4, rate=22_050)
    multi_turn = audio_message("Answer briefly.", "<|AUDIO|>\nWhat is it?", [tone(0.5, rate=8_000)]) + [
        {"role": "assistant", "content": "A tone."},
        {"role": "user", "content": "Compare <|AUDIO|> with <|AUDIO|>\nWhich is higher?",
         "audios": [{"audio": AudioRef(path=str(clip_file)), "text": None},
                    {"audio": tone(0.3, frequency=880.0), "text": "known words"}]}]
    items = [EvalItem("single", audio_message("", "<|AUDIO|>\nWhat animal?", [AudioRef(path=str(clip_file))]),
                      reference={"answer": "dog"}),
             EvalItem("multi", multi_turn)]
    model = RecordingModel()
    with serve(model) as url:
        system = OpenAIChatSystem(f"{url}/v1", MODEL_ID, concurrency=2)
        out = run_inference(system, items, tmp_path / "run.predictions.jsonl",
                            generation={"max_new_tokens": 7, "do_sample": False})

    by_last_text = {c[-1]["content"]: c for c in model.conversations}
    for item in items:
        local = materialize(item.conversation)
        remote = by_last_text[local[-1]["content"]]
        assert [(m["role"], m["content"]) for m in remote] == [(m["role"], m["content"]) for m in local]
        local_audios = [a for m in local for a in m.get("audios", [])]
        remote_audios = [a for m in remote for a in m.get("audios", [])]
        assert [a["text"] for a in remote_audios] == [a.get("text") for a in local_audios]
        from desta_audio.audio import load_audio

        for mine, theirs in zip(local_audios, remote_audios):
            assert np.array_equal(load_audio(mine["audio"]), theirs["audio"])  # lossless: same 16 kHz samples
    assert all(call["max_new_tokens"] == 7 and call["do_sample"] is False for call in model.calls)

    rows = {row["id"]: row for row in read_jsonl(out)}
    assert rows["single"]["answer"] == "dog"  # the reference fields travel as for a local system
    assert rows["single"]["response"] == "roles=user last=[<|AUDIO|> What animal?] audio_samples=[6400]"
    assert rows["multi"]["transcripts"] == ["clip of 8000 samples", "clip of 6400 samples", "known words"]


def test_a_batch_goes_out_at_once(tmp_path):
    model = RecordingModel()
    items = [EvalItem(str(i), audio_message("", f"<|AUDIO|>\nQuestion {i}?", [tone(0.2)])) for i in range(4)]
    with serve(model, batch_window_ms=500) as url:
        run_inference(OpenAIChatSystem(f"{url}/v1", MODEL_ID, concurrency=4), items, tmp_path / "p.predictions.jsonl",
                      batch_size=4, generation={"max_new_tokens": 4})
    assert max(model.batches) > 1  # the server saw the requests together and batched them


def test_refused_request_is_recorded_then_retried_on_resume(tmp_path):
    items = [EvalItem("short", audio_message("", "<|AUDIO|>\nshort?", [tone(0.5)])),
             EvalItem("long", audio_message("", "<|AUDIO|>\nlong?", [tone(2.0)]))]
    predictions = tmp_path / "p.predictions.jsonl"
    with serve(RecordingModel(), max_audio_seconds=1.0) as url:
        run_inference(OpenAIChatSystem(f"{url}/v1", MODEL_ID), items, predictions, batch_size=2)
    rows = {row["id"]: row for row in read_jsonl(predictions)}
    assert list(rows) == ["short"] and rows["short"]["response"]  # the refused item gets no prediction row
    refused = read_jsonl(errors_path(predictions))
    assert [row["id"] for row in refused] == ["long"]
    assert refused[0]["error"].startswith("400") and "limit" in refused[0]["error"]

    model = RecordingModel()
    with serve(model) as url:  # the operator raised the limit: resuming sends only the refused item again
        run_inference(OpenAIChatSystem(f"{url}/v1", MODEL_ID), items, predictions, batch_size=2)
    assert [c[-1]["content"] for c in model.conversations] == ["<|AUDIO|>\nlong?"]
    rows = read_jsonl(predictions)
    assert sorted(row["id"] for row in rows) == ["long", "short"]
    assert all(row["response"] and "error" not in row for row in rows)
    assert not errors_path(predictions).exists()


def test_server_errors_stop_the_run_and_keep_finished_items(tmp_path):
    model = RecordingModel(fail_on="explode")
    items = [EvalItem("ok", audio_message("", "<|AUDIO|>\nfine?", [tone(0.2)])),
             EvalItem("bad", audio_message("", "<|AUDIO|>\nexplode?", [tone(0.2)]))]
    predictions = tmp_path / "p.predictions.jsonl"
    with serve(model) as url:
        system = OpenAIChatSystem(f"{url}/v1", MODEL_ID, max_retries=0)
        with pytest.raises(openai.InternalServerError):
            run_inference(system, items, predictions, batch_size=1)
    assert [row["id"] for row in read_jsonl(predictions)] == ["ok"]


def test_unreachable_server_and_unknown_model_are_clear_errors():
    with pytest.raises(ConnectionError, match="no OpenAI-compatible server answers"):
        OpenAIChatSystem(f"http://127.0.0.1:{free_port()}/v1", MODEL_ID, max_retries=0, timeout_s=5)
    with serve(RecordingModel()) as url:
        with pytest.raises(ValueError, match=f"serves \\['{MODEL_ID}'\\], not 'other'"):
            OpenAIChatSystem(f"{url}/v1", "other")


def test_tag_count_must_match_the_audios():
    with pytest.raises(ValueError, match="2 <\\|AUDIO\\|> tags for 1 audios"):
        openai_messages([{"role": "user", "content": "<|AUDIO|><|AUDIO|>", "audios": [{"audio": np.zeros(160)}]}])


def test_cli_evaluates_a_served_model_and_counts_refusals(tmp_path):
    import json

    from typer.testing import CliRunner

    from desta_audio.eval import cli
    from tests.eval.test_mmau import _write_mmau

    data = _write_mmau(tmp_path / "data", with_id=True)  # three 0.5 s clips
    out = tmp_path / "run"
    args = ["mmau", "--data", str(data), "--system", "api", "--model", MODEL_ID, "--out", str(out)]
    with serve(RecordingModel(), max_audio_seconds=0.25) as url:
        result = CliRunner().invoke(cli.app, [*args, "--base-url", f"{url}/v1"])
    assert result.exit_code == 1 and "3 of 3 items failed" in result.output  # refused: listed, run exits non-zero
    scores = json.loads((out / "mmau.test-mini.scores.json").read_text())
    assert scores["missing_predictions"] == 3 and scores["missing_outputs"] == 3
    manifest = json.loads((out / "mmau.test-mini.manifest.json").read_text())
    assert manifest["system"] == {"kind": "openai-api", "base_url": f"{url}/v1", "model": MODEL_ID}

    with serve(RecordingModel()) as url:
        result = CliRunner().invoke(cli.app, [*args, "--base-url", f"{url}/v1"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "mmau.test-mini.scores.json").read_text())
    assert scores["missing_predictions"] == 0 and scores["missing_outputs"] == 0

    missing_url = CliRunner().invoke(cli.app, args)
    assert missing_url.exit_code != 0 and "--system api needs --base-url" in missing_url.output


def test_api_text_sends_the_text_version_for_a_served_text_llm(tmp_path):
    from typer.testing import CliRunner

    from desta_audio.eval import cli
    from desta_audio.eval.benchmarks import speech_ifeval
    from tests.eval.test_sakura_speech_ifeval import _sif_fixture

    data = _sif_fixture(tmp_path / "sif")
    model = RecordingModel()
    with serve(model) as url:
        result = CliRunner().invoke(cli.app, ["speech-ifeval", "--data", str(data), "--system", "api-text",
                                              "--base-url", f"{url}/v1", "--model", MODEL_ID,
                                              "--out", str(tmp_path / "run"), "--no-score"])
    assert result.exit_code == 0, result.output
    assert "pass --reference-ifrate" in result.output  # no in-process reference for a served system
    items, _ = speech_ifeval.load(data)
    assert len(model.conversations) == len(items)
    sent = {c[-1]["content"]: c for c in model.conversations}
    for item in items:
        expected = item.text_conversation
        received = sent[expected[-1]["content"]]
        assert [(m["role"], m["content"]) for m in received] == [(m["role"], m["content"]) for m in expected]
        assert not any(m.get("audios") for m in received)
    assert any("the weather is nice today" in content for content in sent)


@pytest.mark.integration
def test_served_desta_tiny_answers_like_the_local_model(tmp_path):
    """The real model behind the real server: greedy predictions over HTTP equal the in-process ones."""
    from desta_audio.eval.benchmarks import mmau
    from desta_audio.modeling import DeSTAModel
    from tests.eval.helpers import write_speech
    from tests.eval.test_mmau import _write_mmau

    data = _write_mmau(tmp_path / "data", with_id=True)
    write_speech(data.parent / "test-mini-audios" / "clip0.wav", "A dog is barking in the garden.")
    items, _ = mmau.load(data)
    generation = {**mmau.GENERATION, "max_new_tokens": 12}
    model = DeSTAModel.from_pretrained("desta-tiny")
    local = read_jsonl(run_inference(model, items, tmp_path / "local.predictions.jsonl", generation=generation))
    with running_server(create_app(model, ServeSettings(model_id="desta-tiny"))) as url:
        remote = read_jsonl(run_inference(OpenAIChatSystem(f"{url}/v1", "desta-tiny"), items,
                                          tmp_path / "remote.predictions.jsonl", generation=generation))
    assert [(r["id"], r["response"], r.get("transcripts")) for r in remote] == \
        [(r["id"], r["response"], r.get("transcripts")) for r in local]
    if shutil.which("espeak-ng"):  # a real spoken clip went through VAD and ASR on both paths
        assert "dog" in local[0]["transcripts"][0].lower()
