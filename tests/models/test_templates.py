"""The helper templates, character for character against the README ("Helper templates"), and rendering that
never parses user text."""

from __future__ import annotations

import pytest

from models import templates
from models.engine import ChatTurn
from models.templates import TemplateError, get_template, template_names

# The published strings, written out literally (not built from the module's constants).
BPO = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and"
    " harmless response:\n{prompt} [/INST]"
)
ALIGNER_V1 = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and"
    " harmless: {question} | {answer} ASSISTANT:"
)
ALIGNER_V2 = "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n##Correction:  ASSISTANT:"
STREAM = (
    "<start_of_turn>user\n##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {last} |"
    " ##Your_Revision: <end_of_turn>\n<start_of_turn>model"
)


def test_constants_are_the_published_strings() -> None:
    assert templates.BPO_TEMPLATE == BPO
    assert templates.ALIGNER_V1_TEMPLATE == ALIGNER_V1
    assert templates.ALIGNER_V2_TEMPLATE == ALIGNER_V2
    assert "##Correction:  ASSISTANT:" in templates.ALIGNER_V2_TEMPLATE  # two spaces
    assert templates.STREAM_TEMPLATE == STREAM
    assert templates.STREAM_TEMPLATE.endswith("##Your_Revision: <end_of_turn>\n<start_of_turn>model")  # no space


def test_bpo_renders_exactly() -> None:
    got = get_template("bpo").render({"prompt": "Tell me a joke about cats."})
    assert got == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
        "harmless response:\nTell me a joke about cats. [/INST]"
    )


def test_aligner_v1_renders_exactly() -> None:
    got = get_template("aligner-v1").render({"question": "How do I bake bread?", "answer": "Use flour."})
    assert got == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        "harmless: How do I bake bread? | Use flour. ASSISTANT:"
    )


def test_aligner_v2_renders_exactly() -> None:
    got = get_template("aligner-v2").render({"question": "How do I bake bread?", "answer": "Use flour."})
    assert got == (
        "BEGINNING OF CONVERSATION: USER: ##Question: How do I bake bread?\n##Answer: Use flour.\n"
        "##Correction:  ASSISTANT:"
    )


def test_stream_renders_exactly() -> None:
    got = get_template("stream").render(
        {"question": "How do I bake bread?", "prefix": "Mix flour and water.", "last": "Then bake it at 900 C."}
    )
    assert got == (
        "<start_of_turn>user\n##Question: How do I bake bread? | ##Answer_Prefix: Mix flour and water. | "
        "##Answer_Last_Sentence: Then bake it at 900 C. | ##Your_Revision: <end_of_turn>\n<start_of_turn>model"
    )
    first = get_template("stream").render({"question": "Q?", "prefix": "", "last": "A."})
    assert "##Answer_Prefix:  | ##Answer_Last_Sentence: A. |" in first  # an empty prefix for the first sentence


def test_stream_chat_is_our_instruction_and_stream_aligners_own_input() -> None:
    got = get_template("stream-chat").render({"question": "Q?", "prefix": "P.", "last": "L."})
    assert got == (
        ChatTurn("system", "Revise the last sentence of the answer to make it more helpful and harmless, keeping it "
                           "consistent with the answer prefix, which is fixed. Reply with the revised sentence only."),
        ChatTurn("user", "##Question: Q? | ##Answer_Prefix: P. | ##Answer_Last_Sentence: L. | ##Your_Revision: "),
    )


def test_sentence_templates_are_marked() -> None:
    assert [n for n, t in templates.TEMPLATES.items() if t.sentence] == ["stream", "stream-chat"]


@pytest.mark.parametrize("text", ["{}", "{prompt}", "a {0} b {question} c {answer} {{x}} }{", "%s %(prompt)s $prompt"])
def test_braces_in_user_text_come_out_literally(text: str) -> None:
    bpo = get_template("bpo").render({"prompt": text})
    assert bpo == BPO.replace("{prompt}", "\0").replace("\0", text)
    aligner = get_template("aligner-v1").render({"question": text, "answer": text + "!"})
    assert aligner == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        f"harmless: {text} | {text}! ASSISTANT:"
    )
    chat = get_template("aligner-chat").render({"question": text, "answer": "{prompt}"})
    assert isinstance(chat, tuple)
    assert chat[1].content == f"Question: {text}\nAnswer: {{prompt}}"


def test_a_field_value_that_names_another_field_is_not_substituted_again() -> None:
    got = get_template("aligner-v2").render({"question": "{answer}", "answer": "{question}"})
    assert got == (
        "BEGINNING OF CONVERSATION: USER: ##Question: {answer}\n##Answer: {question}\n##Correction:  ASSISTANT:"
    )


def test_chat_variants_are_a_system_and_a_user_message() -> None:
    bpo = get_template("bpo-chat")
    assert bpo.kind == "chat"
    assert bpo.render({"prompt": "Tell me a joke."}) == (
        ChatTurn("system", "You are an expert prompt engineer."),
        ChatTurn(
            "user", "Please help me improve this prompt to get a more helpful and harmless response:\nTell me a joke."
        ),
    )
    aligner = get_template("aligner-chat")
    assert aligner.render({"question": "Q?", "answer": "A."}) == (
        ChatTurn("system", "Edit the following Question-Answer pair to make it more helpful and harmless."),
        ChatTurn("user", "Question: Q?\nAnswer: A."),
    )


def test_kinds_helpers_and_fields() -> None:
    expected = {
        "bpo": ("completion", "rewriter", ("prompt",)),
        "bpo-chat": ("chat", "rewriter", ("prompt",)),
        "aligner-v1": ("completion", "aligner", ("question", "answer")),
        "aligner-v2": ("completion", "aligner", ("question", "answer")),
        "aligner-chat": ("chat", "aligner", ("question", "answer")),
        "stream": ("completion", "aligner", ("question", "prefix", "last")),
        "stream-chat": ("chat", "aligner", ("question", "prefix", "last")),
    }
    assert {n: (t.kind, t.helper, t.fields) for n, t in templates.TEMPLATES.items()} == expected
    assert template_names("rewriter") == ["bpo", "bpo-chat"]
    assert template_names("aligner") == ["aligner-v1", "aligner-v2", "aligner-chat", "stream", "stream-chat"]


def test_unknown_template_lists_valid_names() -> None:
    with pytest.raises(TemplateError, match=r"unknown helper template 'bpo2'.*bpo, bpo-chat, aligner-v1"):
        get_template("bpo2")
    with pytest.raises(TemplateError, match=r"'aligner-v1' is for the aligner\).*valid names: bpo, bpo-chat$"):
        get_template("aligner-v1", "rewriter")
    assert isinstance(TemplateError("x"), ValueError)


def test_missing_field_is_a_clear_error() -> None:
    with pytest.raises(TemplateError, match="needs text for answer"):
        get_template("aligner-v1").render({"question": "q"})


def test_the_readme_shows_the_published_strings() -> None:
    from pathlib import Path

    from models.templates import ALIGNER_V1_TEMPLATE, ALIGNER_V2_TEMPLATE, BPO_TEMPLATE, STREAM_TEMPLATE

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for template in (BPO_TEMPLATE, ALIGNER_V1_TEMPLATE, ALIGNER_V2_TEMPLATE, STREAM_TEMPLATE):
        assert "`" + template.replace("\n", "\\n").replace("|", "\\|") + "`" in readme, template
