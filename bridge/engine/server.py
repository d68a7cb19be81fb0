"""WebSocket shell of the embedded engine: `WS /v1/realtime` and `WS /realtime` on the bridge's port.

Each connection wraps one sans-I/O `EngineSession` (bridge/engine/session.py). Everything touching
the session runs on the event loop; the blocking work runs elsewhere and comes back through
`loop.call_soon_threadsafe`:

- speech recognition on one worker thread per session (`_AsrWorker`), which drives the session's
  decoder in an ASR worker process (bridge/speech/asr_pool.py; pocketsphinx kept warm there);
- speech synthesis on one worker thread per session (Piper, one onnxruntime thread);
- replies as asyncio tasks (the chat-completions fallback is an httpx call).

Outgoing events go through one queue and one sender task, so they leave in the order the session
produced them. A failure inside one connection closes that connection (1011) and nothing else.

Admission, before any session state exists (docs/engine.md, "Security"): the engine token as bearer
or `api-key` (compared in constant time; HTTP 401, and HTTP 429 once a source's failed attempts
exceed the per-source rate), and at most `max_engine_sessions` sessions (HTTP 503). Each refusal
answers the handshake and is counted in
/metrics. Where the engine may send requests and with which key is the operator's registry
(bridge/engine/backends.py, over the contract in bridge/realtime/local_engine.py), never a
session's choice; error events never carry a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, WebSocket
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bridge.engine.backends import ChatBackends, chat_key
from bridge.engine.commands import (
    AsrAudio,
    AsrBegin,
    AsrDiscard,
    AsrEnd,
    CancelWork,
    Command,
    Detector,
    EgressRefused,
    GenerateReply,
    Prewarm,
    SetExpected,
    Synthesize,
    WarmWhisper,
    WhisperTranscribe,
)
from bridge.engine.redact import error_text
from bridge.engine.responder import Reply, Responder
from bridge.engine.session import EngineSession
from bridge.limits import RateLimiter, Slots
from bridge.media.g711 import RATE_8K, RATE_24K
from bridge.metrics import METRICS
from bridge.realtime.local_engine import ChatBackend
from bridge.settings import Settings
from bridge.speech.whisper_pool import WhisperLanes, get_whisper_lanes

if TYPE_CHECKING:
    import httpx  # imported with the first responder (an engine session), not at start-up

log = logging.getLogger(__name__)

REALTIME_PATHS = ("/v1/realtime", "/realtime")
# A turn whose transcript takes longer than this is answered as not understood (the late text is dropped).
ASR_TIMEOUT_S = 8.0
# A reply waiting for Whisper (live lane) uses pocketsphinx's text if Whisper has not answered by then.
WHISPER_LIVE_TIMEOUT_S = 4.0


def _now_ms() -> float:
    return time.monotonic() * 1000.0


# --------------------------------------------------------------------------------------------------
# process-wide services (models are shared; sessions only hold per-call state)


@dataclass
class EngineServices:
    """What every session shares: detector/recogniser/synthesizer factories, the responder, the
    operator's chat backends, the token and the admission limits.

    The defaults use the real models (Silero VAD, pocketsphinx, Piper); tests may pass others.
    `token` defaults to `settings.engine_token`; when both are unset a random token is made, which only
    this process knows (`services.token`): the engine is never open to anyone.
    """

    settings: Settings
    detector_factory: Callable[[float, int, int], Detector] | None = None
    recognizer_factory: Callable[[], Any] | None = None
    synthesizer_factory: Callable[[int], Any] | None = None
    responder: Responder | None = None
    token: str | None = None
    chat_backends: ChatBackends = field(default_factory=ChatBackends)
    asr_timeout_s: float = ASR_TIMEOUT_S
    # Whisper lanes (bridge/speech/whisper_pool.py); None: the process-wide ones, started when a session
    # first needs them. `whisper=False` never runs Whisper (pocketsphinx's text everywhere); the default is
    # on with the default recognizer and off when a test swaps the recognizer (its text is then the text).
    whisper_lanes: WhisperLanes | None = None
    whisper: bool | None = None
    whisper_live_timeout_s: float = WHISPER_LIVE_TIMEOUT_S
    # Fixed replies (intents, FAQ, greeting, ...) are synthesized once per process and cached; the
    # session's replies are prewarmed when its extension arrives. False: synthesize every time.
    cache_replies: bool = True
    sessions: set[EngineConnection] = field(default_factory=set)
    _synths: dict[int, Any] = field(default_factory=dict)
    _synth_lock: threading.Lock = field(default_factory=threading.Lock)
    _http: httpx.AsyncClient | None = None
    _holds_asr_pool: bool = False
    slots: Slots = field(init=False)
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        if not self.token:
            self.token = self.settings.engine_token or secrets.token_urlsafe(32)
        self.slots = Slots(self.settings.max_engine_sessions)
        self.limiter = RateLimiter(self.settings.rate_per_source_per_s, self.settings.rate_burst)
        if self.detector_factory is None:
            self.detector_factory = _silero_detector
        if self.recognizer_factory is None:
            self.recognizer_factory = _pocketsphinx_recognizer
        if self.recognizer_factory is _pocketsphinx_recognizer:
            from bridge.speech.asr_pool import get_asr_pool

            get_asr_pool().acquire()  # released by close_all(): the last user stops the workers
            self._holds_asr_pool = True
        if self.synthesizer_factory is None:
            self.synthesizer_factory = _piper_synthesizer
        if self.whisper is None:
            default_asr = self.recognizer_factory is _pocketsphinx_recognizer
            self.whisper = default_asr or self.whisper_lanes is not None

    def get_responder(self) -> Responder:
        if self.responder is None:
            settings = self.settings
            import httpx

            self._http = httpx.AsyncClient()
            self.responder = Responder(
                self._http, lambda name: chat_key(settings, name), secrets=self.secret_values
            )
        return self.responder

    def secret_values(self) -> tuple[str, ...]:
        """Every secret the engine knows: kept out of error events and log lines."""
        token = (self.token,) if self.token else ()
        return (*self.settings.secret_values(), *token)

    def safe(self, message: BaseException | str) -> str:
        """An error message fit for an `error` event (no token, key or credential-bearing URL)."""
        return error_text(message, self.secret_values())

    def lanes(self) -> WhisperLanes | None:
        if not self.whisper:
            return None
        if self.whisper_lanes is None:
            self.whisper_lanes = get_whisper_lanes()
        return self.whisper_lanes

    def chat_backend(self, backend_id: str) -> ChatBackend | None:
        return self.chat_backends.get(backend_id)

    def authorized(self, headers: Headers) -> bool:
        """Does the handshake carry the engine token (`Authorization: Bearer` or `api-key`)?"""
        presented = _presented_token(headers)
        assert self.token is not None
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def synthesizer(self, rate_hz: int) -> Any:
        """One synthesizer per output rate for the whole process (they share the one voice)."""
        synth = self._synths.get(rate_hz)
        if synth is None:
            with self._synth_lock:
                synth = self._synths.get(rate_hz)
                if synth is None:
                    assert self.synthesizer_factory is not None
                    synth = self._synths[rate_hz] = self.synthesizer_factory(rate_hz)
        return synth

    def preload(self) -> dict[str, float]:
        """Load every model now (start-up), returning the load times in ms by model."""
        from bridge.speech.asr import RecognizerError
        from bridge.speech.asr_pool import get_asr_pool
        from bridge.speech.models import get_shared_models

        start = time.perf_counter()
        pooled_asr = self.recognizer_factory is _pocketsphinx_recognizer  # decoders live in the ASR pool
        failed: RecognizerError | None = None
        if pooled_asr:
            try:  # the speech workers (processes) load their models while this one loads its own
                get_asr_pool().start(wait=False)
            except RecognizerError as exc:
                failed = exc
        get_shared_models().preload(asr=not pooled_asr)
        self.synthesizer(RATE_24K)
        self.synthesizer(RATE_8K)
        report = dict(get_shared_models().load_report())
        if pooled_asr and failed is None:
            try:  # ready before the first call, so that it does not wait for them
                report.update({f"asr_worker_{k}": v for k, v in get_asr_pool().start().items()})
            except RecognizerError as exc:
                failed = exc
        if failed is not None:
            log.error("speech workers not started (sessions will retry): %s", failed)
        report["total"] = (time.perf_counter() - start) * 1000.0
        return report

    async def close_all(self, code: int = 1000, reason: str = "") -> None:
        """Close every live session (server shutdown: 1000, so the SDK's iteration ends cleanly)."""
        for conn in list(self.sessions):
            await conn.close(code, reason)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
            self.responder = None
        if self._holds_asr_pool:
            from bridge.speech.asr_pool import get_asr_pool

            self._holds_asr_pool = False
            await asyncio.to_thread(get_asr_pool().release)


def _silero_detector(threshold: float, min_speech_ms: int, min_silence_ms: int) -> Detector:
    from bridge.media.vad import SpeechDetector, create_vad

    return SpeechDetector(
        threshold=threshold,
        min_speech_ms=min_speech_ms,
        min_silence_ms=min_silence_ms,
        vad=create_vad("silero"),
        # Every window scored: the turn's audio (and its transcript) starts where Silero finds the
        # onset, and skipping quiet windows moved it enough to lose a soft first consonant
        # ("support" heard as "report": tests/engine/test_sdk.py). The gate is for barge-in.
        gate_dbfs=None,
    )


def _pocketsphinx_recognizer() -> Any:
    """pocketsphinx in the process-wide ASR worker pool: decoding never holds this process's GIL."""
    from bridge.speech.asr_pool import RemoteRecognizer

    return RemoteRecognizer()


def _piper_synthesizer(rate_hz: int) -> Any:
    from bridge.speech.tts import Synthesizer

    return Synthesizer(out_rate=rate_hz)


# --------------------------------------------------------------------------------------------------
# speech recognition worker (one thread per session)

_STOP = object()


class _AsrWorker:
    """Runs a session's recogniser on its own thread; results go back to the loop."""

    def __init__(self, services: EngineServices, conn: EngineConnection) -> None:
        self._services = services
        self._conn = conn
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-asr", daemon=True)
        self._thread.start()

    def put(self, command: Any) -> None:
        self._queue.put(command)

    def stop(self) -> None:
        self._queue.put(_STOP)

    def _run(self) -> None:
        error = ""
        try:
            assert self._services.recognizer_factory is not None
            rec = self._services.recognizer_factory()
        except Exception as exc:
            log.exception("speech recogniser unavailable")
            rec = None
            error = str(exc)
        current: str | None = None
        expected: tuple[str, ...] | None = None
        expected_dirty = False
        while True:
            cmd = self._queue.get()
            if cmd is _STOP:
                return
            if rec is None:
                if isinstance(cmd, AsrEnd):
                    self._conn.from_thread(self._conn.on_transcript_failed, cmd.item_id, error)
                continue
            try:
                if isinstance(cmd, AsrAudio):
                    if cmd.item_id == current:
                        rec.feed(cmd.pcm16_8k)
                elif isinstance(cmd, AsrBegin):
                    if current is not None:
                        rec.end()
                    if expected_dirty:
                        rec.set_expected(expected)
                        expected_dirty = False
                    rec.begin()
                    current = cmd.item_id
                    if cmd.pcm16_8k:
                        rec.feed(cmd.pcm16_8k)
                elif isinstance(cmd, AsrEnd):
                    if cmd.item_id != current:
                        continue
                    current = None
                    transcript = rec.end()
                    self._conn.from_thread(self._conn.on_transcript, cmd.item_id, transcript)
                elif isinstance(cmd, AsrDiscard):
                    if cmd.item_id == current:
                        current = None
                        rec.end()
                elif isinstance(cmd, SetExpected):
                    expected, expected_dirty = cmd.phrases, True
                    if current is None:
                        rec.set_expected(expected)
                        expected_dirty = False
            except Exception as exc:
                log.exception("speech recognition failed")
                if isinstance(cmd, AsrEnd | AsrBegin | AsrAudio):
                    failed, current = current or getattr(cmd, "item_id", None), None
                    with contextlib.suppress(Exception):
                        rec.end()
                    if failed is not None:
                        self._conn.from_thread(self._conn.on_transcript_failed, failed, str(exc))


# --------------------------------------------------------------------------------------------------
# one connection


class EngineConnection:
    """One websocket session of the embedded engine."""

    def __init__(self, ws: WebSocket, services: EngineServices, *, beta: bool, model: str) -> None:
        self.ws = ws
        self.services = services
        self.loop = asyncio.get_running_loop()
        assert services.detector_factory is not None
        self.session = EngineSession(
            services.detector_factory,
            model=model,
            beta=beta,
            now_ms=_now_ms(),
            chat_backends=services.chat_backend,
        )
        self._out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._asr = _AsrWorker(services, self)
        self._tts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-tts")
        self._synth_cancel: dict[str, threading.Event] = {}
        self._reply_tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._asr_deadlines: dict[str, asyncio.TimerHandle] = {}
        self._whisper_jobs: dict[str, tuple[str, Future[Any]]] = {}  # item -> (lane, job)
        self._whisper_deadlines: dict[str, asyncio.TimerHandle] = {}
        self.asr_timeout_s = services.asr_timeout_s

    # -- plumbing ---------------------------------------------------------------------------------

    def from_thread(self, fn: Callable[..., None], *args: Any) -> None:
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                self.loop.call_soon_threadsafe(fn, *args)

    def pump(self) -> None:
        """Move the session's events to the sender and carry out its commands."""
        session = self.session
        for event in session.take_events():
            self._out.put_nowait(event)
        for command in session.take_commands():
            self._dispatch(command)
        self._wake.set()

    def _dispatch(self, cmd: Command) -> None:
        if isinstance(cmd, AsrAudio | AsrBegin | AsrEnd | AsrDiscard | SetExpected):
            self._asr.put(cmd)
            if isinstance(cmd, AsrEnd):
                self._asr_deadlines[cmd.item_id] = self.loop.call_later(
                    self.asr_timeout_s, self._on_asr_timeout, cmd.item_id
                )
        elif isinstance(cmd, WhisperTranscribe):
            self._whisper(cmd)
        elif isinstance(cmd, WarmWhisper):
            lanes = self.services.lanes()
            if lanes is not None:
                lanes.warm(cmd.priority)
        elif isinstance(cmd, GenerateReply):
            task = asyncio.create_task(self._generate(cmd))
            self._reply_tasks[cmd.response_id] = task
        elif isinstance(cmd, Synthesize):
            cancel = threading.Event()
            self._synth_cancel[cmd.response_id] = cancel
            self._tts.submit(self._synthesize, cmd, cancel)
        elif isinstance(cmd, Prewarm):
            if self.services.cache_replies:
                self._tts.submit(self._prewarm, cmd)
        elif isinstance(cmd, CancelWork):
            ev = self._synth_cancel.pop(cmd.response_id, None)
            if ev is not None:
                ev.set()
            reply_task = self._reply_tasks.pop(cmd.response_id, None)
            if reply_task is not None:
                reply_task.cancel()
        elif isinstance(cmd, EgressRefused):
            METRICS.egress_refusals.inc()

    def _whisper(self, cmd: WhisperTranscribe) -> None:
        lanes = self.services.lanes()
        if lanes is None:
            self.session.whisper_failed(cmd.item_id, "whisper is off", _now_ms())
            self.loop.call_soon(self.pump)
            return
        previous = self._whisper_jobs.get(cmd.item_id)
        if previous is not None:
            if previous[0] == cmd.priority:
                return
            previous[1].cancel()  # promote a queued record job (a running one just races the live one)
        future = lanes.transcribe(cmd.pcm16_8k, cmd.priority)
        self._whisper_jobs[cmd.item_id] = (cmd.priority, future)
        if cmd.priority == "live":
            self._whisper_deadlines[cmd.item_id] = self.loop.call_later(
                self.services.whisper_live_timeout_s, self._on_whisper_timeout, cmd.item_id
            )
        item_id = cmd.item_id

        def settled(f: Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                self.from_thread(self.on_whisper, item_id, f, f.result().text, "")
            else:
                self.from_thread(self.on_whisper, item_id, f, None, f"{type(exc).__name__}: {exc}")

        future.add_done_callback(settled)

    def _on_whisper_timeout(self, item_id: str) -> None:
        if self._whisper_deadlines.pop(item_id, None) is None:
            return
        self._whisper_jobs.pop(item_id, None)
        log.warning("whisper gave no text for %s within %.1f s; using pocketsphinx's",
                    item_id, self.services.whisper_live_timeout_s)  # fmt: skip
        self.session.whisper_failed(item_id, "whisper timed out", _now_ms())
        self.pump()

    def on_whisper(self, item_id: str, future: Future[Any], text: str | None, reason: str) -> None:
        job = self._whisper_jobs.get(item_id)
        if job is None:
            return  # timed out already
        if job[1] is not future and text is None:
            return  # a superseded (promoted) job failed: the newer one answers
        self._whisper_jobs.pop(item_id, None)
        handle = self._whisper_deadlines.pop(item_id, None)
        if handle is not None:
            handle.cancel()
        if text is None:
            log.info("whisper gave no text for %s (%s); using pocketsphinx's", item_id, reason)
            if "Busy" in reason or "Unavailable" in reason:
                METRICS.whisper_fallbacks.inc(reason="busy" if "Busy" in reason else "unavailable")
            else:
                METRICS.whisper_fallbacks.inc(reason="failed")
            self.session.whisper_failed(item_id, self.services.safe(reason), _now_ms())
        else:
            self.session.whisper_done(item_id, text, _now_ms())
        self.pump()

    # -- results coming back ----------------------------------------------------------------------

    def _on_asr_timeout(self, item_id: str) -> None:
        if self._asr_deadlines.pop(item_id, None) is None:
            return
        log.warning(
            "speech recognition of %s took longer than %.0f s; answering without it",
            item_id,
            self.asr_timeout_s,
        )
        self.session.transcript_failed(item_id, "speech recognition timed out", _now_ms())
        self.pump()

    def on_transcript(self, item_id: str, transcript: Any) -> None:
        handle = self._asr_deadlines.pop(item_id, None)
        if handle is None:
            return  # timed out already (or an item created with its own transcript)
        handle.cancel()
        self.session.transcript_done(
            item_id,
            transcript.text,
            _now_ms(),
            audio_s=getattr(transcript, "audio_ms", 0) / 1000.0,
            in_grammar=getattr(transcript, "in_grammar", True),
        )
        self.pump()

    def on_transcript_failed(self, item_id: str, message: str) -> None:
        handle = self._asr_deadlines.pop(item_id, None)
        if handle is None:
            return
        handle.cancel()
        self.session.transcript_failed(item_id, self.services.safe(message), _now_ms())
        self.pump()

    async def _generate(self, cmd: GenerateReply) -> None:
        try:
            reply = await self.services.get_responder().reply(cmd.turn)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.exception("responder failed")
            self.session.work_failed(cmd.response_id, self.services.safe(exc), _now_ms())
            self.pump()
            return
        finally:
            self._reply_tasks.pop(cmd.response_id, None)
        self.session.reply_ready(cmd.response_id, reply, _now_ms())
        self.pump()

    def _synthesize(self, cmd: Synthesize, cancel: threading.Event) -> None:
        """Worker thread: stream sentences back to the loop as they are synthesized."""
        try:
            synth = self.services.synthesizer(cmd.rate_hz)
            cache = cmd.cacheable and self.services.cache_replies
            for sentence in synth.sentences(cmd.text):
                if cancel.is_set() or self._closed:
                    return
                audio = synth.cached(sentence) if cache else synth.render_sentence(sentence)
                if cancel.is_set() or self._closed:
                    return
                self.from_thread(self._on_audio, cmd.response_id, sentence, audio.tobytes())
            if not cancel.is_set():
                self.from_thread(self._on_synth_done, cmd.response_id)
        except Exception as exc:
            log.exception("speech synthesis failed")
            self.from_thread(self._on_synth_failed, cmd.response_id, str(exc))

    def _prewarm(self, cmd: Prewarm) -> None:
        """Worker thread: put the session's fixed replies in the process-wide prompt cache, sentence by
        sentence (the same pieces `_synthesize` looks up), so a matched intent answers without synthesis."""
        try:
            synth = self.services.synthesizer(cmd.rate_hz)
            for text in cmd.texts:
                for sentence in synth.sentences(text):
                    if self._closed:
                        return
                    synth.cached(sentence)
        except Exception:
            log.exception("prewarming replies failed")

    def _on_audio(self, response_id: str, sentence: str, pcm16: bytes) -> None:
        self.session.audio_chunk(response_id, sentence, pcm16, _now_ms())
        self.pump()

    def _on_synth_done(self, response_id: str) -> None:
        self._synth_cancel.pop(response_id, None)
        self.session.synthesis_done(response_id, _now_ms())
        self.pump()

    def _on_synth_failed(self, response_id: str, message: str) -> None:
        self._synth_cancel.pop(response_id, None)
        message = self.services.safe(message)
        self.session.work_failed(response_id, "speech synthesis failed: " + message, _now_ms())
        self.pump()

    # -- tasks ------------------------------------------------------------------------------------

    async def _sender(self) -> None:
        ws = self.ws
        dumps = json.dumps
        while True:
            event = await self._out.get()
            if event is None:
                return
            await ws.send_text(dumps(event, separators=(",", ":")))

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            deadline = self.session.next_deadline_ms()
            if deadline is None:
                await self._wake.wait()
                continue
            delay = (deadline - _now_ms()) / 1000.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
            self.session.tick(_now_ms())
            self.pump()

    async def _receiver(self) -> None:
        ws = self.ws
        session = self.session
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            session.receive(frame, _now_ms())
            self.pump()

    async def run(self) -> None:
        self.pump()  # session.created
        sender = asyncio.create_task(self._sender())
        timer = asyncio.create_task(self._timer())
        code = 1000
        try:
            await self._receiver()
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("engine session %s failed", self.session.id)
            code = 1011
        finally:
            self._shutdown_work()
            timer.cancel()
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, timeout=2.0)
            sender.cancel()
            await self.close(code)

    def _shutdown_work(self) -> None:
        self._closed = True
        for ev in self._synth_cancel.values():
            ev.set()
        for task in self._reply_tasks.values():
            task.cancel()
        for handle in (*self._asr_deadlines.values(), *self._whisper_deadlines.values()):
            handle.cancel()
        for _lane, job in self._whisper_jobs.values():
            job.cancel()
        self._asr.stop()
        self._tts.shutdown(wait=False, cancel_futures=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.services.sessions.discard(self)
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)


# --------------------------------------------------------------------------------------------------
# routing


def _presented_token(headers: Headers) -> str | None:
    """The token a client presents: `Authorization: Bearer T` (the openai SDK) or `api-key: T` (Azure)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("api-key") or None


async def _refuse(ws: WebSocket, status: int, message: str, *, retry_after_s: int | None = None) -> None:
    """Answer the handshake with an HTTP error (the openai SDK raises it from `connect()`); a close
    (HTTP 403) when the server cannot send one. Nothing of a session exists yet."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        with contextlib.suppress(Exception):
            await ws.send_denial_response(PlainTextResponse(message + "\n", status, headers=headers))
            return
    with contextlib.suppress(Exception):
        await ws.close(code=1008 if status in (401, 403) else 1013, reason=message)


async def _serve(ws: WebSocket, services: EngineServices) -> None:
    if not services.authorized(ws.headers):
        # Only failed attempts spend the source's budget: a guesser or a flood of strangers is
        # slowed to `rate_per_source_per_s`, while the bridge's own calls (all from 127.0.0.1,
        # with the token) are bounded by the session limit alone and never refused for a burst.
        source = ws.client.host if ws.client is not None else "unknown"
        if not services.limiter.allow(source, time.monotonic()):
            METRICS.admission_rejections.inc(leg="engine", reason="rate")
            await _refuse(
                ws,
                429,
                "too many failed engine connections from this address; try again later",
                retry_after_s=1,
            )
            return
        METRICS.engine_auth_failures.inc()
        await _refuse(ws, 401, "missing or wrong engine token (Authorization: Bearer BRIDGE_ENGINE_TOKEN)")
        return
    if not services.slots.try_acquire():
        METRICS.admission_rejections.inc(leg="engine", reason="max_engine_sessions")
        await _refuse(ws, 503, "the engine is at its session limit; try again later", retry_after_s=5)
        return
    try:
        beta = "realtime=v1" in ws.headers.get("openai-beta", "").replace(" ", "")
        model = ws.query_params.get("model") or services.settings.realtime_model
        await ws.accept()
        conn = EngineConnection(ws, services, beta=beta, model=model)
        services.sessions.add(conn)
        await conn.run()
    finally:
        services.slots.release()


def engine_router(settings: Settings, services: EngineServices | None = None) -> APIRouter:
    """The router serving the engine at `WS /v1/realtime` and `WS /realtime`.

    Every connection must present `services.token` (by default `settings.engine_token`).
    """
    if services is None:
        services = EngineServices(settings)
    router = APIRouter()

    async def realtime(ws: WebSocket) -> None:
        await _serve(ws, services)

    for path in REALTIME_PATHS:
        router.add_api_websocket_route(path, realtime)
    router.engine_services = services  # type: ignore[attr-defined]
    return router


def mount_engine(app: FastAPI, settings: Settings, services: EngineServices | None = None) -> EngineServices:
    """Serve the engine on `app`; returns its services (for `preload()` and `close_all()` in the lifespan)."""
    router = engine_router(settings, services)
    app.include_router(router)
    svc: EngineServices = router.engine_services  # type: ignore[attr-defined]
    app.state.engine = svc
    return svc


__all__ = [
    "REALTIME_PATHS",
    "ChatBackends",
    "EngineConnection",
    "EngineServices",
    "Reply",
    "engine_router",
    "mount_engine",
]
