import math

import pytest
import torch

from desta_audio.processing import IGNORE_INDEX
from desta_audio.train.config import ConfigError, build_config
from desta_audio.train.recipe import Trainer, TrainingError, token_loss, train
from desta_audio.train.records import read_records
from desta_audio.train.trainable import configure_trainable
from tests.tiny import tiny_model
from tests.train.helpers import add_text_only_records, make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), 12)


def test_loss_covers_every_assistant_turn_and_its_end_token_only(data):
    model = tiny_model()
    record = next(r for r in read_records(data) if len(r.messages) == 4)  # two assistant turns
    batch, audio_tokens, _ = model.build_batch([record.messages], for_training=True)
    labelled = [t for t in batch.labels[0].tolist() if t != IGNORE_INDEX]
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = model.tokenizer.decode(labelled).split("<|im_end|>")
    assert labelled.count(end) == 2 and labelled[-1] == end
    assert [t.strip() for t in texts[:2]] == [record.messages[1]["content"], record.messages[3]["content"]]
    with torch.no_grad():
        total, count = token_loss(model, batch, audio_tokens)
        reference = float(model.forward(batch, audio_tokens).loss)
    # The labelled-positions-only head gives the HF loss exactly.
    assert count == len(labelled)
    assert float(total) / count == pytest.approx(reference, rel=1e-5)


def test_trainable_parameters_follow_lora_encoder_and_regex_settings(tmp_path, data):
    def names(**sections):
        config = build_config(tiny_config(tmp_path, data, **sections))
        model = tiny_model(**({"use_lora": True} if config.lora.enabled else {}))
        return configure_trainable(model, config)

    default = names()
    assert default and all(n.startswith("perception.connector.") for n in default)
    with_lora = names(lora={"enabled": True})
    assert any("lora_" in n and n.startswith("llm_model.") for n in with_lora)
    encoder_lora = names(encoder={"mode": "lora"}, cache={"enabled": False})
    assert any(n.startswith("perception.whisper.model.encoder.") and "lora_" in n for n in encoder_lora)
    full = names(encoder={"mode": "full"}, freeze={"frozen": [r"encoder\.layers\.[0-2]\."]})
    assert any("encoder.layers.3." in n for n in full) and not any("encoder.layers.0." in n for n in full)
    assert names(freeze={"trainable": [r"llm_model\.lm_head"]})[-1].startswith("llm_model.lm_head")
    with pytest.raises(ConfigError, match="no parameter is trainable"):
        names(freeze={"frozen": ["."]})


def test_parameters_no_gradient_reaches_are_never_made_trainable(tmp_path, data, caplog):
    caplog.set_level("INFO", logger="desta_audio.train.trainable")

    def names(**sections):
        config = build_config(tiny_config(tmp_path, data, cache={"enabled": False}, **sections))
        return configure_trainable(tiny_model(**config.model.overrides), config)

    # Taps end before the encoder's final LayerNorm; the decoder only transcribes.
    full = names(encoder={"mode": "full"})
    assert any(".encoder.layers.3." in n for n in full)
    assert not any(".encoder.layer_norm." in n or ".decoder." in n for n in full)
    assert "perception.whisper.model.encoder.layer_norm (2 tensors)" in caplog.text
    asked = names(freeze={"trainable": [r"^perception\.whisper\."]})
    assert not any(".decoder." in n or ".layer_norm." in n for n in asked) and "model.decoder (" in caplog.text
    # Tapping layers 0 and 1 only: layers 2 and 3 cannot matter either.
    partial = names(encoder={"mode": "full"}, model={"overrides": {"target_layer_ids": [0, 1]}})
    assert any(".encoder.layers.1." in n for n in partial) and not any(".encoder.layers.2." in n for n in partial)


