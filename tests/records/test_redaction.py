"""PII redaction core (no I/O): what is masked, what is left alone, and the log filter step."""

from __future__ import annotations

import logging

import pytest

from bridge import logsafe
from bridge.errors import ConfigError
from bridge.records.redaction import PiiRedactor, luhn_valid, mask_digits, parse_patterns

R = PiiRedactor()


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "378282246310005",
    ],
)
def test_luhn_valid_card_numbers_are_masked_keeping_the_last_four(number: str) -> None:
    digits = number.replace(" ", "").replace("-", "")
    out = R(f"my card is {number}, thanks")
    assert out == f"my card is [card ****{digits[-4:]}], thanks"
    assert digits not in out.replace(" ", "")


@pytest.mark.parametrize("number", ["4111111111111112", "4111 1111 1111 1112", "1234567890123"])
def test_luhn_invalid_digit_runs_are_left_alone(number: str) -> None:
    assert not luhn_valid(number.replace(" ", ""))
    assert R(f"order {number} shipped") == f"order {number} shipped"


def test_identifiers_that_happen_to_pass_luhn_are_left_alone() -> None:
    """An item or call id whose digits pass the Luhn check by chance (one in ten do) is no card."""
    assert luhn_valid("6603313701596")
    assert R("truncated item_mod_6603313701596 at 1200 ms") == "truncated item_mod_6603313701596 at 1200 ms"
    assert R("CA6603313701596") == "CA6603313701596"


def test_spoken_card_numbers_are_masked() -> None:
    said = "it's four one one one one one one one one one one one one one one one okay"
    assert R(said) == "it's [card ****1111] okay"
    assert R("four one double one one one one one one one one one one one one one") == "[card ****1111]"
    wrong = "four one one one one one one one one one one one one one one two"  # fails Luhn
    assert R(wrong) == wrong


def test_ssn_email_phone() -> None:
    assert R("ssn 123-45-6789.") == "ssn [ssn]."
    assert R("ssn 123 45 6789") == "ssn [ssn]"
    assert R("not an ssn 000-12-3456") == "not an ssn 000-12-3456"
    assert R("write to jane.doe+x@mail.example.com now") == "write to [email] now"
    for phone in ("+15551234567", "(555) 123-4567", "555-123-4567", "555.123.4567", "+442079460958"):
        assert R(f"call {phone} back") == "call [phone] back", phone


def test_ordinary_log_text_is_untouched() -> None:
    line = (
        "2024-05-01 12:00:00,123 INFO call CA0123456789abcdef0123456789abcdef on 127.0.0.1:8080 took 1234 ms"
    )
    assert R(line) == line


def test_rules_are_configurable_and_extra_patterns_apply() -> None:
    only_email = PiiRedactor(["email"], {"member_id": r"\bM\d{8}\b"})
    assert only_email("a@b.io 555-123-4567 M12345678") == "[email] 555-123-4567 [member_id]"
    assert not PiiRedactor(["none"]).enabled
    with pytest.raises(ConfigError, match="unknown rule"):
        PiiRedactor(["cards"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        PiiRedactor([], {"bad": "("})
    assert parse_patterns({"patterns": {"x": "y"}}) == {"x": "y"}
    with pytest.raises(ConfigError, match="unknown key"):
        parse_patterns({"pattern": {}})


def test_sensitive_digits_are_masked() -> None:
    assert mask_digits("123456") == "******"
    assert mask_digits("4111111111111111", keep_last=4) == "************1111"


def test_log_filter_applies_the_pii_step() -> None:
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    handler.addFilter(logsafe.SecretFilter(["supersecretvalue"]))
    logger = logging.getLogger("tests.records.pii")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    before = logsafe.pii_redactor()
    try:
        logsafe.set_pii_redactor(R)
        logger.info(
            "caller %s said card %s key %s", "+15551234567", "4111 1111 1111 1111", "supersecretvalue"
        )
        logsafe.set_pii_redactor(None)
        logger.info("caller %s", "+15551234567")
    finally:
        logsafe.set_pii_redactor(before)
        logger.removeHandler(handler)
    assert records[0] == "caller [phone] said card [card ****1111] key [redacted]"
    assert records[1] == "caller +15551234567"


def test_operator_values_are_kept_while_caller_data_around_them_is_masked() -> None:
    data = {
        "target": logsafe.OperatorValue("+15550100"),
        "result": [logsafe.OperatorValue("transfer +15550100"), "caller said +15551234567"],
        "args": {"number": "+15551234567"},  # the model's arguments: caller data, masked
    }
    assert R.data(data) == {
        "target": "+15550100",
        "result": ["transfer +15550100", "caller said [phone]"],
        "args": {"number": "[phone]"},
    }
    # A plain string with the same number is masked: only the marker says "operator configuration".
    assert R.data("+15550100") == "[phone]"
    # The marker is a str (JSON-serializable as it is) and stays masked in log text.
    assert type(R.data(logsafe.OperatorValue("x"))) is str
    assert R(f"transferred to {logsafe.OperatorValue('+15550100')}") == "transferred to [phone]"
