"""Token streaming: per-row deltas of a batched generate join to exactly chat()'s answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desta_audio.processing import end_of_turn_ids
from desta_audio.streaming import BatchedTextStreamer
from tests.tiny import tiny_tokenizer

QUESTIONS = ["what did the speaker say", "describe the sound", "hello world 0123456789", "système français 你好"]


def conversations(count: int) -> list[list[dict]]:
    out = []
    for i in range(count):
        message = {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}
        if i % 2:
            tone = (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * np.arange(8000) / 16000)).astype(np.float32)
            message = {"role": "user", "content": "<|AUDIO|>\n" + message["content"],
                       "audios": [{"audio": tone, "text": "hello world" if i % 3 else None}]}
        out.append([message])
    return out


def collect(count: int) -> tuple[list[list[str]], list]:
    deltas: list[list[str]] = [[] for _ in range(count)]
    return deltas, [row.append for row in deltas]


@pytest.mark.parametrize("max_new_tokens", [1, 24])
def test_deltas_join_to_each_rows_answer(tiny, max_new_tokens):
    batch = conversations(4)
    plain = tiny.chat(batch, max_new_tokens=max_new_tokens)
    deltas, callbacks = collect(len(batch))
    starts: list[list[str]] = []
    streamed = tiny.chat(batch, max_new_tokens=max_new_tokens, on_text=callbacks,
                         on_start=[starts.append] * len(batch))
    assert [r.text for r in streamed] == [r.text for r in plain]
    assert ["".join(row) for row in deltas] == [r.text for r in plain]
    assert all(delta for row in deltas for delta in row)  # no empty deltas
    assert starts == [r.transcripts for r in plain]
    if max_new_tokens > 1:
        assert any(len(row) > 1 for row in deltas)  # really incremental, not one piece at the end


def test_a_row_that_stops_early_gets_nothing_more(tiny):
    batch = conversations(3)
    first = tiny.chat(batch, max_new_tokens=12)
    # Make a token row 0 produces at its 3rd step an end of turn, so row 0 stops while the others go on.
    early = first[0].token_ids[2]
    extra_stop = sorted(end_of_turn_ids(tiny.tokenizer)) + [early]
    plain = tiny.chat(batch, max_new_tokens=12, eos_token_id=extra_stop)
    deltas, callbacks = collect(len(batch))
    streamed = tiny.chat(batch, max_new_tokens=12, eos_token_id=extra_stop, on_text=callbacks)
    assert ["".join(row) for row in deltas] == [r.text for r in streamed] == [r.text for r in plain]


def test_only_rows_with_a_callback_are_streamed(tiny):
    batch = conversations(2)
    received: list[str] = []
    replies = tiny.chat(batch, max_new_tokens=10, on_text=[None, received.append])
    assert "".join(received) == replies[1].text


def test_callbacks_must_match_the_batch(tiny):
    with pytest.raises(ValueError, match="2 callbacks for 1"):
        tiny.chat(conversations(1), max_new_tokens=2, on_text=[None, None])


class _Recorder:
    def __init__(self) -> None:
        self.deltas: list[str] = []

    def __call__(self, delta: str) -> None:
        self.deltas.append(delta)


def _ids(text: str) -> list[int]:
    return tiny_tokenizer().encode(text, add_special_tokens=False)


def test_streamer_stops_a_row_at_its_first_end_of_turn_and_ignores_the_prompt():
    tokenizer = tiny_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [_ids("  the dog barks") + [end] + _ids(" more text after the end"), _ids("hello world\n\n")]
    steps = max(map(len, rows))
    pad = tokenizer.pad_token_id
    rows = [ids + [pad] * (steps - len(ids)) for ids in rows]
    recorders = [_Recorder(), _Recorder()]
    streamer = BatchedTextStreamer(tokenizer, recorders, {end, pad})
    streamer.put(torch.tensor([[5, 6], [7, 8]]))  # the prompt: not answer text
    for step in range(steps):
        streamer.put(torch.tensor([row[step] for row in rows]))
    streamer.end()
    assert "".join(recorders[0].deltas) == "the dog barks"
    assert "".join(recorders[1].deltas) == "hello world"  # stripped, as chat() strips


def test_streamer_holds_back_incomplete_characters():
    tokenizer = tiny_tokenizer()
    text = "你好 ünïcödé"
    ids = _ids(text)
    # Byte-level pieces: some prefixes decode to a trailing replacement character.
    assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))
    recorder = _Recorder()
    streamer = BatchedTextStreamer(tokenizer, [recorder], set())
    streamer.put(torch.zeros((1, 0), dtype=torch.long))
    for token in ids:
        streamer.put(torch.tensor([token]))
        assert "\ufffd" not in "".join(recorder.deltas)
    streamer.end()
    assert "".join(recorder.deltas) == text


def test_a_failing_callback_does_not_stop_the_others():
    tokenizer = tiny_tokenizer()

    def broken(_: str) -> None:
        raise ConnectionError("gone")

    recorder = _Recorder()
    streamer = BatchedTextStreamer(tokenizer, [broken, recorder], {0})
    streamer.put(torch.zeros((2, 0), dtype=torch.long))
    first, second = _ids("the quick brown fox"), _ids("the lazy dog jumps")
    steps = max(len(first), len(second))
    for a, b in zip(first + [0] * (steps - len(first)), second + [0] * (steps - len(second))):
        streamer.put(torch.tensor([a, b]))
    streamer.end()
    assert "".join(recorder.deltas) == "the lazy dog jumps"
