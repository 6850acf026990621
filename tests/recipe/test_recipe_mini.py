import json

import pytest
import torch
from typer.testing import CliRunner

from desta_audio.eval.ifeval import forgetting_delta
from desta_audio.recipe import heldout, mini, resume_check
from desta_audio.recipe.cli import app
from tests.recipe.conftest import needs_espeak

ROWS = [
    {"id": "a", "audio": "a.wav", "kind": "speech", "text": "Turn left after the museum.", "language": "English",
     "gender": "Female"},
    {"id": "b", "audio": "b.wav", "kind": "speech", "text": "我妹妹是老师。", "language": "Mandarin Chinese",
     "gender": "Male", "noise_level": "High"},
    {"id": "c", "audio": "c.wav", "kind": "music", "origin": "chords"},
    {"id": "d", "audio": "d.wav", "kind": "sound", "origin": "noise"},
    {"id": "e", "audio": "e.wav", "kind": "sound", "origin": "tones"},
    {"id": "f", "audio": "f.wav", "kind": "sound", "origin": "asterisk"},  # a beep: no category label
]
DESCRIPTIONS = {row["id"]: f"description of {row['id']}" for row in ROWS}


def _items(**kwargs):
    return heldout.build_items(ROWS, DESCRIPTIONS, **kwargs)


def test_labels_come_from_the_metadata_and_questions_only_where_they_apply():
    items = _items(per_question=10, instructions=0)
    labels = {(i.task, i.audio): i.label for i in items}
    assert labels[("gender", "a.wav")] == "Female" and labels[("gender", "b.wav")] == "Male"
    assert labels[("language", "b.wav")] == "Chinese"  # matches "Mandarin Chinese" and "Chinese" answers
    assert labels[("category", "c.wav")] == "music" and labels[("category", "d.wav")] == "noise"
    assert labels[("category", "e.wav")] == "tone" and ("category", "f.wav") not in labels
    assert labels[("noise_level", "b.wav")] == "High" and ("noise_level", "a.wav") not in labels
    assert labels[("content", "a.wav")] == "Turn left after the museum."
    assert ("content", "b.wav") not in labels  # no spaces to match words on
    assert all(i.description == f"description of {i.audio[0]}" for i in items)


def test_sampling_is_capped_seeded_and_instructions_cycle():
    items = _items(per_question=1, instructions=4, seed=3)
    counts = {}
    for item in items:
        counts[item.task] = counts.get(item.task, 0) + 1
    assert counts == {"gender": 1, "language": 1, "category": 1, "noise_level": 1, "content": 1, "instruction": 4}
    assert [i.id for i in items] == [i.id for i in _items(per_question=1, instructions=4, seed=3)]
    instruction_ids = [i.instruction_id for i in items if i.task == "instruction"]
    assert instruction_ids == [row[1] for row in heldout.INSTRUCTIONS[:4]]
    assert len({i.id for i in items}) == len(items)


def test_scoring_uses_consecutive_words_and_the_rule_checkers():
    items = [heldout.HeldoutItem("g1", "gender", "a.wav", "q", "d", label="Male"),
             heldout.HeldoutItem("g2", "gender", "b.wav", "q", "d", label="Male"),
             heldout.HeldoutItem("i1", "instruction", "a.wav", "q", "d", instruction_id="change_case:english_lowercase"),
             heldout.HeldoutItem("i2", "instruction", "a.wav", "q", "d", instruction_id="change_case:english_lowercase")]
    replies = {"g1": "The speaker is male.", "g2": "A female voice.", "i1": "all lowercase here", "i2": "Not Lower"}
    result = heldout.score(items, replies)
    assert result == {"gender": 50.0, "instruction": 50.0, "attributes": 50.0}
    assert forgetting_delta(40.0, 50.0) == pytest.approx(-20.0) and forgetting_delta(1, 0) is None


class CountingSystem:
    def __init__(self):
        self.asked = []

    def chat(self, conversations, max_new_tokens, do_sample):
        assert not do_sample
        self.asked += conversations
        return [f"reply {len(self.asked) - len(conversations) + k}" for k in range(len(conversations))]


