import json

import numpy as np
import pytest

from desta_audio.eval.judge import CachedJudge, FakeJudge, JudgeCacheMiss, build_judge, judge_samples
from desta_audio.eval.records import AudioRef, EvalItem, audio_message, read_jsonl
from desta_audio.eval.runner import manifest_path, run_inference

from tests.eval.helpers import FakeSystem, InterruptedRun, wav_bytes, write_tone


def _items(tmp_path, n=7):
    clip = write_tone(tmp_path / "a.wav")
    return [EvalItem(id=f"q{i}", conversation=audio_message("sys", f"<|AUDIO|> q{i}", [AudioRef(path=str(clip))]),
                     reference={"label": f"l{i}"}) for i in range(n)]


def test_interrupted_run_resumes_without_redoing_items(tmp_path):
    items = _items(tmp_path)
    out = tmp_path / "x.predictions.jsonl"
    flaky = FakeSystem(lambda c: c[-1]["content"].split()[-1].upper(), fail_after_calls=2)
    with pytest.raises(InterruptedRun):
        run_inference(flaky, items, out, batch_size=3)
    assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "q3", "q4", "q5"]
    with open(out, "a", encoding="utf-8") as handle:  # a torn line, as a kill during a write leaves
        handle.write('{"id": "q6", "resp')
    steady = FakeSystem(lambda c: c[-1]["content"].split()[-1].upper())
    run_inference(steady, items, out, batch_size=3)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(7)]
    assert rows[6] == {"id": "q6", "response": "Q6", "label": "l6"}
    assert sum(len(batch) for batch in steady.calls) == 1  # only the missing item was generated
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["items_done"] == 7 and "inference_resumed" in manifest
    assert manifest["example_conversation"][1]["audios"][0]["audio"].endswith("a.wav")


def test_audio_bytes_are_decoded_to_16k_arrays(tmp_path):
    item = EvalItem(id="b", conversation=audio_message("", "<|AUDIO|>", [AudioRef(data=wav_bytes())]))
    seen = []
    system = FakeSystem(lambda c: seen.append(c[-1]["audios"][0]["audio"]) or "ok")
    run_inference(system, [item], tmp_path / "b.predictions.jsonl")
    assert isinstance(seen[0], np.ndarray) and seen[0].dtype == np.float32 and seen[0].shape == (4800,)


def test_text_only_system_needs_text_conversations(tmp_path):
    with pytest.raises(ValueError, match="no text version"):
        run_inference(FakeSystem(lambda c: "x", uses_text_audio=True), _items(tmp_path, 1),
                      tmp_path / "t.predictions.jsonl")


def test_cached_judge_replays_offline_and_keys_on_params(tmp_path):
    cache = tmp_path / "judge.jsonl"
    inner = FakeJudge(rules=[("capital", "Result: YES")], default="Result: NO")
    judge = CachedJudge(inner, cache)
    messages = [{"role": "user", "content": "Is Paris the capital?"}]
    assert judge.judge(messages, temperature=0) == "Result: YES"
    assert judge.judge(messages, temperature=0) == "Result: YES"
    assert len(inner.calls) == 1 and judge.hits == 1
    judge.judge(messages, temperature=0.5)  # other params: another entry
    assert len(inner.calls) == 2
    replay = CachedJudge(None, cache, name="fake")
    assert replay.judge(messages, temperature=0) == "Result: YES"
    with pytest.raises(JudgeCacheMiss):
        replay.judge([{"role": "user", "content": "unseen"}])
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["key"] == CachedJudge.key("fake", messages, {"temperature": 0})


def test_samples_are_cached_one_by_one_and_private_params_not_sent(tmp_path):
    inner = FakeJudge(rules=[lambda m, p: str(len(inner.calls))])
    judge = CachedJudge(inner, tmp_path / "c.jsonl")
    first = judge_samples(judge, [{"role": "user", "content": "rate"}], 3, temperature=0.5)
    assert first == ["1", "2", "3"]
    assert judge_samples(judge, [{"role": "user", "content": "rate"}], 3, temperature=0.5) == first
    assert [p["_sample"] for _, p in inner.calls] == [0, 1, 2]


def test_build_judge_specs(tmp_path):
    assert build_judge("none") is None
    assert isinstance(build_judge("fake"), FakeJudge)
    assert isinstance(build_judge("fake", cache_path=tmp_path / "c.jsonl"), CachedJudge)
    with pytest.raises(ValueError, match="unknown judge"):
        build_judge("gpt")
    with pytest.raises(ValueError, match="needs --judge-cache"):
        build_judge("replay:gpt-4o")
