"""Details that an embedding glosses over, checked before a paraphrase's answer
is reused.

Sentence embeddings place "2+2" near "2+3", "reasons to learn Rust" near
"reasons not to learn Rust" and "translate to Spanish" near "translate to
Portuguese": the words are nearly the same, the answers are not. So a semantic
hit must also agree with the stored prompt on:

- numbers (digits, and number words read as digits: "fifteen" is 15);
- negation (not, no, never, without, against, n't, ...);
- polarity: a word in one prompt whose opposite is in the other ("good" /
  "bad", "pros" / "cons", "safe" / "unsafe", "hide" / "unhide");
- languages named ("in Spanish" / "in Portuguese").

These rules are deliberately generic and small: they refuse a reuse, never
make one. Other swaps (a city, a product, a person) are left to the threshold;
tests/data/semantic_pairs.jsonl measures both (bench/semantic_quality.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


def _words(text: str) -> list[str]:
    return text.split()


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,:/]\d+)*")
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
            " seventeen eighteen nineteen twenty"
        )
    )
} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "half": "0.5",  # "one" is not here, and 1 is not counted: "one pound" is "a pound"
    "twice": "2",
    "double": "2",
    "triple": "3",
}
_NEGATIONS = frozenset(
    _words(
        "not no never none nothing nobody nowhere neither nor without against cannot cant dont doesnt didnt isnt"
        " arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt"
    )
)
# Opposites whose swap changes the answer (a plural "s" is ignored). Negative
# prefixes ("unsafe", "insensitive", "dislike", "nonprofit") are found by rule.
_OPPOSITES = [
    ("good", "bad"),
    ("best", "worst"),
    ("better", "worse"),
    ("pros", "cons"),
    ("pro", "con"),
    ("benefits", "risks"),
    ("benefits", "drawbacks"),
    ("safe", "dangerous"),
    ("safe", "toxic"),
    ("safe", "poisonous"),
    ("edible", "poisonous"),
    ("healthy", "unhealthy"),
    ("eat", "avoid"),
    ("do", "avoid"),
    ("rise", "fall"),
    ("increase", "decrease"),
    ("enable", "disable"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("import", "export"),
    ("include", "exclude"),
    ("raise", "lower"),
    ("gain", "lose"),
    ("start", "stop"),
    ("begin", "end"),
    ("add", "remove"),
    ("add", "delete"),
    ("create", "delete"),
    ("install", "uninstall"),
    ("buy", "sell"),
    ("before", "after"),
    ("more", "less"),
    ("more", "fewer"),
    ("most", "least"),
    ("high", "low"),
    ("higher", "lower"),
    ("highest", "lowest"),
    ("max", "min"),
    ("maximum", "minimum"),
    ("largest", "smallest"),
    ("biggest", "smallest"),
    ("big", "small"),
    ("large", "small"),
    ("fast", "slow"),
    ("faster", "slower"),
    ("fastest", "slowest"),
    ("cheap", "expensive"),
    ("hot", "cold"),
    ("warm", "cold"),
    ("true", "false"),
    ("open", "close"),
    ("allow", "block"),
    ("allow", "deny"),
    ("include", "exclude"),
    ("upload", "download"),
    ("first", "last"),
    ("early", "late"),
    ("win", "lose"),
    ("love", "hate"),
    ("like", "dislike"),
    ("accept", "reject"),
    ("push", "pull"),
    ("left", "right"),
    ("north", "south"),
    ("east", "west"),
    ("up", "down"),
    ("on", "off"),
    ("always", "never"),
    ("everyone", "nobody"),
    ("legal", "illegal"),
    ("valid", "invalid"),
    ("positive", "negative"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("strengths", "weaknesses"),
    ("success", "failure"),
    ("succeed", "fail"),
    ("agree", "disagree"),
    ("true", "myth"),
]
_PREFIXES = ("counter", "anti", "dis", "non", "un", "in", "im", "il", "ir")
_LANGUAGES = frozenset(
    _words(
        "english french spanish portuguese italian german dutch swedish norwegian danish finnish icelandic polish"
        " czech slovak hungarian romanian bulgarian greek turkish russian ukrainian serbian croatian arabic hebrew"
        " persian farsi hindi urdu bengali punjabi tamil telugu marathi gujarati chinese mandarin cantonese japanese"
        " korean vietnamese thai indonesian malay tagalog filipino swahili latin esperanto catalan basque welsh irish"
        " afrikaans"
    )
)


@dataclass(frozen=True)
class Details:
    numbers: tuple[str, ...]
    negated: bool
    words: frozenset[str]
    languages: frozenset[str]


@lru_cache(maxsize=4096)
def details(text: str) -> Details:
    # A typographic apostrophe (U+2019, as phones type it) reads as the keyboard's.
    tokens = _WORD.findall(text.lower().replace("\u2019", "'"))
    numbers, words, negated = [], set(), False
    for token in tokens:
        if token[0].isdigit():
            if token != "1":
                numbers.append(token.replace(",", ""))
            continue
        bare = token.replace("'", "")
        if token.endswith("n't") or bare in _NEGATIONS:
            negated = True
        if bare in _NUMBER_WORDS and _NUMBER_WORDS[bare] != "1":
            numbers.append(_NUMBER_WORDS[bare])
        words.add(bare)
    return Details(tuple(sorted(numbers)), negated, frozenset(words), frozenset(words & _LANGUAGES))


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def _stems(word: str) -> set[str]:
    """The word itself and what is left after one polarity prefix (at least 4 letters)."""
    return {word} | {word[len(p) :] for p in _PREFIXES if word.startswith(p) and len(word) - len(p) >= 4}


def _opposed(one: frozenset[str], other: frozenset[str]) -> bool:
    only_one = {_singular(w) for w in one - other}
    only_other = {_singular(w) for w in other - one}
    only_one, only_other = only_one - only_other, only_other - only_one
    if not only_one or not only_other:
        return False
    for a, b in _OPPOSITES:
        if (a in only_one and b in only_other) or (b in only_one and a in only_other):
            return True
    # "safe" / "unsafe", "like" / "dislike": one stem, a negative prefix on one side.
    stems_other = {stem for word in only_other for stem in _stems(word)}
    return any(stem in stems_other for word in only_one for stem in _stems(word))


def compatible(one: str, other: str) -> bool:
    """Whether the two prompts may share an answer as far as these details go."""
    a, b = details(one), details(other)
    if a.numbers != b.numbers or a.negated != b.negated or a.languages != b.languages:
        return False
    return not _opposed(a.words, b.words)
