import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from desta_audio.audio import WINDOW_SAMPLES
from desta_audio.modeling import ADAPTER_PREFIX, CheckpointError, read_config
from desta_audio.processing import ConversationError
from tests.conftest import tone
from tests.tiny import tiny_model


def ask(content, *audios, text=None):
    return [{"role": "user", "content": content, "audios": [{"audio": a, "text": text} for a in audios]}]


def test_batched_greedy_equals_batch_of_one(tiny):
    conversations = [
        ask("<|AUDIO|>\nwhat did the speaker say", tone(1.0), text="hello world"),
        ask("compare <|AUDIO|> with <|AUDIO|>", tone(3.5, 220), tone(0.4, 880), text="yes"),
        [{"role": "user", "content": "describe the sound in one sentence"}],  # text only
        ask("<|AUDIO|>", tone(31.0, 330), text="the quick brown fox"),
    ]
    batched = tiny.chat(conversations, max_new_tokens=12)
    single = [tiny.chat([c], max_new_tokens=12)[0] for c in conversations]
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids
    assert len({tuple(r.token_ids) for r in batched}) > 1  # the audio actually changes the answers


def test_inference_is_deterministic_despite_dropout(tiny):
    tiny.train()  # chat() must switch to eval mode itself
    conversation = ask("<|AUDIO|> describe", tone(2.0), text="hello")
    first = tiny.chat([conversation], max_new_tokens=8)[0].token_ids
    assert tiny.chat([conversation], max_new_tokens=8)[0].token_ids == first
    assert not tiny.training


@pytest.mark.parametrize("seconds,windows", [(2.0, 1), (31.0, 2), (95.0, 4)])
def test_long_audio_gets_tokens_for_every_window(tiny, seconds, windows):
    batch, tokens, _ = tiny.build_batch([ask("<|AUDIO|>", tone(seconds), text="x")])
    assert tokens.shape[0] == windows * tiny.config.prompt_size
    assert int(batch.audio_mask.sum()) == windows * tiny.config.prompt_size


def test_later_windows_change_the_tokens(tiny):
    audio = tone(40.0, 220)
    altered = audio.copy()
    altered[WINDOW_SAMPLES:] = tone(10.0, 1500)
    a = tiny.build_batch([ask("<|AUDIO|>", audio, text="x")])[1]
    b = tiny.build_batch([ask("<|AUDIO|>", altered, text="x")])[1]
    size = tiny.config.prompt_size
    torch.testing.assert_close(a[:size], b[:size])
    assert not torch.allclose(a[size:], b[size:])


def test_caller_transcript_wins_and_no_asr_gives_blank(tiny):
    reply = tiny.chat([ask("<|AUDIO|>", tone(1.0), text="my own words")], max_new_tokens=2)[0]
    assert reply.transcripts == ["my own words"]
    reply = tiny.chat([ask("<|AUDIO|>", tone(1.0))], max_new_tokens=2)[0]
    assert reply.transcripts == [" "]


def test_chat_rejects_a_bare_conversation(tiny):
    with pytest.raises(TypeError, match="list of conversations"):
        tiny.chat(ask("<|AUDIO|>", tone(1.0)))


def test_training_loss_reaches_the_connector_only(tiny):
    conversation = ask("<|AUDIO|> what", tone(1.0), text="hi") + [{"role": "assistant", "content": "yes"}]
    tiny.train()
    batch, tokens, _ = tiny.build_batch([conversation], for_training=True)
    loss = tiny.forward(batch, tokens).loss
    loss.backward()
    tiny.eval()
    grads = {n for n, p in tiny.named_parameters() if p.grad is not None}
    tiny.zero_grad(set_to_none=True)
    assert grads and all(n.startswith(ADAPTER_PREFIX) for n in grads)
    assert torch.isfinite(loss)