def test_training_lowers_the_loss_and_writes_metrics_plot_and_adapter(tmp_path, data):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 12, "val_every": 6},
                                      data={"val_fraction": 0.2},
                                      validation={"generate_samples": 2, "max_new_tokens": 4},
                                      optim={"lr": 3e-3, "warmup_steps": 1}))
    result = train(config)
    losses = [s.loss for s in result.steps]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert [v["step"] for v in result.validation] == [6, 12] and 0.0 <= result.validation[-1]["accuracy"] <= 1.0
    run = tmp_path / "run"
    csv = (run / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("step,split") and sum(",validation," in line for line in csv) == 2
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # The final adapter is in the released layout and loads strictly into a fresh model.
    from safetensors.torch import load_file

    state = load_file(str(result.final_adapter / "model.safetensors"))
    assert state and all(k.startswith("perception.connector.") for k in state)
    fresh = tiny_model(seed=5)
    fresh.load_adapter_state_dict(state)
    assert torch.equal(fresh.connector.layer_weights, state["perception.connector.layer_weights"])


def _losses(config):
    return [round(s.loss, 12) for s in train(config).steps]


def test_a_stopped_run_resumes_step_for_step(tmp_path, data):
    sections = dict(run={"max_steps": 7, "save_every": 2}, optim={"grad_accum": 2, "warmup_steps": 2},
                    model={"overrides": {"qformer_dropout": 0.1}}, lora={"enabled": True, "dropout": 0.1},
                    cache={"enabled": True})
    reference = _losses(build_config(tiny_config(tmp_path / "a", data, **sections)))
    interrupted = build_config(tiny_config(tmp_path / "b", data, **sections))
    # Stop after step 5: checkpoints exist for steps 2 and 4 (and 5, written when stopping). Drop step 5's to
    # emulate a kill after the last periodic checkpoint: step 5 is then recomputed.
    first = _losses(interrupted.model_copy(update={"run": interrupted.run.model_copy(update={"stop_after_steps": 5})}))
    import shutil

    shutil.rmtree(tmp_path / "b" / "run" / "checkpoints" / "step-0000005")
    second = _losses(interrupted)
    assert first == reference[:5]
    assert first[:4] + second == reference  # dropout and LoRA-dropout RNG, data order and optimizer all restored
    steps = [line.split(",")[0] for line in (tmp_path / "b" / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(1, 8)]


def test_non_finite_loss_stops_without_touching_the_weights(tmp_path, data, monkeypatch):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 5, "max_bad_steps": 2}))
    trainer = Trainer(config).setup()
    before = {k: v.clone() for k, v in trainer.model.adapter_state_dict().items()}
    import desta_audio.train.recipe as recipe

    real = recipe.token_loss

    def poisoned(model, batch, audio_tokens):
        total, count = real(model, batch, audio_tokens)
        return total * float("nan"), count

    monkeypatch.setattr(recipe, "token_loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite.*left untouched"):
        trainer.fit()
    after = trainer.model.adapter_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trainer.close()


def test_desta_train_command_runs_and_resumes(tmp_path, data):
    import yaml
    from typer.testing import CliRunner

    from desta_audio.cli import _register_subcommands, app

    _register_subcommands()
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, data, run={"max_steps": 3})))
    first = CliRunner().invoke(app, ["train", str(config), "run.max_steps=2"])
    assert first.exit_code == 0, first.output
    assert "adapter:" in first.output and (tmp_path / "run" / "final" / "model.safetensors").exists()
    longer = CliRunner().invoke(app, ["train", str(config)])  # resumes at step 2 and runs step 3 only
    assert longer.exit_code == 0, longer.output
    assert "last step 3" in longer.output
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_starting_over_moves_the_earlier_run_aside(tmp_path, data):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 2, "save_every": 1}))
    first = _losses(config)
    again = config.model_copy(update={"run": config.run.model_copy(update={"resume": "never"})})
    assert _losses(again) == first  # from step 1, not resumed
    run = tmp_path / "run"
    earlier = run / "earlier-runs" / "1"
    assert (earlier / "checkpoints" / "step-0000002").is_dir() and (earlier / "final").is_dir()  # nothing deleted
    assert len((earlier / "metrics.csv").read_text().splitlines()) == len((run / "metrics.csv").read_text().splitlines())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]