def test_predict_resumes_without_asking_twice_and_survives_a_torn_line(tmp_path):
    items = _items(per_question=1, instructions=2)
    out = tmp_path / "system.jsonl"
    first = CountingSystem()
    heldout.predict(first, items[:3], out, audio=True, transcripts={"a.wav": "hello"}, batch_size=2)
    with out.open("a") as handle:
        handle.write('{"id": "torn')  # an interrupted write
    second = CountingSystem()
    replies = heldout.predict(second, items, out, audio=True, batch_size=2)
    assert len(first.asked) == 3 and len(second.asked) == len(items) - 3
    assert set(replies) == {i.id for i in items}
    assert heldout.read_predictions(out) == replies
    # audio systems get the clip and its transcript; the text reference reads the description instead
    audio_turn = first.asked[0][-1]
    assert audio_turn["audios"][0]["audio"] == items[0].audio and "<|AUDIO|>" in audio_turn["content"]
    text_turn = heldout.text_conversation(items[0])[-1]
    assert "audios" not in text_turn and items[0].description in text_turn["content"]


def test_report_table_json_and_plot(tmp_path):
    settings = mini.RecipeSettings(out_dir=tmp_path)
    scores = {"attributes": 50.0, "gender": 60.0, "language": 40.0, "instruction": 30.0}
    results = {mini.UNTRAINED: scores, "self": {**scores, "instruction": 45.0},
               mini.TEXT_BACKBONE: {**scores, "instruction": 60.0}}
    report = mini.write_report(settings, results, {"records_per_adapter": 8})
    text = report.read_text()
    assert "| self-generated (Qwen2.5-0.5B, the backbone) | 50.0 | 60.0 | 40.0 | - |" in text
    assert "-25.0%" in text and "-50.0%" in text  # (45-60)/60 and (30-60)/60
    assert json.loads((tmp_path / "report.json").read_text())["facts"]["records_per_adapter"] == 8
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_training_config_is_the_packaged_one_with_the_recipe_paths(tmp_path):
    settings = mini.RecipeSettings(out_dir=tmp_path)
    config = mini.train_config(settings, "other-llm", 512)
    assert config.model.base == "desta-mini" and config.data.max_records == 512
    assert config.data.train == str(tmp_path / "targets" / "other-llm" / "data")
    assert config.run.output_dir == str(tmp_path / "runs" / "other-llm")
    assert config.cache_dir == tmp_path / "feature-cache"  # shared by every source
    assert config.cache.enabled
    assert config.model.fresh_adapter  # from scratch, never from the adapter the package ships