def _official_layout_checkpoint(model, directory):
    """Write a checkpoint the way the release does: its config fields + perception.connector.* keys."""
    directory.mkdir()
    state = {k: torch.randn_like(v) for k, v in model.adapter_state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    config = {"model_type": "desta25", "llm_model_id": "tiny-llm", "encoder_model_id": "tiny-whisper",
              "connector_mode": "qformer_1", "qformer_num_hidden_layers": 2, "prompt_size": 8, "use_lora": False,
              "audio_locator": "<|AUDIO|>", "placeholder_token": "<|reserved_special_token_87|>",
              "llm_config": {"hidden_size": 48}, "encoder_config": {"d_model": 32},
              "qformer_intermediate_size": 64, "transformers_version": "4.49.0"}
    (directory / "config.json").write_text(json.dumps(config))
    return state


def test_official_checkpoint_loads_strictly_and_round_trips(tmp_path):
    model = tiny_model()
    state = _official_layout_checkpoint(model, tmp_path / "official")
    config = read_config(tmp_path / "official")
    assert config.qformer_num_hidden_layers == 2 and config.prompt_size == 8
    model.load_adapter_state_dict(load_file(str(tmp_path / "official" / "model.safetensors")))
    for name, tensor in model.adapter_state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    conversation = ask("<|AUDIO|> what", tone(2.0), text="hello")
    before = model.chat([conversation], max_new_tokens=6)[0].token_ids
    reloaded_tokens = model.build_batch([conversation])[1]

    model.save_pretrained(tmp_path / "ours")
    saved = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert set(saved) == set(state) and all(k.startswith(ADAPTER_PREFIX) for k in saved)
    fresh = tiny_model()  # same backbones, adapter scrambled before loading
    with torch.no_grad():
        for parameter in fresh.adapter_state_dict().values():
            parameter.normal_()
    fresh.load_adapter_state_dict(saved)
    assert fresh.chat([conversation], max_new_tokens=6)[0].token_ids == before
    torch.testing.assert_close(fresh.build_batch([conversation])[1], reloaded_tokens)
    assert read_config(tmp_path / "ours").prompt_size == 8


def test_strict_loading_names_what_is_wrong(tiny):
    state = {k: v.clone() for k, v in tiny.adapter_state_dict().items()}
    missing = dict(state)
    missing.pop(ADAPTER_PREFIX + "layer_weights")
    with pytest.raises(CheckpointError, match="missing .*layer_weights"):
        tiny.load_adapter_state_dict(missing)
    extra = dict(state, **{ADAPTER_PREFIX + "qformer.layer.5.output.dense.bias": torch.zeros(32)})
    with pytest.raises(CheckpointError, match="unexpected .*layer.5"):
        tiny.load_adapter_state_dict(extra)
    wrong = dict(state, **{ADAPTER_PREFIX + "layer_weights": torch.zeros(64, 4)})
    with pytest.raises(CheckpointError, match="shape mismatch .*layer_weights"):
        tiny.load_adapter_state_dict(wrong)


def test_reading_a_non_desta_config_fails(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not a DeSTA model"):
        read_config(tmp_path)


def test_audio_array_errors_surface_clearly(tiny):
    from desta_audio.audio import AudioError

    with pytest.raises(AudioError, match="NaN"):
        tiny.chat([ask("<|AUDIO|>", np.full(1600, np.nan, np.float32), text="x")])


def test_stop_strings_end_their_row_early_and_leave_the_others_alone(tiny):
    from desta_audio.serve.stop_strings import apply_stop
    from tests.serve.helpers import stop_string_in

    conversations = [
        ask("<|AUDIO|>\nwhat did the speaker say", tone(1.0), text="hello world"),
        [{"role": "user", "content": "describe the sound in one sentence"}],
        ask("<|AUDIO|> is the speaker happy", tone(0.5, 880), text="yes"),
    ]
    plain = tiny.chat(conversations, max_new_tokens=24)
    stop = stop_string_in(plain[0].text)
    never = "\x00never\x00"  # a stop string that does not occur: that row runs to the end as before
    stopped = tiny.chat(conversations, max_new_tokens=24, stop_strings=[[stop], [], [never]])
    assert len(stopped[0].token_ids) < len(plain[0].token_ids)
    assert stopped[0].token_ids == plain[0].token_ids[:len(stopped[0].token_ids)]
    cut, found = apply_stop(stopped[0].text, [stop])
    assert found and (cut, found) == apply_stop(plain[0].text, [stop])
    assert [r.token_ids for r in stopped[1:]] == [r.token_ids for r in plain[1:]]
    assert [r.text for r in stopped[1:]] == [r.text for r in plain[1:]]
    with pytest.raises(ValueError, match="one list of strings per conversation"):
        tiny.chat(conversations, max_new_tokens=2, stop_strings=[stop, "", never])


def _stop_step(tokenizer, ids, stops):
    """Feed `ids` to RowStopStrings one generation step at a time; the number of tokens when it stops, or None."""
    from desta_audio.streaming import RowStopStrings

    criteria = RowStopStrings(tokenizer, [stops], {tokenizer.pad_token_id, tokenizer.eos_token_id})
    for step in range(1, len(ids) + 1):
        if criteria(torch.tensor([ids[:step]]), None).item():
            return step
    return None


def _streamed_cut(tokenizer, ids, stops):
    """What the API streams for an answer of `ids` with `stops`: the streamer's deltas through the stop filter."""
    from desta_audio.serve.stop_strings import StopStringFilter
    from desta_audio.streaming import BatchedTextStreamer

    deltas = []
    streamer = BatchedTextStreamer(tokenizer, [deltas.append], {tokenizer.pad_token_id, tokenizer.eos_token_id})
    streamer.put(torch.zeros((1, 0), dtype=torch.long))  # the (empty) prompt
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    stop_filter = StopStringFilter(stops)
    sent = ""
    for delta in deltas:
        sent += stop_filter.feed(delta)
        if stop_filter.stopped:
            return sent, True
    return sent + stop_filter.flush(), False


@pytest.mark.parametrize(
    ("text", "stops", "stop_after"),
    [
        ("hello world yes", ["wor"], "hello wor"),
        ("\nhello\nworld", ["\n"], "\nhello\nw"),  # leading whitespace is stripped; "\n" counts once text follows
        ("xaba yes", ["b", "aba"], "xaba"),  # "aba" starts before "b": wait until it is settled
        ("abжa", ["b", "abж"], "abж"),  # "ж" takes two byte tokens: its first one does not settle "abж" yet
        ("hi\n" + " \t" * 12 + "x", ["\n"], "hi\n" + " \t" * 12 + "x"),  # a long wait for text after "\n"
    ],
)
def test_stop_criterion_waits_until_the_cut_is_settled(tiny, text, stops, stop_after):
    tokenizer = tiny.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    step = _stop_step(tokenizer, ids, stops)
    assert step is not None and tokenizer.decode(ids[:step]).startswith(stop_after)
    assert not tokenizer.decode(ids[:step - 1]).startswith(stop_after)


def test_no_early_stop_with_a_tokenizer_that_rewrites_earlier_text(tiny):
    import copy

    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.clean_up_tokenization_spaces = True  # " ." becomes "." once the "." arrives
    tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    ids = tokenizer.encode("hello world yes", add_special_tokens=False)
    assert _stop_step(tiny.tokenizer, ids, ["wor"]) is not None
    assert _stop_step(tokenizer, ids, ["wor"]) is None


def test_stopping_early_never_changes_the_cut_text_or_the_stream(tiny):
    import random

    from desta_audio.serve.stop_strings import apply_stop

    tokenizer = tiny.tokenizer
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "é", "你", "ж"]  # "ж" is not in the tiny vocabulary: two byte tokens
    stopped_early = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        ids = tokenizer.encode(text, add_special_tokens=False)
        step = _stop_step(tokenizer, ids, stops)
        if step is None:
            continue
        stopped_early += step < len(ids)
        whole, prefix = tokenizer.decode(ids).strip(), tokenizer.decode(ids[:step]).strip()
        assert apply_stop(prefix, stops) == apply_stop(whole, stops), (text, stops, step)
        assert apply_stop(prefix, stops)[1], (text, stops, step)
        assert _streamed_cut(tokenizer, ids[:step], stops) == _streamed_cut(tokenizer, ids, stops), (text, stops)
    assert stopped_early > 50


def test_vocabulary_head_gets_its_rows_in_standard_layout(tiny):
    """generate() keeps only the last prompt position; the head must see those rows as a plain (rows, 1, d) block
    (a strided view makes torch copy the whole head weight per row), and the logits must not change."""
    seen = []
    head = tiny.llm_model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append((args[0].shape, args[0].stride())))
    embeds = torch.randn(3, 7, head.in_features)
    try:
        with torch.inference_mode():
            kept = tiny.llm_model(inputs_embeds=embeds, logits_to_keep=1).logits
            full = tiny.llm_model(inputs_embeds=embeds).logits
    finally:
        handle.remove()
    d = head.in_features
    assert seen[0] == (torch.Size([3, 1, d]), (d, d, 1))  # not the view's (7 * d, d, 1)
    assert seen[1] == (torch.Size([3, 7, d]), (7 * d, d, 1))  # full hidden states pass through untouched
    torch.testing.assert_close(kept[:, -1], full[:, -1])


