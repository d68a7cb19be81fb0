"""Spoken-digit words: the one home of how digits are said, for the recognizers and the dialplan.

`bridge.speech.asr` builds grammars from them; `bridge.dialplan.matching` reads them back into
digits. No I/O.
"""

from __future__ import annotations

# "zero" .. "nine": DIGIT_WORDS[d] is how the digit d is said.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Spoken words that mean a digit (with the "oh" of phone numbers).
NUMBER_WORDS: dict[str, str] = {
    **{word: str(digit) for digit, word in enumerate(DIGIT_WORDS)},
    "oh": "0",
    "o": "0",
}
