"""Token streaming for batched generation: each row's text, handed out as it is generated.

`BatchedTextStreamer` follows transformers' streamer protocol (`put()` per step, `end()` once), so it plugs into
a batched `generate()`. It decodes each row incrementally and calls that row's `on_text(delta)` with text that
can no longer change. The deltas of a row join to exactly what `DeSTAModel.chat` returns as that row's text:
the decoded text up to the first end-of-turn (or pad) token, stripped of surrounding whitespace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

from transformers.generation.streamers import BaseStreamer

log = logging.getLogger(__name__)

TextCallback = Callable[[str], None]
REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder shows for a UTF-8 sequence cut off by the last token


class _RowDecoder:
    """One row's ids and the text handed out so far.

    Decoding is incremental (only the tokens since the last complete piece, with a little context before them so
    the tokenizer places spaces the same way as in a full decode), so a step costs the same at token 10 and 2000.
    """

    def __init__(self, tokenizer: Any, on_text: TextCallback) -> None:
        self.tokenizer = tokenizer
        self.on_text: TextCallback | None = on_text
        self.ids: list[int] = []
        self.done = False
        self._prefix_offset = 0  # start of the context window of the next decode
        self._read_offset = 0  # ids before this have been turned into `_raw`
        self._raw = ""  # decoded text so far, unstripped
        self.sent = ""  # what on_text has received

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> None:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix_offset:self._read_offset])
        after = self._decode(self.ids[self._prefix_offset:])
        # A trailing replacement character is a multi-byte character (or BPE piece) not complete yet: wait for it.
        if len(after) <= len(before) or after.endswith(REPLACEMENT_CHARACTER):
            return
        self._raw += after[len(before):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        # chat() strips the answer: no leading whitespace ever, and trailing whitespace only once more text follows.
        self._send(self._raw.strip())

    def finish(self) -> None:
        """The row is complete: send the rest of its exact final text (a full decode, as chat() does)."""
        if self.done:
            return
        self.done = True
        final = self._decode(self.ids).strip()
        if not final.startswith(self.sent):
            log.warning("streamed text of a row diverged from its final decode; the stream keeps what was sent")
            return
        self._send(final)

    def _send(self, text: str) -> None:
        if self.on_text is None or len(text) <= len(self.sent) or not text.startswith(self.sent):
            return
        delta, self.sent = text[len(self.sent):], text
        try:
            self.on_text(delta)
        except Exception as error:  # a consumer's failure (e.g. a closed connection) must not stop the other rows
            log.warning("an on_text callback failed (%r); no more text is sent to it", error)
            self.on_text = None


class BatchedTextStreamer(BaseStreamer):
    """Streams every row of a batched `generate()` to its own callback.

    on_text: one callback per row (None for rows nobody listens to; those are not decoded at all).
    stop_ids: token ids that end a row (end-of-turn and pad); the row's text stops before the first of them and
    its callback gets nothing more.
    """

    def __init__(self, tokenizer: Any, on_text: Sequence[TextCallback | None], stop_ids: Collection[int]) -> None:
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.rows = [_RowDecoder(tokenizer, callback) if callback is not None else None for callback in on_text]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        # generate() first hands over the prompt ids ((batch, 0) when it gets only inputs_embeds): not answer text.
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = value.tolist()
        # One token per row per step (batch,) is the usual case; (batch, tokens) carries several steps at once.
        steps = [ids] if value.ndim == 1 else [list(column) for column in zip(*ids)]
        for tokens in steps:
            if len(tokens) != len(self.rows):
                raise ValueError(f"the streamer was built for {len(self.rows)} rows but generate() sent {len(tokens)}")
            for row, token in zip(self.rows, tokens):
                if row is None or row.done:
                    continue
                if token in self.stop_ids:
                    row.finish()
                else:
                    row.add(int(token))

    def end(self) -> None:
        """Rows that ran out of tokens (max_new_tokens) end here."""
        for row in self.rows:
            if row is not None:
                row.finish()
