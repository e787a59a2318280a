"""gateway/ui/api.py's pure parts: the page cut (never inside a run of one time), the prompt of a trace summary,
the arms ``info`` lists, and the answer models covering the store's columns."""

from __future__ import annotations

from typing import Any

from gateway.auth import ApiKeyAuth
from gateway.config import HelperSettings, HelpersSettings, Settings
from gateway.store import schema
from gateway.ui.api import UiApi, _page, last_user_text
from gateway.ui.schemas import FeedbackRow, PreferenceRow, RequestRow, ShadowRow


def rows(*times: float) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "time": t} for i, t in enumerate(times)]


def test_a_page_is_cut_before_a_run_of_one_time() -> None:
    page, next_before = _page(rows(9, 8, 7, 6), 3)
    assert [r["time"] for r in page] == [9, 8, 7] and next_before == 7
    page, next_before = _page(rows(9, 8, 7, 7), 3)  # the 7s go to the next page together
    assert [r["time"] for r in page] == [9, 8] and next_before == 8
    page, next_before = _page(rows(7, 7, 7, 7), 3)  # one run longer than a page: cut anyway
    assert len(page) == 3 and next_before == 7
    page, next_before = _page(rows(9, 8), 3)
    assert len(page) == 2 and next_before is None


def test_the_prompt_is_the_last_user_message_text() -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url"}]}]
    assert last_user_text(messages) == "x"
    assert last_user_text(None) is None
    assert last_user_text(["a prompt", "as sent"]) is None
    assert last_user_text([{"role": "system", "content": "s"}]) is None


def test_info_lists_the_arms_whose_helpers_are_configured() -> None:
    remote = HelperSettings(url="http://h.invalid/v1", model="h")
    aligner_only = Settings(helpers=HelpersSettings(aligner=remote))
    assert UiApi(aligner_only, None, ApiKeyAuth([])).info().arms == ["control", "align"]
    both = Settings(helpers=HelpersSettings(rewriter=remote, aligner=remote))
    assert UiApi(both, None, ApiKeyAuth([])).info().arms == ["control", "rewrite", "align", "rewrite+align"]


def test_the_answer_models_cover_the_store_columns() -> None:
    assert set(RequestRow.model_fields) == set(schema.REQUEST_COLUMNS) - {"user_key_hash"}
    assert set(FeedbackRow.model_fields) == set(schema.FEEDBACK_COLUMNS)
    assert set(ShadowRow.model_fields) == set(schema.SHADOW_COLUMNS)
    assert set(PreferenceRow.model_fields) == set(schema.PREFERENCE_COLUMNS)
