"""The moderation shell of one call: the blocklist at once, the moderation endpoint in the background.

`Moderator.check(sentences)` is awaited by the call's observer for every sentence of the bot's
output transcript as it completes (bridge/call/moderation.py splits them). A blocklist hit is
handled before `check` returns, that is before the agent link reads the next event (the audio that
follows the words): `on_flag` cuts the reply like a barge-in. Sentences also go to the moderation
endpoint (OpenAI's `POST /v1/moderations` shape, `BRIDGE_MODERATION_URL`, bearer `OPENAI_API_KEY`)
when the dialplan asks for it; each request runs in its own task (bounded by `ENDPOINT_TIMEOUT_S`),
and a flagged answer cuts whatever of the reply is still unheard. An endpoint that fails lets the
words through (logged once per call): moderation must not take the call down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.call.moderation import Blocklist, Sentence

log = logging.getLogger(__name__)

ENDPOINT_TIMEOUT_S = 3.0
MAX_PENDING_CHECKS = 16


@dataclass(frozen=True, slots=True)
class Flag:
    sentence: Sentence
    source: str  # "blocklist" | "endpoint"
    rule: str  # the pattern that matched, or the endpoint's flagged categories


class ModerationEndpoint:
    """OpenAI's moderation API (or anything answering its shape) at an operator-configured URL."""

    def __init__(self, url: str, key: str, *, model: str = "omni-moderation-latest") -> None:
        self.url = url
        self.model = model
        self._client = httpx.AsyncClient(
            timeout=ENDPOINT_TIMEOUT_S, headers={"Authorization": f"Bearer {key}"}, follow_redirects=False
        )

    async def flagged(self, text: str) -> str | None:
        """The flagged categories (comma-separated), or None when the text is not flagged."""
        r = await self._client.post(self.url, json={"model": self.model, "input": text})
        r.raise_for_status()
        body: Any = r.json()
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise ValueError("moderation answer has no results list")
        flagged = [res for res in results if isinstance(res, dict) and res.get("flagged")]
        if not flagged:
            return None
        categories = flagged[0].get("categories") or {}
        names = [name for name, on in categories.items() if on] if isinstance(categories, dict) else []
        return ",".join(names) or "flagged"

    async def aclose(self) -> None:
        await self._client.aclose()


class Moderator:
    """Checks the bot's sentences; `on_flag` is awaited once per flagged item."""

    def __init__(
        self,
        blocklist: Blocklist,
        on_flag: Callable[[Flag], Awaitable[None]],
        *,
        endpoint: ModerationEndpoint | None = None,
        call_id: str = "?",
    ) -> None:
        self.blocklist = blocklist
        self.endpoint = endpoint
        self._on_flag = on_flag
        self._call_id = call_id
        self._flagged_items: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoint_failed = False
        self.checked = 0

    async def check(self, sentences: list[Sentence]) -> None:
        for sentence in sentences:
            if sentence.item_id in self._flagged_items:
                return
            self.checked += 1
            rule = self.blocklist.match(sentence.text) if self.blocklist else None
            if rule is not None:
                await self._flag(Flag(sentence, "blocklist", rule))
                return
            if self.endpoint is not None and len(self._tasks) < MAX_PENDING_CHECKS:
                task = asyncio.create_task(self._ask(self.endpoint, sentence))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _ask(self, endpoint: ModerationEndpoint, sentence: Sentence) -> None:
        try:
            categories = await endpoint.flagged(sentence.text)
        except (httpx.HTTPError, ValueError) as exc:
            if not self._endpoint_failed:
                self._endpoint_failed = True
                log.warning("call %s: moderation endpoint failed (%s); words not checked", self._call_id, exc)
            return
        if categories is not None:
            await self._flag(Flag(sentence, "endpoint", categories))

    async def _flag(self, flag: Flag) -> None:
        if flag.sentence.item_id in self._flagged_items:
            return
        self._flagged_items.add(flag.sentence.item_id)
        await self._on_flag(flag)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.endpoint is not None:
            await self.endpoint.aclose()
