"""What the embedded engine says back: intents, FAQ, a chat-completions fallback, or a polite "sorry".

`match_turn` is the pure part (transcript -> intent / FAQ entry); `Responder.reply` adds the
optional chat-completions call (httpx, to the operator's backend the session resolved, with the key
named by that backend) and never raises: a failing model falls back to the extension's `fallback_reply`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bridge.engine.redact import error_text
from bridge.realtime.local_engine import ChatBackend, EngineExtension

if TYPE_CHECKING:
    import httpx  # ~3 MB RSS: imported by the first chat-completions request (most plans make none)

log = logging.getLogger(__name__)

DEFAULT_GREETING = "Hello, how can I help you today?"
MIN_SCORE = 0.5
# At least this share of the transcript's content words must belong to the phrase: a grammar turn forces
# out-of-grammar speech onto common words, and one stray "yes" or "bill" in it must not select an intent.
MIN_PRECISION = 0.3

TurnKind = Literal["user", "idle", "start", "tool_output"]
ReplySource = Literal[
    "intent", "faq", "chat", "fallback", "greeting", "instructions", "no_input", "tool_output"
]

_STOPWORDS_TEXT = """
a an the i i'm im me my mine we our us you your yours it its is are was were be been am do does did
to of in on at for from with about and or but so that this these those there here please just can
could would will shall should may might must have has had get got like want wanna need what when
where which who whom how why um uh er hmm oh well okay ok hi hello hey thank thanks
"""
_SYNONYMS = {
    "yeah": "yes",
    "yep": "yes",
    "yup": "yes",
    "yea": "yes",
    "sure": "yes",
    "correct": "yes",
    "nope": "no",
    "nah": "no",
    "0": "zero",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
    "7": "seven",
    "8": "eight",
    "9": "nine",
}
_WORD = re.compile(r"[a-z0-9']+")
_SAY = re.compile(
    r"^\s*(?:please\s+)?(?:say|speak|read|repeat|tell the caller)(?:\s+(?:exactly|verbatim|only))*"
    r"(?:\s+(?:this|the following)(?:\s+(?:text|sentence|message))?)?\s*[:,]?\s*(.+?)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_QUOTED = re.compile(r"[\"“](.+?)[\"”]", re.DOTALL)


def _stem(word: str) -> str:
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


_STOPWORDS = frozenset(
    form
    for word in _STOPWORDS_TEXT.split()
    for form in (word, word.replace("'", ""), _stem(word.replace("'", "")))
)


def tokens(text: str) -> list[str]:
    """Normalised words: lower case, synonyms folded (yeah -> yes, 4 -> four), crude stemming."""
    out: list[str] = []
    for raw in _WORD.findall(text.lower()):
        if len(raw) > 1 and raw.isdigit():  # Whisper writes "45678": say it digit by digit
            out.extend(_SYNONYMS[ch] for ch in raw)
            continue
        word = _SYNONYMS.get(raw, raw).replace("'", "")
        out.append(_stem(word))
    return out


def _content(words: Sequence[str]) -> set[str]:
    content = {w for w in words if w not in _STOPWORDS}
    return content or set(words)


def phrase_score(phrase: str, transcript_words: set[str], transcript_content: set[str]) -> float:
    """How well `phrase` is covered by the transcript: recall of its content words, weighed by precision."""
    words = tokens(phrase)
    phrase_content = _content(words)
    if not phrase_content:
        return 0.0
    if len(phrase_content) == 1 and len(set(words)) > 1 and not set(words) <= transcript_words:
        return 0.0  # "that's all" is more than "all": short phrases of mostly stop words must be whole
    hits = len(phrase_content & transcript_words)
    recall = hits / len(phrase_content)
    if recall < MIN_SCORE:
        return 0.0
    precision = hits / max(len(transcript_content), 1)
    if precision < MIN_PRECISION:
        return 0.0  # the phrase explains too little of what was said (out-of-grammar speech forced on it)
    return recall * (0.75 + 0.25 * min(precision, 1.0))


@dataclass(frozen=True, slots=True)
class Match:
    kind: Literal["intent", "faq"]
    index: int
    phrase: str
    score: float


def match_turn(extension: EngineExtension, transcript: str) -> Match | None:
    """The intent or FAQ entry the transcript asks for, or None when nothing scores >= MIN_SCORE."""
    words = tokens(transcript)
    if not words:
        return None
    word_set = set(words)
    content = _content(words)
    best: Match | None = None
    candidates: list[tuple[Literal["intent", "faq"], int, str]] = []
    for i, intent in enumerate(extension.intents):
        candidates.extend(("intent", i, phrase) for phrase in intent.phrases)
    for i, entry in enumerate(extension.faq):
        candidates.extend(("faq", i, question) for question in entry.questions)
    for kind, index, phrase in candidates:
        score = phrase_score(phrase, word_set, content)
        if score < MIN_SCORE:
            continue
        if (
            best is None
            or score > best.score + 1e-9
            or (abs(score - best.score) <= 1e-9 and len(phrase) > len(best.phrase))
        ):
            best = Match(kind, index, phrase, score)
    return best


def spoken_instruction(instructions: str | None) -> str | None:
    """The text to speak when response instructions read like `Say exactly: "..."`, else None."""
    if not instructions:
        return None
    found = _SAY.match(instructions)
    if not found:
        return None
    body = found.group(1).strip()
    quoted = _QUOTED.search(body)
    if quoted:
        return quoted.group(1).strip()
    return body.strip("'\"") or None


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the Realtime protocol carries it


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    tool: ToolCall | None = None
    source: ReplySource = "fallback"


@dataclass(frozen=True, slots=True)
class Turn:
    """What the responder knows when a response starts."""

    kind: TurnKind
    user_text: str = ""
    instructions: str | None = None  # response-level (out-of-band) instructions
    session_instructions: str = ""
    history: tuple[tuple[str, str], ...] = ()  # (role, text) oldest first, the current turn included
    tools: tuple[dict[str, Any], ...] = ()
    allow_tools: bool = True
    tool_output: str | None = None
    extension: EngineExtension = field(default_factory=EngineExtension)
    chat: ChatBackend | None = None  # the operator's backend for free text (resolved from the extension)


def _tool_output_message(output: str | None) -> str:
    if not output:
        return ""
    try:
        data = json.loads(output)
    except ValueError:
        return ""
    if isinstance(data, dict):
        for key in ("say", "message"):
            value = data.get(key)
            if isinstance(value, str):
                return value
    return ""


class Responder:
    """Turns a `Turn` into a `Reply`. One per process; safe to share between sessions."""

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        api_key_lookup: Callable[[str], str | None] | None = None,
        secrets: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        """`api_key_lookup(name)` gives the key a backend names (bridge.engine.backends.chat_key);
        `secrets()` the values to keep out of log lines."""
        self._http = http
        self._api_key_lookup = api_key_lookup or (lambda _name: None)
        self._secrets = secrets or (lambda: ())

    async def reply(self, turn: Turn) -> Reply:
        ext = turn.extension
        said = spoken_instruction(turn.instructions)
        if said:
            return Reply(said, source="instructions")
        if turn.kind == "idle":
            return Reply(ext.no_input_reply, source="no_input")
        if turn.kind == "tool_output":
            return Reply(_tool_output_message(turn.tool_output), source="tool_output")
        if turn.kind == "start":
            if ext.greeting:
                return Reply(ext.greeting, source="greeting")
            if turn.chat is not None and turn.instructions:
                chat = await self._chat(turn.chat, turn)
                if chat is not None:
                    return chat
            return Reply(DEFAULT_GREETING, source="greeting")
        return await self.answer(turn)

    async def answer(self, turn: Turn) -> Reply:
        ext = turn.extension
        found = match_turn(ext, turn.user_text)
        if found is not None and found.kind == "intent":
            intent = ext.intents[found.index]
            tool = None
            if intent.tool and turn.allow_tools:
                tool = ToolCall(intent.tool, json.dumps(intent.arguments, separators=(",", ":")))
            return Reply(intent.reply or "", tool, "intent")
        if found is not None:
            return Reply(ext.faq[found.index].answer, source="faq")
        if turn.chat is not None and turn.user_text.strip():
            chat = await self._chat(turn.chat, turn)
            if chat is not None:
                return chat
        return Reply(ext.fallback_reply, source="fallback")

    async def _chat(self, conf: ChatBackend, turn: Turn) -> Reply | None:
        messages: list[dict[str, Any]] = []
        system = "\n\n".join(s for s in (turn.session_instructions, turn.instructions or "") if s)
        system += "\n\nYou are speaking on the phone: answer in one or two short sentences."
        messages.append({"role": "system", "content": system.strip()})
        messages.extend({"role": role, "content": text} for role, text in turn.history if text)
        if not turn.history and turn.user_text:
            messages.append({"role": "user", "content": turn.user_text})
        body: dict[str, Any] = {"model": conf.model, "messages": messages, "max_tokens": conf.max_tokens}
        functions = [t for t in turn.tools if t.get("type") == "function" and t.get("name")]
        if functions and turn.allow_tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                    },
                }
                for t in functions
            ]
        import httpx

        headers = {}
        key = self._api_key_lookup(conf.key_env) if conf.key_env else None
        if key:
            headers["Authorization"] = "Bearer " + key
        try:
            if self._http is None:
                async with httpx.AsyncClient() as client:
                    resp = await client.post(
                        conf.endpoint, json=body, headers=headers, timeout=conf.timeout_s
                    )
            else:
                resp = await self._http.post(
                    conf.endpoint, json=body, headers=headers, timeout=conf.timeout_s
                )
            resp.raise_for_status()
            message = resp.json()["choices"][0]["message"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            secrets = (*self._secrets(), *((key,) if key else ()))
            log.warning("chat completions backend %s failed: %s", conf.id, error_text(exc, secrets))
            return None
        text = message.get("content") or ""
        tool = None
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            if fn.get("name"):
                args = fn.get("arguments")
                tool = ToolCall(str(fn["name"]), args if isinstance(args, str) else json.dumps(args or {}))
                break
        if not text.strip() and tool is None:
            return None
        return Reply(text.strip(), tool, "chat")
