"""Unit tests of single ``gateway.eval`` modules: verdict parsing and combining, records, the record files
(torn lines), the measures, the ΔWR table, the config checks, prompt sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.stats import bootstrap_mean_interval
from gateway.config import ARMS
from gateway.eval.cache import RecordFile
from gateway.eval.config import EvalConfigError, PromptSetSpec, load_eval_config
from gateway.eval.measures import edit_distance, measure, normalised_edit_distance
from gateway.eval.prompts import PromptError, load_prompt_set
from gateway.eval.records import Answer, Judgement, from_line, to_line
from gateway.eval.report import pairwise_rows
from gateway.eval.verdicts import JUDGE_PROMPTS, combine, judge_messages, parse_verdict


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("[[A]]", "A"),
        ("Assistant B explains more. [[B]]", "B"),
        ('Output "[[A]]" if A is better... My final verdict: [[C]]', "tie"),
        ("[[ tie ]]", "tie"),
        ('{"verdict": "B", "reason": "more accurate"}', "B"),
        ('```json\n{"winner": "A"}\n```', "A"),
        ("Answer A", "A"),
        ("Answer A is better.", "A"),
        ("Assistant B is clearly better than assistant A.", "B"),
        ("A is better", "A"),
        ("Verdict: B", "B"),
        ("I prefer Assistant A.", "A"),
        ("B", "B"),
        ("Tie", "tie"),
        ("Both are equally helpful.", "tie"),
        ("the weather is nice today", None),
        ("", None),
        ("A is better. No wait, B is better.", None),
        ("{not json at all", None),
    ],
)
def test_parse_verdict(text: str, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    ("first", "second", "outcome", "reason"),
    [
        ("A", "B", "win", None),  # the candidate wins in both orders
        ("B", "A", "lose", None),
        ("tie", "tie", "tie", None),
        ("A", "A", "tie", "order_flip"),  # always the first position: position bias cancels out
        ("B", "B", "tie", "order_flip"),
        ("A", "tie", "tie", "order_tie"),
        (None, None, "invalid", "both_invalid"),
        ("A", None, "invalid", "one_invalid"),
        (None, "B", "invalid", "one_invalid"),
    ],
)
def test_combine_both_orders(first: str | None, second: str | None, outcome: str, reason: str | None) -> None:
    combined = combine(first, second)
    assert (combined.outcome, combined.reason) == (outcome, reason)


def test_judge_messages_show_both_answers_under_the_criterion() -> None:
    from gateway.eval.records import Message

    messages = judge_messages("harmless", (Message("user", "Q?"),), "first answer", "second answer")
    assert messages[0] == {"role": "system", "content": JUDGE_PROMPTS["harmless"]}
    user = messages[1]["content"]
    assert user.startswith("[User Question]\nQ?\n\n")
    assert "[The Start of Assistant A's Answer]\nfirst answer\n[The End of Assistant A's Answer]" in user
    assert "[The Start of Assistant B's Answer]\nsecond answer\n[The End of Assistant B's Answer]" in user


def _answer(key: str, text: str = "t", **kw: object) -> Answer:
    return Answer(key=key, set="s", prompt_id=key, arm="align", text=text, latency_ms=1.0, **kw)  # type: ignore[arg-type]


def test_records_round_trip_and_reject_partial_lines() -> None:
    a = _answer("k", "héllo\nworld", raw="raw", aligner_ms=3.5)
    assert from_line(Answer, to_line(a)) == a
    j = Judgement(
        key="j",
        judge="llm:x",
        set="s",
        prompt_id="1",
        arm="align",
        baseline="control",
        outcome="win",
        verdicts=("A", None),
        reasoning=("r1", "r2"),
    )
    assert from_line(Judgement, to_line(j)) == j
    line = to_line(a)
    for bad in (line[: len(line) // 2], "[]", '{"key": "k"}', json.dumps({**json.loads(line), "extra": 1})):
        with pytest.raises(ValueError):
            from_line(Answer, bad)


def test_record_file_ignores_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    f = RecordFile(path, Answer).open()
    f.add(_answer("a"))
    f.add(_answer("b"))
    f.close()
    whole = path.read_text()
    path.write_text(whole + to_line(_answer("c"))[:30])  # a run killed mid-write
    again = RecordFile(path, Answer).open()
    assert set(again.records) == {"a", "b"} and again.skipped == 1
    again.add(_answer("d"))
    again.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "d"]


def test_measures() -> None:
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert normalised_edit_distance("a b c d", "a b c d") == 0.0
    assert normalised_edit_distance("a b", "c d") == 1.0
    answers = [
        _answer("1", "I'm sorry, I can't help with that.", raw="Here is how to do it.", aligner_skipped=None),
        _answer("2", "same text", raw="same text", aligner_skipped="empty_output"),
        Answer(
            key="3",
            set="s",
            prompt_id="3",
            arm="rewrite",
            text="x y",
            latency_ms=10.0,
            rewritten_prompt="one two three four",
            rewriter_ms=2.0,
        ),
    ]
    m = measure("s", "align", answers[:2], {})
    assert m.answers == 2 and m.refusal_rate == 0.5 and m.aligned == 2 and m.unchanged_share == 0.5
    assert m.aligner_skips == {"empty_output": 1}
    r = measure("s", "rewrite", answers[2:], {"3": "one two"})
    assert r.rewritten_share == 1.0 and r.mean_rewrite_ratio == 2.0 and r.latency_p50_ms == 10.0


def test_pairwise_rows_delta_wr_and_bootstrap_over_prompts() -> None:
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["lose"] * 2 + ["invalid"]
    js = [
        Judgement(key=str(i), judge="j", set="s", prompt_id=str(i), arm="align", baseline="control", outcome=o)
        for i, o in enumerate(outcomes)
    ]  # type: ignore[arg-type]
    (row,) = pairwise_rows({"j": js}, {("s", "align", "j"): 12}, "control")
    assert (row.n, row.wins, row.ties, row.losses, row.invalid, row.unjudged) == (10, 6, 2, 2, 1, 1)
    assert row.delta_wr == pytest.approx(0.4)
    assert (row.low, row.high) == bootstrap_mean_interval([-1] * 2 + [0] * 2 + [1] * 6, 0.95, 2000, seed=0)
    # the interval is the outcomes', whatever order their verdicts arrived in
    (shuffled,) = pairwise_rows({"j": js[::-1]}, {("s", "align", "j"): 12}, "control")
    assert (shuffled.low, shuffled.high) == (row.low, row.high)
    (empty,) = pairwise_rows({}, {("s", "rewrite", "j"): 3}, "control")
    assert empty.n == 0 and empty.delta_wr is None and empty.unjudged == 3


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    cases = {
        "bogus: 1": "unknown config key(s) bogus",
        "target: {bogus: 1}": "target.bogus",
        "arms: [control, sideways]": "unknown arm 'sideways'",
        "prompts: [{bundled: nope}]": "unknown bundled set 'nope'",
        "prompts: [{bundled: dolly-eval, path: x.jsonl}]": "either `bundled: NAME` or `path",
        "judges: [{llm: {url: 'http://x/v1'}}]": "needs `url` and `model`",
        "judges: [{reward_model: r, llm: {url: 'http://x', model: m}}]": "give one of `reward_model",
        "judges: [{blind: {pairs: p.jsonl}}]": "needs `pairs` (written) and `verdicts` (read)",
        "judges: [{blind: {pairs: v.jsonl, verdicts: v.jsonl}}]": "must be different files",
        "target: {url: 'http://x', gateway_config: g.yaml}": "not several",
        "target: {candidate: {url: 'http://x', model: m}}": "target.baseline is missing",
        "target: {candidate: {url: 'http://x', model: m, gateway_config: g.yaml}, baseline: {local: {model: m}}}": (
            "give one of `url`"
        ),
        "target: {candidate: {local: {model: m}, arm: align}, baseline: {local: {model: m}}}": (
            "a model alone has no arms"
        ),
        "generation: {max_tokens: 0}": "max_tokens must be at least 1",
        "prompts: [{bundled: dolly-eval, rest: true}]": "rest needs `limit`",
        "concurrency: many": "concurrency",
    }
    for text, message in cases.items():
        path = tmp_path / "eval.yaml"
        path.write_text(text + "\n")
        with pytest.raises(EvalConfigError) as info:
            load_eval_config(path)
        assert message in str(info.value), (text, str(info.value))
        assert "\n" not in str(info.value)
    config = load_eval_config(None, ["generation.max_tokens=16", "arms=[align]"])
    assert config.generation.max_tokens == 16 and config.arms == ["align"] and config.baseline == "control"


def test_prompt_sets(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "hello"})
        + "\n\n"
        + json.dumps(
            {
                "id": "x",
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "drop me"},
                ],
            }
        )
        + "\n"
    )
    prompts = load_prompt_set(PromptSetSpec(path=str(path)))
    assert [(p.set, p.id, p.criterion) for p in prompts] == [("p", "1", "helpful"), ("p", "x", "helpful")]
    assert [m.role for m in prompts[1].messages] == ["system", "user"] and prompts[1].user_text == "q"
    sample = load_prompt_set(PromptSetSpec(bundled="dolly-eval", limit=7, seed=3))
    assert len(sample) == 7 and sample == load_prompt_set(PromptSetSpec(bundled="dolly-eval", limit=7, seed=3))
    assert sample != load_prompt_set(PromptSetSpec(bundled="dolly-eval", limit=7, seed=4))
    assert load_prompt_set(PromptSetSpec(bundled="hh-rlhf-harmless", limit=2))[0].criterion == "harmless"
    # rest: the prompts the sample leaves out, in file order (a development set disjoint from it)
    rest = load_prompt_set(PromptSetSpec(bundled="dolly-eval", limit=7, seed=3, rest=True))
    everything = load_prompt_set(PromptSetSpec(bundled="dolly-eval"))
    assert len(rest) == len(everything) - 7 and not {p.id for p in rest} & {p.id for p in sample}
    assert sorted([*rest, *sample], key=everything.index) == everything
    with pytest.raises(PromptError, match="has no prompts"):
        load_prompt_set(PromptSetSpec(bundled="dolly-eval", limit=500, rest=True))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PromptError, match="has no prompts"):
        load_prompt_set(PromptSetSpec(path=str(empty)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(PromptError, match="line 1"):
        load_prompt_set(PromptSetSpec(path=str(bad)))


def test_an_arms_answer_identity_holds_only_the_helpers_it_runs(tmp_path: Path) -> None:
    """A new aligner (its template, its gate, its stream mode) invalidates the aligning arms' answers only: control
    and rewrite stay cached; a new rewriter the rewriting arms' only."""
    from gateway.config import Settings
    from gateway.eval.targets import settings_identity

    def settings(aligner: dict[str, Any], rewriter_model: str = "r") -> Settings:
        return Settings.model_validate({
            "backends": [{"name": "m", "urls": ["http://b.invalid/v1"]}],
            "helpers": {"rewriter": {"url": "http://r.invalid/v1", "model": rewriter_model},
                        "aligner": {"url": "http://a.invalid/v1", "model": "a", **aligner}},
        })

    base = settings({})
    for other in (settings({"template": "aligner-v1"}), settings({"stream": "sentence", "template": "stream"}),
                  settings({"gate": {"reward_model": str(tmp_path)}})):
        assert [settings_identity(base, a) == settings_identity(other, a) for a in ARMS] == [True, True, False, False]
    new_rewriter = settings({}, rewriter_model="r2")
    assert [settings_identity(base, a) == settings_identity(new_rewriter, a) for a in ARMS] == [
        True, False, True, False]


