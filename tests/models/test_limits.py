"""The client's limits on a served correction: stop sequences over text and streams, the sentence budget."""

from __future__ import annotations

import pytest

from models.limits import Budget, ClientLimits, StopScanner, cut_at_stop, estimate_tokens, share_tokens


def test_limits_of_a_request() -> None:
    assert ClientLimits.of_request({"max_tokens": 64, "stop": "END"}, chat=True) == ClientLimits(64, ("END",))
    assert ClientLimits.of_request({"max_completion_tokens": 9, "max_tokens": 64}, chat=True).max_tokens == 9
    assert ClientLimits.of_request({"max_completion_tokens": 9, "max_tokens": 64}, chat=False).max_tokens == 64
    assert ClientLimits.of_request({"stop": ["a", "", 3], "max_tokens": True}, chat=True) == ClientLimits(None, ("a",))
    assert not ClientLimits.of_request({}, chat=True).active


def test_cut_at_the_earliest_stop() -> None:
    assert cut_at_stop("one two. three", ["three", "two"]) == ("one ", True)
    assert cut_at_stop("one", ["x"]) == ("one", False)


@pytest.mark.parametrize("pieces", [["Knead. Th", "en bake."], ["Knead. T", "h", "e", "n bake."],
                                    ["Knead. Then bake."]])
def test_a_stream_stops_across_pieces(pieces: list[str]) -> None:
    scanner = StopScanner(["Then"])
    out = "".join(scanner.feed(p) for p in pieces) + scanner.finish()
    assert out == "Knead. " and scanner.stopped


def test_a_stream_without_its_stop_is_whole() -> None:
    scanner = StopScanner(["Then"])
    assert "".join(scanner.feed(p) for p in ["The", "re ", "it is"]) + scanner.finish() == "There it is"
    assert not scanner.stopped


def test_the_budget_ends_a_choice_on_a_correction_or_a_stop() -> None:
    budget = Budget(ClientLimits(10, ("STOP",)))
    assert budget.cap(2048) == 10
    assert budget.take("passed through, long enough to spend it all alone.", None) != ""
    assert budget.ended is None  # the backend's own text never ends the answer early
    assert budget.take("A fix.", 3) == "A fix." and budget.ended == "length"
    assert budget.take("more", 1) == ""
    stopped = Budget(ClientLimits(None, ("STOP",)))
    assert stopped.take("Fine. STOP here", 4) == "Fine. " and stopped.ended == "stop"


def test_token_estimates() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcde") == 2
    assert share_tokens(10, "abcde", "abcdefghij") == 5
