import pytest

from desta_audio.eval.benchmarks import dynamic_superb, voicebench
from desta_audio.eval.judge import FakeJudge
from desta_audio.eval.records import AUDIO_TAG

from tests.eval.helpers import wav_bytes


def _hf_folder(path, columns, audio_columns=("audio",), split="test"):
    import datasets

    table = datasets.Dataset.from_dict(columns)
    for name in audio_columns:
        table = table.cast_column(name, datasets.Audio(sampling_rate=16_000, decode=False))
    datasets.DatasetDict({split: table}).save_to_disk(str(path))
    return path


def _audio(n, base=300):
    return [{"bytes": wav_bytes(base + 50 * i), "path": f"clip{i}.wav"} for i in range(n)]


def test_dynamic_superb_hf_folders_dimensions_and_matchers(tmp_path):
    root = tmp_path / "dsb"
    _hf_folder(root / "SpeechDetection_LJSpeech", {
        "file": ["a", "b"], "audio": _audio(2), "label": ["yes", "no"],
        "instruction": ["Is there speech? Answer yes or no."] * 2})
    _hf_folder(root / "SpeakerVerification_VCTK", {
        "file": ["c"], "audio": _audio(1), "audio2": _audio(1, 900), "label": ["same speaker"],
        "instruction": ["Same speaker or different speaker?"]}, audio_columns=("audio", "audio2"))
    _hf_folder(root / "BirdSoundDetection_Warblrb10k", {
        "file": ["d"], "audio": _audio(1), "label": ["yes"], "instruction": ["Any bird? yes or no"]})
    items, info = dynamic_superb.load(root)
    assert info["instances"] == {"BirdSoundDetection_Warblrb10k": 1, "SpeakerVerification_VCTK": 1,
                                 "SpeechDetection_LJSpeech": 2}
    pair = next(i for i in items if i.reference["instance"] == "SpeakerVerification_VCTK")
    assert pair.conversation[1]["content"] == f"{AUDIO_TAG} {AUDIO_TAG} Same speaker or different speaker?"
    assert len(pair.conversation[1]["audios"]) == 2 and pair.conversation[1]["audios"][1]["audio"].data
    responses = {"SpeechDetection_LJSpeech/a": "Yes, there is speech.",   # consecutive match
                 "SpeechDetection_LJSpeech/b": "I hear someone talking",  # wrong
                 "SpeakerVerification_VCTK/c": "They are the Same-Speaker.",  # normalised -> "same speaker"
                 "BirdSoundDetection_Warblrb10k/d": "no"}
    rows = [dict(id=i.id, response=responses[i.id], **i.reference) for i in items]
    result = dynamic_superb.score(rows)
    assert result["instances"]["SpeechDetection_LJSpeech"] == 50.0
    assert result["dimensions"] == {"Content": 50.0, "Speaker": 100.0, "Audio": 0.0}
    assert result["overall"] == pytest.approx(50.0)  # mean over instances (50, 100, 0)
    assert result["overall_without_audio"] == pytest.approx(75.0)
    judged = dynamic_superb.score(rows, FakeJudge(default="Result: YES"), matcher="judge")
    assert judged["overall"] == 100.0 and judged["matcher"] == "judge"
    unreadable = dynamic_superb.score(rows, FakeJudge(default="maybe"), matcher="judge")
    assert unreadable["judge_parse_failures"] == 4 and unreadable["overall"] == 0.0


def test_dynamic_superb_task_names_map_to_dimensions():
    assert dynamic_superb.dimension_of("NoiseDetectionGaussian_VCTKMusan") == "Degradation"
    assert dynamic_superb.dimension_of("SpeechTextMatching_LJSpeech") == "Content"
    assert dynamic_superb.dimension_of("EnvironmentalSoundClassification_ESC50-Animals") == "Audio"
    assert dynamic_superb.dimension_of("Unknown_Task") == "Other"


def test_dynamic_superb_label_without_words_matches_any_reply_as_in_destas_metric():
    def row(ident, label, response):
        return {"id": f"SpeechDetection_X/{ident}", "instance": "SpeechDetection_X", "dimension": "Content",
                "label": label, "instruction": "?", "response": response}

    # "[noise]" and "?" normalise to no words: DeSTA's metric finds the empty run in any reply, even an empty one.
    rows = [row(1, "[noise]", "It is music."), row(2, "?", ""), row(3, "yes", "no")]
    default = dynamic_superb.score(rows)
    assert default["per_item"] == {"SpeechDetection_X/1": True, "SpeechDetection_X/2": True,
                                   "SpeechDetection_X/3": False}
    assert default["overall"] == pytest.approx(200 / 3) and default["empty_label"] == "match"
    fixed = dynamic_superb.score(rows, empty_label="wrong")
    assert fixed["overall"] == 0.0
    with pytest.raises(ValueError, match="empty_label"):
        dynamic_superb.score(rows, empty_label="skip")


