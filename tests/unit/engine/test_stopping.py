"""Stop strings held back across token boundaries."""

from __future__ import annotations

from app.engine.stopping import StopMatcher


def _run(stops, pieces):
    matcher = StopMatcher(tuple(stops))
    sent = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        sent.append(text)
        if stopped:
            return "".join(sent), True
    return "".join(sent) + matcher.flush(), False


def test_no_stops_passes_everything_through():
    assert _run([], ["a", "b\n"]) == ("ab\n", False)


def test_stop_inside_one_piece():
    assert _run(["END"], ["hello END there"]) == ("hello ", True)


def test_stop_split_over_pieces_is_never_sent():
    matcher = StopMatcher(("\n\n",))
    assert matcher.feed("ab\n") == ("ab", False)  # "\n" might start the stop string
    assert matcher.feed("\nc") == ("", True)


def test_held_text_is_released_when_it_cannot_be_a_stop():
    matcher = StopMatcher(("END",))
    assert matcher.feed("the E") == ("the ", False)
    assert matcher.feed("x") == ("Ex", False)


def test_earliest_of_several_stops_wins():
    assert _run(["world", "lo"], ["hello world"]) == ("hel", True)


def test_flush_releases_a_partial_match_at_the_end():
    assert _run(["END"], ["the EN"]) == ("the EN", False)
