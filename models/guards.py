"""Cheap checks of what small helpers really produce: the text patterns both helpers' guards share.

A 135M-parameter rewriter or aligner fails in recognisable ways; each check below spots one of them with plain
text rules (no model). The helpers turn a hit into a stable skip reason (``models.rewriter``, ``models.aligner``).

* :data:`TEMPLATE_MARKERS` — chat-template and role markers (``<|im_start|>``, ``[INST]``, ``<start_of_turn>``,
  a line starting ``USER:`` / ``ASSISTANT:`` / ``Human:`` ...): the helper leaked its own prompt format.
* :func:`core.refusal.is_refusal` (the one definition, re-exported here) — the answer refuses ("I'm sorry",
  "I can't help ...", "as an AI", ...): the aligner's ``dropped_content`` guard lets a short refusal through.
* :func:`missing_constraints` (the rewriter's ``dropped_constraint``) — what the user fixed in a prompt and a
  rewrite lost. What counts, each looked for in the rewrite case-insensitively with runs of whitespace as one space:

  - **numbers** written with digits (``42``, ``3.5``, ``1,000``, the ``1`` of ``1st``): the rewrite must hold the
    same number, as digits (``1000`` for ``1,000``) or as an English number word (``five`` for ``5``, ``first`` for
    ``1``, up to twenty and the tens). Number words in the prompt are not required on their own ("one of the best"
    paraphrases freely), except as the count of a requested length below.
  - **quoted text** (``"..."``, ``“...”``, ``'...'`` between non-word characters, up to 200 characters): its words.
  - **code**: inline ``` `code` ``` and fenced blocks: their text.
  - **URLs** (``http://``, ``https://``, ``www.``): verbatim, trailing punctuation aside.
  - **named entities**: runs of two or more capitalised words (``New York``, ``Barack Obama``, ``Hugging Face``);
    a run that starts a sentence loses its first word ("Tell Ada Lovelace" keeps ``Ada Lovelace``; "Please write"
    is nothing), and ``I`` ends a run. A heuristic: single capitalised words and lower-case names are not checked.
  - **a requested length** ("in 3 bullet points", "under 100 words", "in five sentences", "at most 2 paragraphs"):
    its count (digits or word) and its unit (``bullet``, ``word``, ``sentence``, ``paragraph``, ``line``, ``step``,
    ``item``, ``point``, ``character``, ``example``, ``tip``, ``reason``; singular or plural).
  - **a requested format** ("as JSON", "in YAML format", "as a table", "in Markdown", "as a numbered list"): the
    format's name (``JSON``, ``YAML``, ``CSV``, ``XML``, ``HTML``, ``Markdown``, ``table``, ``list``, ``haiku``,
    ``poem``, ``essay``, ``email``, ``letter``, ``tweet``).

* Aligner checks, each comparing a correction with the answer it corrects:

  - :func:`leaked_template` — the correction carries :data:`TEMPLATE_MARKERS`, the aligner templates' own headers
    (``Question:``, ``Answer:``, ``Correction:``, ``##Question``, ``##Answer_Prefix``, ``##Your_Revision`` ... at a
    line start) or self-commentary ("more helpful and harmless than the previous answer", "Here is the corrected
    answer", "The corrected answer is", "I have corrected/edited/revised ..."), none of which the answer itself
    had. :func:`strip_correction_label` first removes a cleanly separable leading label (``Corrected answer:``,
    ``**Revised response:**``, ``Here is the corrected answer:`` followed by the text).
  - :func:`dropped_content` — the answer has at least :data:`MIN_CONTENT_WORDS` words and the correction keeps
    fewer than :data:`MIN_CONTENT_RATIO` (30 %) of that many words, or it is an **extract** that keeps fewer than
    :data:`EXTRACT_MIN_RATIO` (two thirds) of them — at most :data:`EXTRACT_NEW_SHARE` (10 %) of its words are not
    in the answer (case and punctuation aside), so it only cut: a list left with one item, an answer cut to its
    opening sentence, a first step dropped. A refusal always passes (a refusal of a harmful request is a
    legitimate short correction; the check cannot tell a justified refusal from another).
  - :func:`repeats` — the correction loops where the answer did not: a sentence of four or more words twice or more,
    a word 5-gram three times or more, or a run of 10 to 200 characters three times in a row (text without
    spaces), each more often than in the answer.
  - :func:`language_changed` — the answer's writing changed: the dominant script (Latin, Cyrillic, Greek, Arabic,
    Hebrew, Devanagari, Thai, Hangul, kana, Han) of the letters differs, both texts having at least
    :data:`MIN_SCRIPT_LETTERS` letters; or, both in Latin script, the stop-word language (English, French, German,
    Spanish, Italian, Portuguese, Dutch: the most frequent of a short stop-word list each, with at least 3 hits and
    twice the next language's) of each is known and differs.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from core.refusal import is_refusal

__all__ = [
    "EXTRACT_MIN_RATIO",
    "EXTRACT_NEW_SHARE",
    "MIN_CONTENT_RATIO",
    "MIN_CONTENT_WORDS",
    "MIN_SCRIPT_LETTERS",
    "TEMPLATE_MARKERS",
    "dropped_content",
    "is_refusal",
    "language_changed",
    "leaked_template",
    "missing_constraints",
    "repeats",
    "strip_correction_label",
]

# ---------------------------------------------------------------------------------------------- shared patterns

#: Chat-template and role markers a small helper leaks into its output.
TEMPLATE_MARKERS = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|<start_of_turn>|<end_of_turn>|\[/?INST\]|<</?SYS>>"
    r"|^\s*(?:USER|ASSISTANT|SYSTEM|Human|Assistant)\s*:",
    re.MULTILINE,
)

def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------------------------------------- rewriter

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5",
    "sixth": "6", "seventh": "7", "eighth": "8", "ninth": "9", "tenth": "10", "once": "1", "twice": "2",
    "single": "1", "pair": "2", "dozen": "12",
}
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\d)")
_WORD = re.compile(r"[A-Za-z]+")
_QUOTED = re.compile(r'"([^"\n]{1,200})"|“([^”\n]{1,200})”|(?<!\w)\'([^\'\n]{1,200})\'(?!\w)')
_FENCED = re.compile(r"```[^\n`]*\n?(.*?)```", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_NAME_WORD = re.compile(r"[^\W\d_][\w'\u2019&-]*")
_NAME_JOINERS = frozenset({"of", "the", "de", "van", "von", "del", "da", "di", "du", "le", "la"})
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*|[\"“(]\s*)$")
_UNITS = (r"bullet(?:\s+point)?s?|words?|sentences?|paragraphs?|lines?|steps?|items?|points?|characters?|chars?"
          r"|examples?|tips?|reasons?|ideas?|questions?|options?")
_CARDINALS = [k for k in _NUMBER_WORDS if not k.endswith(("st", "nd", "rd", "th"))]
_COUNT = r"(?<![\d,.])(\d+(?:,\d{3})*|" + "|".join(_CARDINALS) + r")"
_LENGTH = re.compile(
    r"\b(?:in|with|using|under|within|below|of|at\s+most|at\s+least|no\s+more\s+than|not\s+more\s+than"
    r"|less\s+than|fewer\s+than|more\s+than|up\s+to|max(?:imum)?(?:\s+of)?|exactly|only|just|about|around)?\s*"
    + _COUNT + r"(?:\s+(?:short|brief|concise|simple|numbered|bulleted|key|main|clear|separate|different))?\s+("
    + _UNITS + r")\b",
    re.IGNORECASE,
)
_FORMATS = r"json|yaml|csv|xml|html|markdown|table|(?:bulleted|numbered|bullet)\s+list|list|haiku|poem|essay|email|" \
           r"letter|tweet"
_FORMAT = re.compile(
    r"\b(?:as|in|into|using|with)\s+(?:a|an|the|valid|proper|plain)?\s*(" + _FORMATS + r")\b"
    r"|\b(" + _FORMATS + r")\s+(?:format|output|object|array|schema)\b",
    re.IGNORECASE,
)


def _numbers(text: str) -> set[str]:
    """The numbers written in ``text`` (digits without thousands separators, and number words as digits)."""
    found = {_plain_number(m.group(0)) for m in _NUMBER.finditer(text)}
    found.update(_NUMBER_WORDS[w] for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w in _NUMBER_WORDS)
    return found


def _plain_number(number: str) -> str:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", number):
        number = number.replace(",", "")
    return number.rstrip(".,")


def _count(word: str) -> str:
    return _NUMBER_WORDS.get(word.lower(), _plain_number(word))


def _unit_stem(unit: str) -> str:
    stem = unit.lower().split()[0]
    return {"chars": "char", "char": "char"}.get(stem, stem.rstrip("s"))


def _entities(text: str) -> list[str]:
    """Runs of two or more capitalised words (``of``, ``the``, ``de``, ``van``, ``von`` ... may join them);
    a run at a sentence start loses its first word; ``I`` is never part of one."""
    found: list[str] = []
    run: list[str] = []
    last_end = -1

    def close() -> None:
        while run and not run[-1][0].isupper():
            run.pop()
        if sum(w[0].isupper() for w in run) >= 2:
            found.append(" ".join(run))
        run.clear()

    for match in _NAME_WORD.finditer(text):
        word = match.group(0)
        joined = last_end >= 0 and text[last_end : match.start()].strip(" \t") == ""
        last_end = match.end()
        if not joined:
            close()
        capital = word[0].isupper() and word != "I"
        if capital and not run and _SENTENCE_START.search(text[: match.start()]):
            continue  # the first word of a sentence says nothing
        if capital or (run and word in _NAME_JOINERS):
            run.append(word)
        else:
            close()
    close()
    return found


def missing_constraints(original: str, rewrite: str) -> list[str]:
    """What ``original`` fixed that ``rewrite`` lost (see the module docstring), each as ``kind:text``; empty when
    nothing was dropped."""
    target = _norm(rewrite)
    have = _numbers(rewrite)
    missing: list[str] = []
    code_spans = [m.group(1) for m in _FENCED.finditer(original)]
    outside_code = _FENCED.sub(" ", original)
    code_spans += [m.group(1) for m in _INLINE_CODE.finditer(outside_code)]
    prose = _INLINE_CODE.sub(" ", outside_code)
    urls = [m.group(0).rstrip(".,;:!?)]") for m in _URL.finditer(prose)]
    prose = _URL.sub(" ", prose)
    missing += [f"code:{c.strip()}" for c in code_spans if c.strip() and _norm(c) not in target]
    missing += [f"url:{u}" for u in urls if u.casefold() not in target]
    for match in _NUMBER.finditer(prose):
        number = _plain_number(match.group(0))
        if number not in have:
            missing.append(f"number:{match.group(0)}")
    for match in _QUOTED.finditer(prose):
        quoted = next(g for g in match.groups() if g is not None)
        if _norm(quoted) not in target:
            missing.append(f"quote:{quoted}")
    for entity in _entities(prose):
        if _norm(entity) not in target:
            missing.append(f"entity:{entity}")
    for match in _LENGTH.finditer(prose):
        count, unit = _count(match.group(1)), _unit_stem(match.group(2))
        if count not in have or unit not in target:
            missing.append(f"length:{match.group(0).strip()}")
    for match in _FORMAT.finditer(prose):
        name = (match.group(1) or match.group(2)).lower().split()[-1]
        if name not in target:
            missing.append(f"format:{match.group(0).strip()}")
    return list(dict.fromkeys(missing))


# ---------------------------------------------------------------------------------------------- aligner

#: The aligner templates' own headers at a line start, and a sentence template's separators.
_ALIGNER_HEADERS = re.compile(
    r"^\s*(?:#{1,3}\s*)?(?:Question|Answer|Correction|Corrected\s+Answer|Edited\s+Answer|Answer_Prefix"
    r"|Answer_Last_Sentence|Your_Revision|Revision)\s*:|##\s*(?:Question|Answer|Correction|Answer_Prefix"
    r"|Answer_Last_Sentence|Your_Revision)\b|BEGINNING OF CONVERSATION",
    re.MULTILINE | re.IGNORECASE,
)
#: The aligner talking about its own edit instead of giving it.
_SELF_COMMENTARY = re.compile(
    r"more helpful and (?:more )?harmless than|\bhere(?:'s| is) (?:the|a|my|an) (?:corrected|revised|edited|improved"
    r"|updated|rewritten) (?:answer|response|version|text)|\bthe (?:corrected|revised|edited|improved) (?:answer"
    r"|response|version) is\b|\bI (?:have|'ve) (?:corrected|edited|revised|improved|rewritten) (?:the|your|this)"
    r"|\b(?:original|previous) answer (?:was|is|has)\b",
    re.IGNORECASE,
)
#: A leading label before the correction itself ("Corrected answer:", "Here is the corrected answer:").
_CORRECTION_LABEL = re.compile(
    r"\A\s*(?:\*\*|__)?\s*(?:here(?:'s| is) (?:the|a|my|an) )?(?:corrected|revised|edited|improved|updated|"
    r"rewritten|better)\s+(?:answer|response|version|text)\s*(?:\*\*|__)?\s*[:\uff1a]\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)

MIN_CONTENT_WORDS = 20
MIN_CONTENT_RATIO = 0.3
#: An extract (a correction that adds at most EXTRACT_NEW_SHARE of its words, i.e. only deletes) must keep at least
#: this share of the answer's words: cutting a third of an answer out is not a correction.
EXTRACT_MIN_RATIO = 2 / 3
EXTRACT_NEW_SHARE = 0.1


def strip_correction_label(text: str) -> str:
    """``text`` without a leading ``Corrected answer:``-style label, when text follows the label."""
    match = _CORRECTION_LABEL.match(text)
    if match is None or not text[match.end() :].strip():
        return text
    return text[match.end() :].strip()


def leaked_template(answer: str, correction: str) -> bool:
    """Whether ``correction`` carries template markers, aligner headers or self-commentary ``answer`` did not."""
    for pattern in (TEMPLATE_MARKERS, _ALIGNER_HEADERS, _SELF_COMMENTARY):
        if pattern.search(correction) and not pattern.search(answer):
            return True
    return False


def _words(text: str) -> list[str]:
    return [w for w in (w.strip(".,;:!?\"'()[]*#-").casefold() for w in text.split()) if w]


def dropped_content(answer: str, correction: str) -> bool:
    """Whether ``correction`` keeps too little of a long enough ``answer`` without refusing (module docstring)."""
    before = len(answer.split())
    if before < MIN_CONTENT_WORDS or is_refusal(correction):
        return False
    after = len(correction.split())
    if after < MIN_CONTENT_RATIO * before:
        return True
    if after >= EXTRACT_MIN_RATIO * before:
        return False
    kept = set(_words(answer))
    words = _words(correction)
    return sum(w not in kept for w in words) <= EXTRACT_NEW_SHARE * len(words)


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?。\uff01\uff1f])\s+|\n+")
_LOOP = re.compile(r"(\S.{9,199}?)\1\1", re.DOTALL)


def _sentences(text: str) -> Counter[str]:
    return Counter(s for s in (_norm(p).strip(" .!?") for p in _SENTENCE_SPLIT.split(text)) if len(s.split()) >= 4)


def _grams(text: str, n: int = 5) -> Counter[tuple[str, ...]]:
    words = [w.strip(".,;:!?\"'()[]").casefold() for w in text.split()]
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _loops(text: str) -> Counter[str]:
    """Runs repeated three times in a row, in text mostly without spaces (CJK; spaced text has its 5-grams)."""
    if sum(c.isspace() for c in text) * 20 >= len(text):
        return Counter()
    return Counter(m.group(1) for m in _LOOP.finditer(text) if not m.group(1).isspace())


def _more(mine: Counter[Any], theirs: Counter[Any], at_least: int) -> bool:
    """Whether some key counts at least ``at_least`` in ``mine`` and more than in ``theirs``."""
    return any(count >= at_least and count > theirs[key] for key, count in mine.items())


def repeats(answer: str, correction: str) -> bool:
    """Whether ``correction`` loops (a repeated sentence, 5-gram or run of characters) more than ``answer`` does."""
    return (
        _more(_sentences(correction), _sentences(answer), 2)
        or _more(_grams(correction), _grams(answer), 3)
        or _more(_loops(correction), _loops(answer), 1)
    )


#: Code point ranges of the scripts :func:`language_changed` tells apart.
_SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"), (0x0370, 0x03FF, "greek"), (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"), (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0E00, 0x0E7F, "thai"), (0x1100, 0x11FF, "hangul"),
    (0x3040, 0x30FF, "kana"), (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xAC00, 0xD7AF, "hangul"),
)
MIN_SCRIPT_LETTERS = 12
_STOPWORD_LISTS = {
    "en": "the and is are of to in that it for with you this was on be not have",
    "fr": "le la les et est des une du que pour dans pas vous sur au avec sont",
    "de": "der die das und ist nicht ein eine zu mit den sie ich auf für es sind",
    "es": "el la los las y es que de en un una por para con no se del",
    "it": "il la di e che è per un una non sono con del della gli le",
    "pt": "o a os as e de que em um uma para com não do da é são",
    "nl": "de het een en is van dat niet op te zijn met voor ik je",
}
_STOPWORDS = {lang: frozenset(words.split()) for lang, words in _STOPWORD_LISTS.items()}


def _script(text: str) -> str | None:
    counts: Counter[str] = Counter()
    for char in text:
        if not char.isalpha():
            continue
        code = ord(char)
        for low, high, name in _SCRIPTS:
            if low <= code <= high:
                counts[name] += 1
                break
    if sum(counts.values()) < MIN_SCRIPT_LETTERS:
        return None
    script = counts.most_common(1)[0][0]
    return "cjk" if script in ("han", "kana") else script  # Japanese mixes kana and Han


def _latin_language(text: str) -> str | None:
    words = [w.casefold() for w in re.findall(r"[^\W\d_]+", text)]
    hits = sorted(((sum(w in stop for w in words), lang) for lang, stop in _STOPWORDS.items()), reverse=True)
    (best, lang), (second, _) = hits[0], hits[1]
    return lang if best >= 3 and best >= 2 * second else None


def language_changed(answer: str, correction: str) -> bool:
    """Whether ``correction`` is written in another script, or (Latin script) another language, than ``answer``."""
    before, after = _script(answer), _script(correction)
    if before is None or after is None:
        return False
    if before != after:
        return True
    if before != "latin":
        return False
    lang_before, lang_after = _latin_language(answer), _latin_language(correction)
    return lang_before is not None and lang_after is not None and lang_before != lang_after

