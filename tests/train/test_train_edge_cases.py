import json
import logging
from types import SimpleNamespace

import pytest
import torch

from desta_audio.train.config import ConfigError, build_config
from desta_audio.train.recipe import Trainer
from desta_audio.train.records import held_out, read_records
from tests.train.helpers import add_text_only_records, make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), 12)


def _fit(config):
    trainer = Trainer(config).setup()
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    return result, {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_validating_every_step_trains_the_same_weights_as_not_validating(tmp_path):
    # Multi-turn and text-only records in the held-out split, answered by generation; adapter and LoRA dropout on.
    records = add_text_only_records(make_dataset(tmp_path / "data", 10, multi_turn_every=2), 3)
    sections = dict(model={"overrides": {"qformer_dropout": 0.1}}, lora={"enabled": True, "dropout": 0.1},
                    data={"val_fraction": 0.3},
                    validation={"generate_samples": 8, "max_new_tokens": 3})
    plain, plain_weights = _fit(build_config(tiny_config(tmp_path / "a", records, run={"max_steps": 3}, **sections)))
    validated, weights = _fit(build_config(tiny_config(tmp_path / "b", records, run={"max_steps": 3, "val_every": 1},
                                                       **sections)))
    assert len(validated.validation) == 3 and all("accuracy" in v for v in validated.validation)
    answered = [r for r in read_records(records) if held_out(r.key, 0.3)]
    assert len(answered) <= 8 and any(len(r.messages) > 2 for r in answered) and any(not r.audios for r in answered)
    assert [s.loss for s in validated.steps] == [s.loss for s in plain.steps]
    assert all(torch.equal(plain_weights[name], weights[name]) for name in plain_weights)


def test_an_empty_target_is_matched_by_an_empty_answer_only(tmp_path, data, monkeypatch):
    validation = tmp_path / "validation.jsonl"
    targets = ["", "?", "a dog barks", ""]
    validation.write_text("".join(json.dumps({"key": f"v{i}", "messages": [
        {"role": "user", "content": "say it"}, {"role": "assistant", "content": target}]}) + "\n"
        for i, target in enumerate(targets)))
    config = build_config(tiny_config(tmp_path, data, data={"validation": str(validation)},
                                      validation={"generate_samples": 4}))
    trainer = Trainer(config).setup()
    replies = ["", "...", "I think a dog barks.", "a dog barks"]  # right, right, right, wrong
    monkeypatch.setattr(trainer.model, "chat", lambda conversations, **_: [SimpleNamespace(text=t) for t in replies])
    try:
        assert trainer._generation_accuracy() == 0.75
    finally:
        trainer.close()


def test_a_fraction_that_holds_out_no_record_says_validation_is_skipped(tmp_path, data, caplog):
    config = build_config(tiny_config(tmp_path, data, data={"val_fraction": 0.01}))
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config).setup()
    trainer.close()
    assert not trainer.val_records
    assert "data.val_fraction=0.01 held out none of the 12 records: no validation" in caplog.text


def test_epochs_count_every_batch_when_accumulating_gradients(tmp_path, data):
    # 12 single-record batches per epoch, 5 per step: 3 steps cover the epoch (2 would leave 2 records out).
    for epochs, steps in ((1, 3), (2, 5)):
        config = build_config(tiny_config(tmp_path / str(epochs), data, batching={"max_size": 1},
                                          optim={"grad_accum": 5}, run={"max_steps": None, "epochs": epochs}))
        trainer = Trainer(config).setup()
        trainer.close()
        assert len(trainer.sampler.batches(0)) == 12
        assert trainer.total_steps == steps


def test_encoder_weights_picked_by_freeze_trainable_train_and_refuse_the_cache(tmp_path, data):
    layer = r"whisper\.model\.encoder\.layers\.0\."
    cached = build_config(tiny_config(tmp_path / "cached", data, freeze={"trainable": [layer]},
                                      cache={"enabled": True}))
    with pytest.raises(ConfigError, match="freeze.trainable makes Whisper encoder weights trainable.*"
                                          "cache.enabled=false"):
        Trainer(cached).setup()
    config = build_config(tiny_config(tmp_path / "raw", data, freeze={"trainable": [layer]}, run={"max_steps": 2}))
    trainer = Trainer(config).setup()
    picked = {name: p.detach().clone() for name, p in trainer.model.named_parameters()
              if p.requires_grad and "encoder.layers.0." in name}
    try:
        trainer.fit()
    finally:
        trainer.close()
    now = dict(trainer.model.named_parameters())
    assert picked and all(not torch.equal(picked[name], now[name]) for name in picked)  # a gradient reached them


def test_a_warmup_longer_than_the_run_is_pointed_out(tmp_path, data, caplog):
    config = build_config(tiny_config(tmp_path, data, optim={"warmup_steps": 10}, run={"max_steps": 4}))
    with caplog.at_level(logging.WARNING):
        Trainer(config).setup().close()
    assert "optim.warmup_steps=10 is more than the run's 4 steps" in caplog.text