def stub_encoder(model, monkeypatch):
    """Skip the encoder pass (seconds per 30 s window): these tests are about which audio gets through."""
    hidden = model.llm_model.config.hidden_size
    width = model.perception.whisper.config.d_model

    def encode(windows):
        return (torch.zeros(len(windows), model.config.prompt_size, hidden),
                torch.zeros(len(windows), 1500, width))

    monkeypatch.setattr(model, "encode_audio_windows", encode)


def test_the_models_audio_limit_is_the_one_applied(tiny, monkeypatch):
    from desta_audio.audio import AudioError

    stub_encoder(tiny, monkeypatch)
    monkeypatch.setattr(tiny, "max_audio_seconds", 1200)  # the default; a server built on this shared model may differ
    long_clip = np.zeros(21 * 60 * 16_000, np.float32)  # past the 20-minute default
    with pytest.raises(AudioError, match=r"audio 1 \(array\): 1260.0 s is longer than the 1200 s limit"):
        tiny.build_batch([ask("<|AUDIO|>", long_clip, text="x")])
    monkeypatch.setattr(tiny, "max_audio_seconds", 2000)
    tokens = tiny.build_batch([ask("<|AUDIO|>", long_clip, text="x")])[1]
    assert tokens.shape[0] == 42 * tiny.config.prompt_size
    monkeypatch.setattr(tiny, "max_audio_seconds", 2)
    with pytest.raises(AudioError, match="longer than the 2 s limit"):
        tiny.build_batch([ask("<|AUDIO|>", tone(3.0), text="x")])