def _vb_rows(subset, entries):
    return [{"id": f"{subset}_{i}", "subset": subset, **entry} for i, entry in enumerate(entries)]


@pytest.mark.parametrize("response, letter", [
    ("The answer is B.", "B"), ("b) photosynthesis", "B"), ("I would choose option c", "C"),
    ("**D.** because", "D"), ("<1>a", "A"), ("I am not sure", None), ("", None),
])
def test_mcq_extractor(response, letter):
    assert voicebench.extract_choice(response) == letter


def test_mcq_scoring_with_seeded_fallback():
    rows = _vb_rows("openbookqa", [{"response": "The answer is A.", "reference": "A"},
                                   {"response": "The answer is C.", "reference": "B"},
                                   {"response": "no idea", "reference": "D"},
                                   {"response": "", "reference": "A"}])
    first = voicebench.score(rows, seed=3)
    assert first["fail_rate"] == 50.0
    assert first == voicebench.score(rows, seed=3)  # seeded: reproducible
    import random
    rng = random.Random(3)
    fallback = [rng.choice("ABCD"), rng.choice("ABCD")]
    assert first["score"] == 25.0 + 25.0 * (fallback[0] == "D") + 25.0 * (fallback[1] == "A")


def test_advbench_refusals_and_empty_response():
    rows = _vb_rows("advbench", [{"response": "I'm sorry, I can't help."}, {"response": "   "},
                                 {"response": "Step 1: get a knife"}, {"response": "That would be illegal."}])
    assert voicebench.score(rows)["score"] == 75.0


def test_open_ended_judge_three_samples_times_twenty():
    verdicts = iter(["4", "5", "Rating: [[3]]", "2", "oops", "4"])
    judge = FakeJudge(rules=[lambda m, p: next(verdicts)])
    rows = _vb_rows("commoneval", [{"response": "Paris.", "prompt": "Capital of France?"},
                                   {"response": "It is blue.", "prompt": "Sky colour?"}])
    result = voicebench.score(rows, judge)
    assert result["gpt_score"] == pytest.approx((4 + 5 + 3 + 2 + 4) / 5)
    assert result["score"] == pytest.approx(20 * 18 / 5)
    assert result["judge_parse_failures"] == 1
    assert {k: v for k, v in judge.calls[0][1].items() if k != "_sample"} == voicebench.JUDGE_PARAMS
    assert "### [Instruction]: Capital of France?" in judge.calls[0][0][1]["content"]


def test_sdqa_majority_vote_without_pedant():
    votes = iter(["Yes", "No", "yes", "No", "No", "Yes"])
    rows = _vb_rows("sd-qa", [{"response": "Paris", "prompt": "capital?", "reference": "Paris"},
                              {"response": "Rome", "prompt": "capital?", "reference": "Paris"}])
    result = voicebench.score(rows, FakeJudge(rules=[lambda m, p: next(votes)]), use_pedant=False)
    assert result["gpt"] == 50.0 and result["pedant"] is None and "judge half only" in result["note"]


def test_sdqa_three_way_tie_goes_to_the_earliest_sample():
    # Each item gets three different verdicts; the earliest sample decides, so items whose first verdict is "Yes"
    # are correct and the others are not, whatever Python's string hashing does to set order.
    firsts = [("Yes", f"unsure {i}", "No") if i % 2 == 0 else (f"unsure {i}", "Yes", "No") for i in range(20)]
    replies = iter(v for triple in firsts for v in triple)
    rows = _vb_rows("sd-qa", [{"response": "r", "prompt": f"q{i}", "reference": "x"} for i in range(20)])
    result = voicebench.score(rows, FakeJudge(rules=[lambda m, p: next(replies)]), use_pedant=False)
    assert result["gpt"] == 50.0
    assert result["judge_parse_failures"] == 20  # one "unsure" per item


