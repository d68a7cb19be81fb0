"""Words to options and digits: how the runner reads what the caller said. No I/O.

The one home of the DTMF keys; the spoken-digit vocabulary (`DIGIT_WORDS`, `NUMBER_WORDS`) lives
lower, in `bridge.speech.words`, shared with the recognizers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bridge.speech.words import DIGIT_WORDS, NUMBER_WORDS

if TYPE_CHECKING:
    from bridge.dialplan.schema import MenuStep

DTMF_KEYS = frozenset("0123456789*#ABCD")
_PUNCT = re.compile(r"[^\w\s]+")


def normalise(text: str) -> tuple[str, ...]:
    """Lower case, no punctuation, number words as digits, digit strings split: "One-Two!" -> ("1", "2")."""
    tokens: list[str] = []
    for word in _PUNCT.sub(" ", text.lower().replace("'", "")).split():
        if word in NUMBER_WORDS:
            tokens.append(NUMBER_WORDS[word])
        elif word.isdigit():
            tokens.extend(word)
        else:
            tokens.append(word)
    return tuple(tokens)


def option_phrases(menu: MenuStep) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Option key -> the normalised phrases that choose it (key itself + its words)."""
    out: dict[str, tuple[tuple[str, ...], ...]] = {}
    for key, opt in menu.options.items():
        phrases = [normalise(key), *(normalise(w) for w in opt.words)]
        out[key] = tuple(p for p in phrases if p)
    return out


def spoken_phrases(menu: MenuStep) -> tuple[str, ...]:
    """What the recogniser should expect: option words, and digit keys as words ("1" -> "one")."""
    seen: dict[str, None] = {}
    for key, opt in menu.options.items():
        if key.isdigit():
            seen[DIGIT_WORDS[int(key)]] = None
        elif key not in DTMF_KEYS:
            seen[" ".join(_PUNCT.sub(" ", key.lower()).split())] = None
        for w in opt.words:
            seen[" ".join(_PUNCT.sub(" ", w.lower()).split())] = None
    return tuple(p for p in seen if p)


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def match_option(menu: MenuStep, text: str) -> str | None:
    """The option key the caller's words pick, or None (no option, or two options equally well)."""
    heard = normalise(text)
    if not heard:
        return None
    best: list[tuple[int, str]] = []
    for key, phrases in option_phrases(menu).items():
        length = max((len(p) for p in phrases if _contains(heard, p)), default=0)
        if length:
            best.append((length, key))
    if not best:
        return None
    best.sort(reverse=True)
    top = [k for n, k in best if n == best[0][0]]
    targets = {menu.options[k].goto for k in top}
    return top[0] if len(targets) == 1 else None


def spoken_digits(text: str) -> str:
    """The digits in recognised speech ("four five six" -> "456"); other words are dropped."""
    return "".join(t for t in normalise(text) if t.isdigit())