def test_a_shipped_adapter_is_identified_by_its_files() -> None:
    from gateway.config import LocalModelSettings
    from gateway.eval.targets import local_identity

    local = LocalModelSettings(model="builtin:smollm2-135m-instruct", adapter="builtin:aligner-smollm2-135m")
    model, shipped = local_identity(local)
    assert isinstance(shipped, list) and shipped[0] == "builtin:aligner-smollm2-135m"
    assert "adapter_model.safetensors" in str(shipped[1])
    assert model == "builtin:smollm2-135m-instruct"  # a model: its name


def test_the_runtime_and_precision_are_part_of_an_answers_identity() -> None:
    """An int8 engine answers differently: its answers are not the float32 ones'; the defaults add nothing, so
    keys made before the runtime was a setting stay valid."""
    from gateway.config import Settings
    from gateway.eval.targets import settings_identity

    def settings(**local: str) -> Settings:
        return Settings.model_validate({"backends": [{"name": "m", "local": {"model": "builtin:x", **local}}]})

    default = settings_identity(settings(), "control")
    assert settings_identity(settings(runtime="torch", dtype="float32"), "control") == default
    assert settings_identity(settings(dtype="auto", device="cpu"), "control") == default
    int8 = settings_identity(settings(runtime="ctranslate2", dtype="int8"), "control")
    fp32 = settings_identity(settings(runtime="ctranslate2"), "control")
    cuda = settings_identity(settings(device="cuda"), "control")
    bf16 = settings_identity(settings(dtype="bfloat16"), "control")
    assert len({default, int8, fp32, cuda, bf16}) == 5


def test_an_answer_is_identified_by_the_backend_it_asked() -> None:
    """A second backend in the config does not invalidate the first's answers; two backends' answers differ."""
    from gateway.config import Settings
    from gateway.eval.targets import settings_identity

    one = Settings.model_validate({"backends": [{"name": "a", "urls": ["http://a.invalid/v1"]}]})
    two = Settings.model_validate(
        {"backends": [{"name": "a", "urls": ["http://a.invalid/v1"]}, {"name": "b", "urls": ["http://b.invalid/v1"]}]}
    )
    assert settings_identity(one, "control", "a") == settings_identity(two, "control", "a")
    assert settings_identity(one, "control", "a") == settings_identity(one, "control")
    assert settings_identity(two, "control", "a") != settings_identity(two, "control", "b")


def test_points_never_print_a_negative_zero() -> None:
    from gateway.eval.report import _signed

    assert [_signed(x) for x in (-1e-17, -0.0004, 0.0, 0.16, -0.3, None)] == [
        "+0.0", "+0.0", "+0.0", "+16.0", "-30.0", "—"]
