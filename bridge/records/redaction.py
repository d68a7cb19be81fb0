"""PII redaction: card numbers, US SSNs, emails and phone numbers masked before anything is stored
or logged. No I/O: `PiiRedactor(rules, extra)` is built once (from settings by
`bridge.records.service.pii_redactor_from_settings`) and called on text.

Rules (names for `BRIDGE_PII_RULES`):

- `card`: 13-19 digits, optionally grouped by single spaces or dashes, that pass the Luhn check
  -> `[card ****1111]` (the last four kept, as receipts do). Digit runs that fail Luhn are left
  alone (order numbers, reference codes).
- `spoken_card`: the same said in words, as a recognizer writes it ("four one one one ...",
  "oh" for zero, "double five") -> `[card ****1111]`.
- `ssn`: `123-45-6789` / `123 45 6789` (not 000, 666 or 9xx areas) -> `[ssn]`.
- `email`: `name@domain.tld` -> `[email]`.
- `phone`: E.164 (`+15551234567`) and North American forms (`(555) 123-4567`, `555-123-4567`,
  `555.123.4567`) -> `[phone]`.
- extra named regexes (`BRIDGE_PII_PATTERNS`, a YAML file `patterns: {member_id: "M\\d{8}"}`)
  -> `[member_id]`.

`mask_digits(digits)` is what a `sensitive: true` collect step stores instead of its digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.errors import ConfigError
from bridge.logsafe import OperatorValue

BUILTIN_RULES: tuple[str, ...] = ("card", "spoken_card", "ssn", "email", "phone")

# Candidate card numbers: 13-19 digits, groups separated by one space or dash, not inside a longer
# digit run. Luhn decides.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?!\w)")  # not inside an identifier (item_123...)
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)(\d{3})([- ])(?!00)\d{2}\2(?!0000)\d{4}(?![\d-])")
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b")
_PHONE = re.compile(
    r"(?<![\w+])\+[1-9]\d{7,14}(?!\d)"  # E.164
    r"|(?<![\w(])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w])"  # NANP forms
)
_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_WORD = r"(?:zero|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple|\d)"
_SPOKEN = re.compile(r"(?i)\b" + _WORD + r"(?:[\s,.-]+" + _WORD + r"\b){12,40}")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_digits(digits: str, keep_last: int = 0) -> str:
    """What a `sensitive: true` collect step stores: every digit (and * #) replaced by `*`, except
    the last `keep_last`. `mask_digits("123456")` -> `******`."""
    keep = max(0, min(keep_last, len(digits)))
    return "*" * (len(digits) - keep) + (digits[len(digits) - keep :] if keep else "")


def _card_token(digits: str) -> str:
    return f"[card ****{digits[-4:]}]"


def _spoken_digits(text: str) -> str:
    """The digits said in `text` ("four one double one" -> "4111")."""
    out: list[str] = []
    repeat = 1
    for word in re.findall(r"[a-zA-Z]+|\d", text.lower()):
        if word in ("double", "triple"):
            repeat = 2 if word == "double" else 3
            continue
        digit = word if word.isdigit() else _DIGIT_WORDS.get(word)
        if digit is None:
            continue
        out.append(digit * repeat)
        repeat = 1
    return "".join(out)


class PiiRedactor:
    """Masks PII in text. Immutable once built; idempotent (masked text is left as it is)."""

    def __init__(self, rules: Iterable[str] = BUILTIN_RULES, extra: Mapping[str, str] | None = None) -> None:
        chosen = [r.strip().lower() for r in rules if r.strip()]
        if chosen == ["none"]:
            chosen = []
        unknown = sorted(set(chosen) - set(BUILTIN_RULES))
        if unknown:
            raise ConfigError(
                f"BRIDGE_PII_RULES: unknown rule(s) {', '.join(unknown)}; "
                f"known: {', '.join(BUILTIN_RULES)} (or none)"
            )
        self.rules: tuple[str, ...] = tuple(r for r in BUILTIN_RULES if r in chosen)
        self.extra: dict[str, re.Pattern[str]] = {}
        for name, pattern in (extra or {}).items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,40}", str(name)):
                raise ConfigError(f"BRIDGE_PII_PATTERNS: pattern name {name!r} must be a short identifier")
            try:
                self.extra[str(name)] = re.compile(str(pattern))
            except re.error as exc:
                raise ConfigError(
                    f"BRIDGE_PII_PATTERNS: pattern {name!r} is not a valid regex: {exc}"
                ) from exc

    @property
    def enabled(self) -> bool:
        return bool(self.rules or self.extra)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        rules = self.rules
        if "card" in rules:
            text = _CARD.sub(self._card, text)
        if "spoken_card" in rules:
            text = _SPOKEN.sub(self._spoken_card, text)
        if "ssn" in rules:
            text = _SSN.sub("[ssn]", text)
        if "email" in rules:
            text = _EMAIL.sub("[email]", text)
        if "phone" in rules:
            text = _PHONE.sub("[phone]", text)
        for name, pattern in self.extra.items():
            text = pattern.sub(f"[{name}]", text)
        return text

    def data(self, value: Any) -> Any:
        """`value` (JSON-like) with every string masked, except the operator's own values
        (`bridge.logsafe.OperatorValue`: a transfer target), kept as they are."""
        if isinstance(value, OperatorValue):
            return str(value)
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    @staticmethod
    def _card(match: re.Match[str]) -> str:
        raw = match.group(0)
        digits = raw.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return _card_token(digits)
        return raw

    @staticmethod
    def _spoken_card(match: re.Match[str]) -> str:
        raw = match.group(0)
        digits = _spoken_digits(raw)
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return _card_token(digits)
        return raw


def parse_rules(text: str) -> list[str]:
    """`BRIDGE_PII_RULES` as a list of names."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_patterns(doc: Any, source: str = "BRIDGE_PII_PATTERNS") -> dict[str, str]:
    """The extra patterns of a loaded YAML document `{patterns: {name: regex}}`."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping) or not isinstance(doc.get("patterns", {}), Mapping):
        raise ConfigError(f"{source}: expected a mapping `patterns: {{name: regex, ...}}`")
    unknown = set(doc) - {"patterns"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected `patterns`"
        )
    patterns = doc.get("patterns") or {}
    for name, pattern in patterns.items():
        if not isinstance(pattern, str):
            raise ConfigError(f"{source}: patterns.{name} must be a string (a regex)")
    return {str(k): v for k, v in patterns.items()}


__all__ = ["BUILTIN_RULES", "PiiRedactor", "luhn_valid", "mask_digits", "parse_patterns", "parse_rules"]