def test_resuming_with_other_settings_is_refused_and_records_nothing(tmp_path, data):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 2, "save_every": 1}))
    _losses(config)
    saved = (tmp_path / "run" / "train_config.yaml").read_text()
    changed = build_config(tiny_config(tmp_path, data, run={"max_steps": 2, "save_every": 1},
                                       optim={"lr": 5e-3}, lora={"enabled": True}))
    with pytest.raises(ConfigError, match=r"other settings.*lora.enabled: False -> True; optim.lr: 0.001 -> 0.005"
                                          r".*run.output_dir, or run.resume=never"):
        Trainer(changed).setup()
    assert (tmp_path / "run" / "train_config.yaml").read_text() == saved


def test_resuming_a_longer_run_records_what_changed(tmp_path, data):
    config = build_config(tiny_config(tmp_path, data, run={"max_steps": 2, "save_every": 1}))
    _losses(config)
    longer = config.model_copy(update={"run": config.run.model_copy(update={"max_steps": 3, "log_every": 2})})
    assert [s.step for s in train(longer).steps] == [3]
    run = tmp_path / "run"
    assert "max_steps: 3" in (run / "train_config.yaml").read_text()
    assert (run / "config_changes.log").read_text() == ("from step 2: run.log_every: 1 -> 2\n"
                                                        "from step 2: run.max_steps: 2 -> 3\n")


def test_resuming_with_other_data_says_how_to_start_over(tmp_path, data):
    records = tmp_path / "records.jsonl"
    records.write_text(data.read_text())
    config = build_config(tiny_config(tmp_path, records, run={"max_steps": 2, "save_every": 1},
                                      data={"audio_root": str(data.parent)}))
    _losses(config)
    fewer = config.model_copy(update={"data": config.data.model_copy(update={"max_records": 5})})
    with pytest.raises(ConfigError, match=r"data.max_records: None -> 5"):
        Trainer(fewer).setup()
    # The same settings over a file that has changed: found when the sampler's state is restored.
    records.write_text("".join(data.read_text().splitlines(keepends=True)[:6]))
    with pytest.raises(ConfigError, match=r"cannot resume from .*step-0000002: the checkpoint's sampler saw \d+ "
                                          r"records.*use a new run.output_dir, or run.resume=never"):
        Trainer(config).setup()


def test_bf16_mixed_precision_trains_and_validates_on_cpu(tmp_path, data):
    # The mel features are computed outside autocast: under it the extractor's numpy step met bfloat16 tensors.
    raw_audio = build_config(tiny_config(tmp_path / "raw", data, run={"max_steps": 1, "precision": "bf16"}))
    assert math.isfinite(train(raw_audio).steps[0].loss)
    cached = build_config(tiny_config(tmp_path / "cached", data, run={"max_steps": 1, "precision": "bf16",
                                                                      "val_every": 1},
                                      data={"val_fraction": 0.25}, cache={"enabled": True},
                                      validation={"generate_samples": 2, "max_new_tokens": 2}))
    [metrics] = train(cached).validation
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_records_without_audio_train_alone_and_beside_audio(tmp_path):
    records = add_text_only_records(make_dataset(tmp_path / "data", 6), 6)
    config = build_config(tiny_config(tmp_path, records, run={"max_steps": 3, "val_every": 3},
                                      data={"val_fraction": 0.3},
                                      validation={"generate_samples": 4, "max_new_tokens": 2}))
    trainer = Trainer(config).setup()
    with_audio = [i for i, r in enumerate(trainer.train_records) if r.audios]
    text_only = [i for i, r in enumerate(trainer.train_records) if not r.audios]
    for indices in (text_only[:2], [text_only[0], with_audio[0]]):
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, count = trainer.loss_module("train", indices)
        loss.backward()
        assert math.isfinite(float(loss.detach())) and count > 0
        # Every trainable weight has a gradient (zero for the adapter without audio), as DDP requires.
        assert all(p.grad is not None for p in trainer.parameters)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    assert all(math.isfinite(s.loss) for s in result.steps) and "accuracy" in result.validation[-1]
    assert any(not r.audios for r in trainer.val_records[:4])  # answered by generation without any audio