@pytest.mark.parametrize(("native_bf16", "precision"), [(True, "bf16"), (False, "fp32")])
def test_training_precision_follows_the_hardware(tmp_path, monkeypatch, native_bf16, precision):
    """bf16 autocast only where bf16 is native: emulated, it trains 3-4x slower than fp32."""
    monkeypatch.delenv("DESTA_DTYPE", raising=False)
    monkeypatch.setattr("desta_audio.precision.cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    config = mini.train_config(mini.RecipeSettings(out_dir=tmp_path), "self", 512)
    assert config.run.precision == precision
    # Generation and evaluation likewise, unless a dtype is named.
    settings = mini.RecipeSettings(out_dir=tmp_path)
    expected = torch.bfloat16 if native_bf16 else torch.float32
    assert mini.cpu_dtype(settings.generator_dtype) == mini.cpu_dtype(settings.eval_dtype) == expected
    assert mini.cpu_dtype("float32") == torch.float32


def test_subset_is_seeded_and_written_once(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("".join(json.dumps({"id": str(i)}) + "\n" for i in range(20)))
    settings = mini.RecipeSettings(out_dir=tmp_path, clips=5)
    path = mini.subset_step(settings)
    chosen = path.read_text()
    assert len(chosen.splitlines()) == 5 and path.parent == corpus
    path.unlink()
    assert mini.subset_step(settings).read_text() == chosen
    with pytest.raises(ValueError, match="fewer than --clips"):
        mini.subset_step(mini.RecipeSettings(out_dir=tmp_path, clips=50))


@pytest.mark.integration
@pytest.mark.slow
def test_whole_recipe_on_desta_tiny_runs_and_resumes(tiny_corpus, tmp_path):
    """Every step for real on a tiny corpus: template targets, one training step, held-out evaluation, report."""
    (tmp_path / "corpus").symlink_to(tiny_corpus.out_dir)
    settings = mini.RecipeSettings(out_dir=tmp_path, base="desta-tiny", corpus_size=40, seed=7, clips=8, records=8,
                                   per_question=1, instructions=2, eval_batch=8)  # the corpus was built so
    lines = []
    report = mini.run_recipe(settings, ["template"], progress=False, echo=lines.append)
    assert [line.split(":")[0] for line in lines][:2] == ["[1/6] corpus", "[2/6] training subset"]
    text = report.read_text()
    for label in ("untrained adapter", "templated targets", "text-only backbone"):
        assert f"| {label}" in text
    adapter = tmp_path / "runs" / "template" / "final"
    assert json.loads((adapter / "config.json").read_text())["qformer_num_hidden_layers"] == 2
    asked = {p.name: p.read_text() for p in (tmp_path / "eval").glob("*.jsonl")}
    expected = len(mini.heldout_items(settings))
    assert expected >= 4 and len(asked) == 3 and all(len(v.splitlines()) == expected for v in asked.values())
    stamp = (adapter / "model.safetensors").stat().st_mtime_ns
    mini.run_recipe(settings, ["template"], progress=False, echo=lines.append)  # resumes: nothing is redone
    assert (adapter / "model.safetensors").stat().st_mtime_ns == stamp
    assert {p.name: p.read_text() for p in (tmp_path / "eval").glob("*.jsonl")} == asked


def test_exported_adapter_is_bfloat16_with_its_config(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    final = tmp_path / "final"
    final.mkdir()
    (final / "config.json").write_text('{"model_type": "desta25"}')
    weight = torch.randn(4, 3)
    save_file({"perception.connector.query": weight}, str(final / "model.safetensors"))
    out = mini.export_adapter(final, tmp_path / "adapter")
    exported = load_file(str(out / "model.safetensors"))["perception.connector.query"]
    assert exported.dtype == torch.bfloat16 and torch.equal(exported, weight.to(torch.bfloat16))
    assert (out / "config.json").read_text() == '{"model_type": "desta25"}'


def test_rerun_with_other_settings_is_refused_before_any_step(tmp_path):
    first = mini.RecipeSettings(out_dir=tmp_path, corpus_size=20, seed=0)
    resume_check.check_settings(tmp_path, {k: v for k, v in vars(first).items() if k != "out_dir"})
    lines = []
    with pytest.raises(ValueError, match="clips: 1100 -> 50"):
        mini.run_recipe(mini.RecipeSettings(out_dir=tmp_path, corpus_size=20, clips=50), echo=lines.append)
    assert lines == []  # refused before the corpus step
    result = CliRunner().invoke(app, ["mini", str(tmp_path), "--corpus-size", "30", "--seed", "1", "--records", "9"])
    assert result.exit_code == 1, result.output
    assert ("other settings (--corpus-size: 20 -> 30; --records: 768 -> 9; --seed: 0 -> 1); rerun with --corpus-size "
            "20 --records 768 --seed 0 to resume it, or start over in a new OUT_DIR") in " ".join(result.output.split())


def test_the_records_budget_of_a_folder_is_fixed_once_training_starts(tmp_path):
    resume_check.check_budget(tmp_path, 768, {"template": 900})
    resume_check.check_budget(tmp_path, 768, {"template": 900, "self": 800})
    with pytest.raises(ValueError, match="train on 768 records each.*gives 500; rerun with the earlier --source"):
        resume_check.check_budget(tmp_path, 500, {"template": 900, "other-llm": 500})


def test_a_corpus_built_with_other_settings_is_not_reused(tmp_path):
    from desta_audio.recipe.corpus import check_build_settings

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    check_build_settings(corpus, 40, 7)
    (corpus / "corpus.json").write_text("{}")
    mini.build_corpus_step(mini.RecipeSettings(out_dir=tmp_path, corpus_size=40, seed=7))  # the same: reused
    with pytest.raises(ValueError, match="give --corpus-size and --seed as built, or start over in a new OUT_DIR"):
        mini.build_corpus_step(mini.RecipeSettings(out_dir=tmp_path, corpus_size=3500, seed=0))


def test_a_refused_training_resume_speaks_of_the_recipe(tmp_path, monkeypatch):
    from desta_audio.train import recipe as train_recipe
    from desta_audio.train import resume
    from desta_audio.train.config import ConfigError

    class RefusingTrainer:
        def __init__(self, config):
            pass

        def setup(self):
            raise ConfigError(f"step-5 belongs to a run with other settings: optim.lr: 0.1 -> 0.2. Keep the run's "
                              f"settings to resume it, or use {resume.START_OVER}")  # fmt: skip

    monkeypatch.setattr(train_recipe, "Trainer", RefusingTrainer)
    with pytest.raises(ValueError) as refused:
        mini.train_step(mini.RecipeSettings(out_dir=tmp_path), "self", 8, progress=False)
    message = str(refused.value)
    assert message.startswith("training the self adapter: step-5 belongs to a run with other settings: optim.lr")
    assert "run.output_dir" not in message and "start over in a new OUT_DIR (or delete" in message


def test_help_names_every_output_and_the_default_sources():
    result = CliRunner().invoke(app, ["mini", "--help"], env={"COLUMNS": "250"})
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 0
    assert "report.json" in text and "OUT_DIR/adapter" in text and "(default: all three)" in text


def test_counts_that_cannot_work_are_refused_before_recipe_json_records_them(tmp_path):
    for option, value in (("--clips", "0"), ("--records", "-2"), ("--corpus-size", "0")):
        result = CliRunner().invoke(app, ["mini", str(tmp_path / "run"), option, value])
        assert result.exit_code == 1 and f"{option} must be at least 1, got {value}" in result.output, result.output
    assert not (tmp_path / "run").exists()  # nothing recorded: a corrected rerun is not refused


@needs_espeak
def test_more_clips_than_the_corpus_will_have_is_refused_before_recipe_json_records_them(tmp_path):
    result = CliRunner().invoke(app, ["mini", str(tmp_path / "run"), "--corpus-size", "12", "--clips", "1100"])
    assert result.exit_code == 1, result.output
    assert "--clips 1100 is more than the" in result.output and "lower --clips or raise --corpus-size" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("command", "kept"), [("corpus", "the clips written so far"),
                                               ("mini", "the clips, targets, checkpoints and answers written so far")])
def test_ctrl_c_is_one_line_that_says_how_to_resume(command, kept, tmp_path, monkeypatch):
    from desta_audio.recipe import corpus

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "build_corpus", interrupted)
    monkeypatch.setattr(mini, "run_recipe", interrupted)
    result = CliRunner().invoke(app, [command, str(tmp_path)])
    assert result.exit_code == 130 and "Traceback" not in result.output
    said = " ".join(result.output.split())
    assert f"interrupted: {kept} stay in {tmp_path}; rerun the same command to resume" in said


def test_an_interrupted_training_says_which_checkpoint_resumes(tmp_path, monkeypatch):
    from desta_audio.train.recipe import TrainingInterrupted

    def interrupted_training(*args, **kwargs):
        raise TrainingInterrupted("stopped by Ctrl-C after step 3; run the same command to resume from step-3")

    monkeypatch.setattr(mini, "run_recipe", interrupted_training)
    result = CliRunner().invoke(app, ["mini", str(tmp_path)])
    assert result.exit_code == 130 and "interrupted: stopped by Ctrl-C after step 3; run the same" in result.output


def test_transcripts_made_before_an_interruption_are_kept(tmp_path):
    class Prepared:
        def __init__(self, audio):
            self.transcript = f"words of {audio}"

    class Transcriber:
        def __init__(self, fail_on_call=None):
            self.asked, self.calls, self.fail_on_call = [], 0, fail_on_call

        def prepare_audios(self, refs):
            self.calls += 1
            if self.calls == self.fail_on_call:
                raise KeyboardInterrupt
            self.asked += [ref.audio for ref in refs]
            return [Prepared(ref.audio) for ref in refs]

    audios = [f"{k}.wav" for k in range(5)]
    path = tmp_path / "eval" / "transcripts.json"
    with pytest.raises(KeyboardInterrupt):
        mini.transcripts_for(Transcriber(fail_on_call=3), audios, path, batch=2)
    assert sorted(json.loads(path.read_text())) == audios[:4]
    resumed = Transcriber()
    assert mini.transcripts_for(resumed, audios, path, batch=2) == {a: f"words of {a}" for a in audios}
    assert resumed.asked == ["4.wav"]