def test_ifeval_four_accuracies():
    rows = _vb_rows("ifeval", [
        {"prompt": "Write in lowercase with no commas.", "response": "Sure:\nall lowercase here",
         "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
         "kwargs": [{"capital_frequency": None}, {}]},
        {"prompt": "End with 'Bye.'", "response": "Hello there. Bye.",
         "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]},
    ])
    result = voicebench.score(rows)
    # strict: item 1 fails lowercase ("Sure:") but has no comma; item 2 follows.
    assert result["strict-prompt"] == 50.0 and result["strict-instruction"] == pytest.approx(200 / 3)
    # loose: dropping the first line makes item 1 lowercase
    assert result["loose-prompt"] == 100.0 and result["loose-instruction"] == 100.0


def test_bbh_reference_mapping_and_quirk():
    rows = _vb_rows("bbh", [{"id": "hyperbaton_1", "response": "The answer is (b).", "reference": "(b)"},
                            {"id": "hyperbaton_2", "response": "b", "reference": "(b)"},  # upstream maps to (a)
                            {"id": "navigate_1", "response": "No, you do not return.", "reference": "No"},
                            {"id": "sports_understanding_1", "response": "No, it is implausible.",
                             "reference": "no"}])  # "implausible" alone is no upstream phrase; the leading "no" is
    for row in rows:
        row["source_id"] = row["id"]
    result = voicebench.score(rows)
    assert result["score"] == 75.0 and result["fail_rate"] == 0.0


def test_voicebench_load_hf_folder(tmp_path):
    path = _hf_folder(tmp_path / "commoneval", {"audio": _audio(2), "prompt": ["hi", "bye"],
                                                "id": ["c0", "c1"], "reference": [None, None]})
    items, info = voicebench.load(path)
    assert info["subset"] == "commoneval" and [i.id for i in items] == ["c0", "c1"]
    assert items[0].conversation == [
        {"role": "system", "content": voicebench.SYSTEM_PROMPT},
        {"role": "user", "content": AUDIO_TAG, "audios": [{"audio": items[0].conversation[1]["audios"][0]["audio"],
                                                          "text": None}]}]
    assert items[0].conversation[1]["audios"][0]["audio"].load().shape == (4800,)
    with pytest.raises(ValueError, match="unknown"):
        voicebench.load(path, subset="nope")


def test_sdqa_counts_unreadable_verdicts_and_records_the_judge():
    rows = _vb_rows("sd-qa", [{"response": "Paris", "prompt": "capital?", "reference": "Paris", "split": "usa"}])
    result = voicebench.score(rows, FakeJudge(default="Maybe"), use_pedant=False)
    assert result["gpt"] == 0.0 and result["judge_parse_failures"] == 3  # three samples, none yes/no
    assert result["judge"] == "fake" and result["judge_params"] == voicebench.JUDGE_PARAMS
    assert result["judge_samples"] == 3 and result["judge_prompts"]["origin"] == "project wording"
    opened = voicebench.score(_vb_rows("commoneval", [{"response": "Blue.", "prompt": "Sky?"}]),
                              FakeJudge(default="4"))
    assert opened["judge_params"] == voicebench.JUDGE_PARAMS and opened["judge_parse_failures"] == 0


def test_dynamic_superb_judge_matcher_records_the_judge_params():
    rows = [{"id": "SpeechDetection_LJSpeech/a", "instance": "SpeechDetection_LJSpeech", "dimension": "Content",
             "label": "yes", "instruction": "Speech?", "response": "yes"}]
    judged = dynamic_superb.score(rows, FakeJudge(default="Result: YES"), matcher="judge")
    assert judged["judge_params"] == dynamic_superb.JUDGE_PARAMS and judged["judge_parse_failures"] == 0
    assert "judge_params" not in dynamic_superb.score(rows)  # no judge, nothing to record


def test_pedant_version_is_recorded_and_a_different_one_is_warned(monkeypatch, caplog):
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from desta_audio.eval.runner import _versions

    real = importlib.metadata.version
    installed = {"qa-metrics": "0.2.42"}

    def fake_version(name):
        if name == "qa-metrics":
            if name not in installed:
                raise importlib.metadata.PackageNotFoundError(name)
            return installed[name]
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    assert _versions()["qa-metrics"] == "0.2.42"
    with caplog.at_level("WARNING"):
        assert voicebench.check_pedant_version() == "0.2.42"
    assert "qa-metrics 0.2.42 is installed" in caplog.text and "differ from the 0.2.17 VoiceBench pins" in caplog.text
    installed.clear()
    assert _versions()["qa-metrics"] == "not installed"
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["pedant"] == [f"qa-metrics=={voicebench.PEDANT_VERSION}"]


def test_mmsu_parquet_domains_come_from_the_file_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "vbp" / "mmsu"
    folder.mkdir(parents=True)
    for domain in ("biology", "law"):
        pq.write_table(pa.table({"audio": [{"bytes": wav_bytes(), "path": f"{domain}.wav"}],
                                 "prompt": [f"{domain} question"], "reference": ["A"], "id": [f"{domain}_0"]}),
                       folder / f"{domain}-00000-of-00001.parquet")
    items, info = voicebench.load(folder)
    assert [item.id for item in items] == ["biology/biology_0", "law/law_0"]
    rows = [dict(id=item.id, response="The answer is A" if "biology" in item.id else "The answer is B",
                 **item.reference) for item in items]
    assert voicebench.score(rows)["domains"] == {"biology": 100.0, "law": 0.0}
    law, law_info = voicebench.load(folder, split="law")
    assert [item.reference["split"] for item in law] == ["law"] and law_info["data_version"] == "voicebench/mmsu/law"
    with pytest.raises(ValueError, match="no split 'chemistry'.*biology, law"):
        voicebench.load(folder, split="chemistry")
