"""train/rows.py: the rows each method trains on, built from the bundled datasets."""

from __future__ import annotations

import pytest

from core.recipe import RecipeError
from train.config import DatasetSpec


@pytest.mark.parametrize(
    ("spec", "first_prompt_start"),
    [
        (DatasetSpec(path="bundled:bpo/bpo_test.json", kind="bpo", task="rewriter", template="bpo"), "[INST]"),
        (DatasetSpec(kind="hh-rlhf", task="aligner", template="aligner-v1", max_rows=3), "BEGINNING OF CONVERSATION"),
        (DatasetSpec(path="bundled:alpaca-eval-prefs/pairs.jsonl", kind="preferences", task="chat", max_rows=3), None),
    ],
)
def test_sft_rows_per_task(spec: DatasetSpec, first_prompt_start: str | None) -> None:
    from train.rows import sft_rows

    rows = sft_rows(spec)
    assert rows
    assert set(rows[0]) == {"prompt", "completion"}
    if first_prompt_start is None:
        assert rows[0]["prompt"][0]["role"] == "user"
    else:
        assert rows[0]["prompt"].startswith(first_prompt_start)


def test_preference_and_unpaired_rows() -> None:
    from train.rows import preference_rows, unpaired_rows

    prefs = preference_rows(DatasetSpec(max_rows=4))
    assert len(prefs) == 4 and set(prefs[0]) == {"prompt", "chosen", "rejected"}
    kto = unpaired_rows(DatasetSpec(max_rows=4))
    assert [r["label"] for r in kto] == [True, False, True, False]
    with pytest.raises(RecipeError, match="no preference pairs"):
        preference_rows(DatasetSpec(path="bundled:bpo/dolly_eval.json", kind="dolly"))