def test_an_arrays_sampling_rate_is_honoured(tiny):
    from desta_audio.audio import load_audio

    clip = tone(1.0, rate=22_050)
    audio = {"audio": clip, "text": "x", "sampling_rate": 22_050}
    given = [{"role": "user", "content": "<|AUDIO|>", "audios": [audio]}]
    resampled = ask("<|AUDIO|>", load_audio(clip, 22_050), text="x")
    torch.testing.assert_close(tiny.build_batch([given])[1], tiny.build_batch([resampled])[1])


@pytest.mark.parametrize("settings,message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"do_sample": True, "temperature": -1.0}, "temperature"),
    ({"do_sample": True, "temperature": 0.0}, "temperature"),
    ({"do_sample": True, "top_p": 2.0}, "top_p"),
    ({"do_sample": True, "temperature": "hot"}, "temperature"),
    ({"do_sample": True, "top_p": "0.9"}, "top_p"),
])
def test_generation_settings_are_checked_before_any_work(tiny, monkeypatch, settings, message):
    monkeypatch.setattr(tiny, "build_batch", lambda *a, **k: pytest.fail("audio prepared for a doomed request"))
    with pytest.raises(ValueError, match=message):
        tiny.chat([ask("<|AUDIO|>", tone(1.0), text="x")], **settings)


def test_silent_windows_of_a_long_clip_get_no_transcript(tiny, monkeypatch, tmp_path):
    """Whisper makes up words ("you") for a silent window, so only windows where VAD hears speech are
    transcribed; every window still gives its audio tokens."""
    import shutil
    import subprocess

    from desta_audio.audio import load_audio
    from desta_audio.vad import load_vad

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Purple elephant, seven."], check=True)
    clip = np.concatenate([np.zeros(WINDOW_SAMPLES + 4_800, np.float32), load_audio(path)])  # 30.3 s of silence
    stub_encoder(tiny, monkeypatch)
    transcribed: list[int] = []

    def transcribe(states):
        transcribed.append(len(states))
        return [f"window-{i}" for i in range(len(states))]

    monkeypatch.setattr(tiny, "vad", load_vad())
    monkeypatch.setattr(tiny, "use_asr", True)
    monkeypatch.setattr(tiny, "transcribe_windows", transcribe)
    batch, tokens, transcripts = tiny.build_batch([ask("<|AUDIO|><|AUDIO|>", clip, np.zeros(16_000, np.float32))])
    assert transcribed == [1]  # the window with the words; neither silent window, nor the silent clip
    assert transcripts == [["window-0", " "]]
    assert tokens.shape[0] == 3 * tiny.config.prompt_size


