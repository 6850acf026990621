import json

import pytest

from desta_audio.data.backends import Backend, Generation, GenerationRequest, TemplateBackend, TransformersBackend
from desta_audio.data.generate import (
    AUDIO_SLOT,
    GenerationSettings,
    generator_messages,
    plan_samples,
    run_generation,
    training_messages,
)
from desta_audio.data.prompts import PromptPool
from desta_audio.data.sources import SourceItem, read_source
from desta_audio.data.store import Decoding, ShardStore

GREEDY = Decoding(do_sample=False, max_new_tokens=10)


@pytest.fixture(scope="module")
def backend(tiny_llm_dir):
    return TransformersBackend(tiny_llm_dir, batch_size=4)


def _requests(count: int) -> list[GenerationRequest]:
    questions = ["hi", "what did the speaker say in the audio clip?", "describe the sound", "yes",
                 "the quick brown fox jumps over the lazy dog and the dog barks", "no maybe", "hello world"]  # fmt: skip
    return [GenerationRequest([{"role": "user", "content": questions[i % len(questions)] * (1 + i % 3)}], seed=i)
            for i in range(count)]  # fmt: skip


def test_batched_generation_equals_one_by_one_greedy(backend):
    requests = _requests(7)
    lengths = {len(backend.encode(r.messages)) for r in requests}
    assert len(lengths) > 3  # the batch really mixes lengths, so left padding is exercised
    batched = backend.generate(requests, GREEDY)
    single = [backend.generate([r], GREEDY)[0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    assert all(g.finish_reason in ("stop", "length") for g in batched)
    assert any(g.text for g in batched)


def test_sampling_is_reproducible_with_the_same_seed(backend):
    sampled = Decoding(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=8)
    first = backend.generate(_requests(3), sampled)
    again = backend.generate(_requests(3), sampled)
    assert [g.text for g in first] == [g.text for g in again]


def test_generator_sees_the_description_in_the_audio_slot():
    item = SourceItem(id="a.wav", dataset="d", audio="/data/a.wav", transcript="hello")
    messages = training_messages(item, "What did they say?", "Focus on the audio clips and instructions.")
    assert messages[1]["content"] == f"{AUDIO_SLOT}\nWhat did they say?"
    assert messages[1]["audios"] == [{"audio": "/data/a.wav", "text": "hello"}]
    text_chat = generator_messages(messages, "[00:00-00:01] hello (Gender: Male)")
    assert text_chat[1] == {"role": "user",
                            "content": "<start_audio>[00:00-00:01] hello (Gender: Male)<end_audio>\nWhat did they say?"}


def test_plan_is_deterministic_and_keys_unique(speech_manifest):
    pool = PromptPool.load()
    settings = GenerationSettings(samples_per_clip=3, seed=5)
    first = [(s.key, s.prompt.id, s.seed) for s in plan_samples(read_source(speech_manifest), pool, settings)]
    again = [(s.key, s.prompt.id, s.seed) for s in plan_samples(read_source(speech_manifest), pool, settings)]
    assert first == again
    assert len({key for key, _, _ in first}) == len(first) == 18
    other_seed = [(s.key, s.prompt.id) for s in plan_samples(read_source(speech_manifest), pool,
                                                                GenerationSettings(samples_per_clip=3, seed=6))]
    assert other_seed != [(k, p) for k, p, _ in first]


def test_records_have_schema_provenance_and_load_with_datasets(speech_manifest, backend, tmp_path):
    out = tmp_path / "out"
    settings = GenerationSettings(samples_per_clip=2, decoding=GREEDY, shard_size=5, check_language=False)
    summary = run_generation(read_source(speech_manifest), backend, out, settings, PromptPool.load(), progress=False)
    assert summary.kept + summary.quarantined == 12
    store = ShardStore(out)
    records = list(store.iter_records()) + list(store.iter_records(quarantine=True))
    assert sorted(r.key for r in records) == sorted(f"speech/clip{i}.wav#{n}" for i in range(6) for n in range(2))
    record = records[0]
    assert record.messages[-1] == {"role": "assistant", "content": record.response}
    assert record.messages[1]["audios"][0]["audio"].endswith(record.id)
    assert record.provenance.weights_sha256 and len(record.provenance.weights_sha256) == 64
    assert record.provenance.pool_version == "1.0"
    assert record.provenance.decoding == GREEDY
    assert record.provenance.description_format_version == "1.1"
    assert "Gender:" in record.seed_description
    import datasets

    # The card's configs point at data/ only. (A private cache dir: datasets may reuse a cached copy of another
    # folder with the same name, since the card's file patterns are relative.)
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(loaded) == summary.kept
    by_files = datasets.load_dataset("json", data_files=str(out / "data" / "shard-*.jsonl"), split="train",
                                     cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert sorted(by_files["key"]) == sorted(loaded["key"])
    assert set(loaded.column_names) >= {"id", "dataset", "seed_description", "prompt", "response", "messages"}
    if summary.quarantined:
        rejected = datasets.load_dataset(str(out), "quarantine", split="train", cache_dir=str(tmp_path / "hf"))
        assert len(rejected) == summary.quarantined and all(rejected["quarantine_reason"])


def test_rerun_skips_done_keys_and_partial_temp_shards_are_ignored(speech_manifest, tmp_path):
    out = tmp_path / "out"
    settings = GenerationSettings(target_source="template", shard_size=4)
    first = run_generation(read_source(speech_manifest), TemplateBackend(), out, settings, progress=False)
    assert first.kept == 6
    (out / "data" / ".shard-00009.jsonl.123.tmp").write_text('{"key": "half-writ')  # a write cut short
    again = run_generation(read_source(speech_manifest), TemplateBackend(), out, settings, progress=False)
    assert again.skipped == 6 and again.kept == 0
    assert not list((out / "data").glob(".*.tmp"))


def test_template_baseline_targets(speech_manifest, tmp_path):
    settings = GenerationSettings(target_source="template", samples_per_clip=3)  # transcript, gender, emotion
    run_generation(read_source(speech_manifest), TemplateBackend(), tmp_path, settings, progress=False)
    records = list(ShardStore(tmp_path).iter_records())
    assert {r.provenance.target_source for r in records} == {"template"}
    pairs = {(r.prompt, r.response) for r in records}
    assert ("What is the gender of the speaker?", "The speaker is female.") in pairs
    assert ("What did the speaker say?", 'The speaker said: "hello there"') in pairs


def test_run_settings_history_is_kept(speech_manifest, tmp_path):
    settings = GenerationSettings(target_source="template")
    for _ in range(2):
        run_generation(read_source(speech_manifest), TemplateBackend(), tmp_path, settings, progress=False)
    history = json.loads((tmp_path / "generation.json").read_text())
    assert [h["already_done"] for h in history] == [0, 6]


def test_rerun_with_other_record_settings_is_refused_and_history_untouched(speech_manifest, tmp_path):
    template = GenerationSettings(target_source="template")
    run_generation(read_source(speech_manifest), TemplateBackend(), tmp_path, template, progress=False)
    history = (tmp_path / "generation.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 -> 1\).*new output folder"):
        run_generation(read_source(speech_manifest), TemplateBackend(), tmp_path,
                       GenerationSettings(target_source="template", seed=1), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="target_source: 'template' -> 'self'.*generator: 'template' -> 'scripted'"):
        run_generation(read_source(speech_manifest), ScriptedBackend(), tmp_path, GenerationSettings(),
                       PromptPool.load(), progress=False)  # fmt: skip
    assert (tmp_path / "generation.json").read_text() == history
    # Settings that only change how the work is cut up may differ.
    again = run_generation(read_source(speech_manifest), TemplateBackend(), tmp_path,
                           GenerationSettings(target_source="template", shard_size=2), progress=False)  # fmt: skip
    assert again.skipped == 6


@pytest.mark.parametrize("audio", ["missing.wav", "corrupt.wav", "empty.wav", "no_samples.wav"])
def test_missing_or_unreadable_audio_stops_the_run_before_any_record(speech_manifest, tmp_path, audio):
    import numpy as np
    import soundfile as sf

    (speech_manifest.parent / "corrupt.wav").write_bytes(b"RIFF not really a wave file" * 10)
    (speech_manifest.parent / "empty.wav").write_bytes(b"")
    sf.write(speech_manifest.parent / "no_samples.wav", np.zeros(0, dtype=np.float32), 16_000)  # header only
    with speech_manifest.open("a") as handle:
        handle.write(json.dumps({"audio": audio, "text": "where am I", "duration": 1.0}) + "\n")
    with pytest.raises(ValueError, match=rf"1 clip\(s\) have missing or unreadable audio: speech/{audio}"):
        run_generation(read_source(speech_manifest), TemplateBackend(), tmp_path / "out",
                       GenerationSettings(target_source="template"), progress=False)  # fmt: skip
    assert not (tmp_path / "out").exists()  # a refused run leaves no output folder behind


def test_progress_is_reported_per_batch(backend, speech_manifest, tmp_path):
    reported = []
    backend.generate(_requests(7), GREEDY, progress=reported.append)
    assert reported == [4, 3]  # batch size 4
    recorder = ScriptedBackend()
    run_generation(read_source(speech_manifest), recorder, tmp_path, GenerationSettings(check_language=False),
                   PromptPool.load(), progress=False)  # fmt: skip
    assert recorder.progress_given and recorder.calls == 1  # one shard of 6, reported as it goes


def test_unknown_dtype_is_refused_before_loading(tiny_llm_dir):
    with pytest.raises(ValueError, match="dtype 'foo' is not one of float32, bfloat16, float16"):
        TransformersBackend(tiny_llm_dir, dtype="foo")


class ScriptedBackend(Backend):
    name = "scripted"
    model_id = "scripted"

    def __init__(self):
        self.calls, self.progress_given = 0, False

    def generate(self, requests, decoding, progress=None):
        self.calls += 1
        self.progress_given = progress is not None
        for _ in requests:
            if progress:
                progress(1)
        return [Generation(f"answer {n}", "stop", 2) for n in range(len(requests))]
