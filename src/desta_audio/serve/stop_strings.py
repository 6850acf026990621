"""OpenAI `stop` strings: the answer ends right before the first occurrence of any of them."""

from __future__ import annotations

from collections.abc import Sequence


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The whole-text version: (text cut before the earliest stop string, whether one was found)."""
    cut = min((text.find(stop) for stop in stops if stop and stop in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopStringFilter:
    """The streaming version: feed deltas, get the text that is safe to send.

    Text that could be the start of a stop string is held back until the next delta settles it, so a stop string
    split across deltas is still cut, and what is sent joins to exactly `apply_stop(whole text)`.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.stopped = False
        self.sent = ""  # everything returned so far
        self._held = ""

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        buffer = self._held + delta
        cut, found = apply_stop(buffer, self.stops)
        if found:
            self.stopped, self._held = True, ""
            return self._emit(cut)
        hold = self._partial_stop_length(buffer)
        self._held = buffer[len(buffer) - hold:] if hold else ""
        return self._emit(buffer[:len(buffer) - hold])

    def flush(self) -> str:
        """The answer is complete: nothing held back can become a stop string any more."""
        held, self._held = self._held, ""
        return "" if self.stopped else self._emit(held)

    def _emit(self, text: str) -> str:
        self.sent += text
        return text

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest
