"""Steps as a discriminated union: each kind parses to its own model; parse errors name the step's
kind in their location; the chat-completions key may only come from the allowed settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from bridge.dialplan.schema import (
    STEP_KINDS,
    AgentStep,
    ChatCompletions,
    CollectStep,
    Dialplan,
    GotoStep,
    HangUpStep,
    HoursStep,
    MenuStep,
    PlayStep,
    SayStep,
    Step,
    StepBase,
    TransferStep,
)
from bridge.settings import CHAT_KEY_ENVS

STEP: TypeAdapter[Any] = TypeAdapter(Step)
Problems = Callable[[str], list[str]]


def errors(data: object) -> list[tuple[tuple[str | int, ...], str, str]]:
    """(loc, type, message) of every error validating `data` as one step."""
    with pytest.raises(ValidationError) as info:
        STEP.validate_python(data)
    return [(tuple(e["loc"]), e["type"], e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("data", "model"),
    [
        ({"say": "Hello."}, SayStep),
        ({"say": {"text": "Hello.", "barge_in": False}}, SayStep),
        ({"play": "/tmp/x.wav"}, PlayStep),
        ({"menu": {"prompt": "Press 1.", "options": {"1": "main"}}}, MenuStep),
        ({"collect": {"variable": "pin", "digits": 4}}, CollectStep),
        ({"hours": {"timezone": "UTC", "windows": "mon-fri 09:00-17:00", "closed": "x"}}, HoursStep),
        ({"goto": "main"}, GotoStep),
        ({"agent": {"provider": "openai"}}, AgentStep),
        ({"agent": None}, AgentStep),
        ("agent", AgentStep),
        ({"transfer": "+15550100"}, TransferStep),
        ({"hang_up": "Bye."}, HangUpStep),
        ({"hang_up": None}, HangUpStep),
        ("hang_up", HangUpStep),
    ],
)
def test_each_kind_parses_to_its_own_model(data: object, model: type[StepBase]) -> None:
    step = STEP.validate_python(data)
    assert type(step) is model
    assert step.kind == model.kind
    assert step.kind in STEP_KINDS


def test_short_forms_fill_the_models_field() -> None:
    assert STEP.validate_python({"goto": "sales"}) == GotoStep(target="sales")
    assert STEP.validate_python({"hang_up": "Bye."}) == HangUpStep(say="Bye.")
    assert STEP.validate_python({"transfer": "sip:desk@pbx"}).target == "sip:desk@pbx"


def test_a_step_model_passes_through_unchanged() -> None:
    say = SayStep(text="Built in Python.")
    plan = Dialplan.model_validate({"numbers": {"default": "main"}, "flows": {"main": [say, "hang_up"]}})
    assert plan.flows["main"][0] is say
    assert isinstance(plan.flows["main"][1], HangUpStep)


def test_an_error_inside_a_kind_is_located_under_that_kind() -> None:
    got = errors({"menu": {"prompt": "Press 1.", "options": {"1": "main"}, "retries": -1, "timout": "5s"}})
    assert (("menu", "retries"), "greater_than_equal") in [(loc, kind) for loc, kind, _ in got]
    assert (("menu", "timout"), "extra_forbidden") in [(loc, kind) for loc, kind, _ in got]
    assert len(got) == 2  # only the menu model was tried: no noise from the other kinds


def test_missing_field_of_a_kind() -> None:
    ((loc, kind, _),) = errors({"collect": {"digits": 4}})
    assert (loc, kind) == (("collect", "variable"), "missing")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"speak": "hi"}, "unknown step 'speak'; expected one of say, play, menu"),
        ({"say": "a", "goto": "main"}, "a step has exactly one kind, found say, goto"),
        ({}, "a step has exactly one kind, found none"),
        ({"say": None}, "`say:` needs a value"),
        ("say hello", "expected a step like `say: ...`, got 'say hello'"),
        (42, "expected a step: one of say, play"),
        (["say", "hi"], "expected a step: one of say, play"),
    ],
)
def test_shape_errors_are_at_the_step(data: object, message: str) -> None:
    ((loc, kind, msg),) = errors(data)
    assert loc == ()
    assert kind == "value_error"
    assert message in msg


@pytest.mark.parametrize(
    ("value", "kind"), [({"target": "main"}, "string_type"), (7, "string_type"), ("", "string_too_short")]
)
def test_goto_errors_are_at_goto(value: object, kind: str) -> None:
    ((loc, got_kind, _),) = errors({"goto": value})
    assert (loc, got_kind) == (("goto",), kind)


def test_unknown_key_lists_the_keys_of_that_kind(problems: Problems) -> None:
    got = problems("""
        numbers: {default: main}
        flows:
          main:
            - collect: {variable: pin, digits: 4, timout: 5s}
        """)
    (p,) = got
    assert "main.yaml:4 flows.main[0].collect: unknown key `timout`; expected one of: variable, digits" in p
    assert "options" not in p  # the collect step's keys, not the menu's


# ------------------------------------------------------------------ the chat-completions key


@pytest.mark.parametrize("env", CHAT_KEY_ENVS)
def test_chat_key_env_may_be_a_language_model_key(env: str) -> None:
    assert ChatCompletions(url="http://127.0.0.1:8000/v1", api_key_env=env).api_key_env == env
    assert ChatCompletions(url="http://127.0.0.1:8000/v1").api_key_env is None


@pytest.mark.parametrize("env", ["TWILIO_AUTH_TOKEN", "SIP_PASSWORD", "BRIDGE_ADMIN_TOKEN", "openai_api_key"])
def test_chat_key_env_may_not_be_another_secret(problems: Problems, env: str) -> None:
    got = problems(f"""
        numbers: {{default: main}}
        flows:
          main:
            - agent:
                provider: local
                chat_completions:
                  url: http://127.0.0.1:8000/v1
                  api_key_env: {env}
        """)
    (p,) = got
    assert p.split(" ", 1)[0].endswith("main.yaml:8")
    assert "flows.main[0].agent.chat_completions.api_key_env: " in p
    assert f"api_key_env '{env}' is not allowed; expected one of OPENAI_API_KEY, AZURE_OPENAI_API_KEY" in p
