"""Stop strings: end a generation at the first one, and never send any part of it."""

from __future__ import annotations


class StopMatcher:
    """Filters generated text, holding back whatever could still become a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Return (text safe to send, whether a stop string was reached)."""
        if not self._stops:
            return piece, False
        text = self._held + piece
        hits = [i for i in (text.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Release held text at the end of a generation that did not stop on a string."""
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        # The longest end of `text` that is the beginning of some stop string.
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
