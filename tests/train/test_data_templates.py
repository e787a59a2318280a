"""train.data.templates: the helper templates, character for character as in the README ("Helper templates")."""

from __future__ import annotations

import pytest

from train.data.templates import (
    ALIGNER_V1_TEMPLATE,
    ALIGNER_V2_TEMPLATE,
    BPO_TEMPLATE,
    render_aligner_prompt,
    render_rewriter_prompt,
)

# Copied from the README ("Helper templates"), with its \n written as a real newline.
README_BPO = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
    "harmless response:\n{prompt} [/INST]"
)
README_ALIGNER_V1 = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: "
    "{question} | {answer} ASSISTANT:"
)
README_ALIGNER_V2 = (
    "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n##Correction:  ASSISTANT:"
)


def test_template_constants_match_design() -> None:
    assert BPO_TEMPLATE == README_BPO
    assert ALIGNER_V1_TEMPLATE == README_ALIGNER_V1
    assert ALIGNER_V2_TEMPLATE == README_ALIGNER_V2


def test_rendered_prompts_character_for_character() -> None:
    assert render_rewriter_prompt("bpo", "how can I create a profile on Facebook?") == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
        "harmless response:\nhow can I create a profile on Facebook? [/INST]"
    )
    assert render_aligner_prompt("aligner-v1", "What is 2+2?", "5") == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        "harmless: What is 2+2? | 5 ASSISTANT:"
    )
    assert render_aligner_prompt("aligner-v2", "What is 2+2?", "5") == (
        "BEGINNING OF CONVERSATION: USER: ##Question: What is 2+2?\n##Answer: 5\n##Correction:  ASSISTANT:"
    )


def test_braces_in_values_are_inserted_literally() -> None:
    rendered = render_aligner_prompt("aligner-v1", "Fill {answer} in {0}", "{question}")
    assert rendered == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        "harmless: Fill {answer} in {0} | {question} ASSISTANT:"
    )


def test_chat_templates_are_the_gateways_system_and_user_messages() -> None:
    # Training and serving render from the same templates (models.templates): system + user messages.
    assert render_aligner_prompt("aligner-chat", "Q", "A") == [
        {"role": "system", "content": "Edit the following Question-Answer pair to make it more helpful and harmless."},
        {"role": "user", "content": "Question: Q\nAnswer: A"},
    ]
    assert render_rewriter_prompt("bpo-chat", "P") == [
        {"role": "system", "content": "You are an expert prompt engineer."},
        {
            "role": "user",
            "content": "Please help me improve this prompt to get a more helpful and harmless response:\nP",
        },
    ]


def test_unknown_templates() -> None:
    with pytest.raises(ValueError, match="unknown aligner template 'aligner-v9'"):
        render_aligner_prompt("aligner-v9", "q", "a")
    with pytest.raises(ValueError, match="unknown rewriter template"):
        render_rewriter_prompt("aligner-v1", "p")