@pytest.mark.parametrize("conversations,error,message", [
    ("What is said?", TypeError, "list of conversations"),
    (["What is said?"], TypeError, "list of conversations"),
    ([[]], ConversationError, r"conversation 0 has no user message to answer \(roles: \[\]\)"),
    ([[{"role": "user", "content": "hi"}], [{"role": "system", "content": "Be brief."}]], ConversationError,
     "conversation 1 has no user message"),
    ([[{"role": "usr", "content": "hi"}]], ConversationError, r"no user message to answer \(roles: \['usr'\]\)"),
])
def test_malformed_batches_are_refused_before_any_work(tiny, monkeypatch, conversations, error, message):
    monkeypatch.setattr(tiny, "build_batch", lambda *a, **k: pytest.fail("audio prepared for a doomed request"))
    with pytest.raises(error, match=message):
        tiny.chat(conversations, max_new_tokens=2)


def test_unknown_generation_settings_are_refused_before_any_work(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "build_batch", lambda *a, **k: pytest.fail("audio prepared for a doomed request"))
    with pytest.raises(TypeError, match=r"unknown generation setting\(s\) \['temprature'\]"):
        tiny.chat([ask("<|AUDIO|>", tone(1.0), text="x")], max_new_tokens=2, temprature=0.3)


def test_generate_settings_reach_generate_also_when_greedy(tiny):
    conversation = ask("<|AUDIO|>", tone(1.0), text="x")
    expected = tiny.chat([conversation], max_new_tokens=3)[0].token_ids
    assert tiny.chat([conversation], max_new_tokens=3, top_k=5)[0].token_ids == expected  # no effect when greedy
    assert len(tiny.chat([conversation], max_new_tokens=3, min_new_tokens=3)[0].token_ids) == 3


@pytest.mark.parametrize("audio,message", [
    (None, "audio 1: expected a file path or a numpy array, got NoneType"),
    (tone(1.0).tolist(), r"got list \(use np.asarray"),
    (torch.zeros(16_000), r"got Tensor \(use tensor.numpy\(\)\)"),
])
def test_audio_of_the_wrong_type_is_named(tiny, audio, message):
    from desta_audio.audio import AudioError

    with pytest.raises(AudioError, match=message):
        tiny.chat([ask("<|AUDIO|>", audio, text="x")], max_new_tokens=2)


def test_ask_wants_a_list_of_audios(tiny):
    with pytest.raises(TypeError, match="ask\\(\\) takes a list of audios"):
        tiny.ask("clip.wav", "What is said?")
    with pytest.raises(TypeError, match="ask\\(\\) takes a list of audios"):
        tiny.ask(tone(1.0), "What is said?")


def test_a_prompt_past_the_llm_context_is_refused_before_generating(tiny, monkeypatch):
    from desta_audio.processing import ContextLengthError

    conversation = ask("<|AUDIO|>\nwhat is said", tone(31.0), text="hello")  # two windows of audio tokens
    length = int(tiny.build_batch([conversation])[0].attention_mask.sum())
    assert length > 2 * tiny.config.prompt_size
    monkeypatch.setattr(tiny.llm_model.config, "max_position_embeddings", length + 3)
    monkeypatch.setattr(tiny.llm_model, "generate", lambda **_: pytest.fail("generate() ran past the context"))
    with pytest.raises(ContextLengthError, match=f"its prompt is {length} tokens .* context of {length + 3}"):
        tiny.chat([[{"role": "user", "content": "hi"}], conversation], max_new_tokens=4)
    monkeypatch.undo()
    reply = tiny.chat([conversation], max_new_tokens=3)[0]
    assert reply.prompt_tokens == length  # the clips' audio tokens and transcript counted


def test_a_batch_item_that_is_no_conversation_is_named(tiny):
    with pytest.raises(TypeError, match="item 1 is ellipsis"):
        tiny.chat([ask("hi"), ...])
