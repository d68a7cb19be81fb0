"""Speech recognition in worker processes, so decoding never holds the bridge process's GIL.

pocketsphinx 5.1.1 keeps the GIL while it decodes (`process_raw` bursts up to ~60 ms, `end_utt`
120-190 ms), which stalls every event loop of the process: RTP pacing and the Twilio pacer of every
call included. Here the decoders live in a small pool of worker processes (default 2, one per core),
started lazily on first use (or by `EngineServices.preload()` at start-up) with the "spawn" context:
a fresh interpreter, never a fork of a process with running threads and event loops.

- Each worker hosts many sessions. A session is pinned to one worker (decoders are stateful: warm
  across turns, cepstral mean carried), assigned to the worker with the fewest sessions.
- `RemoteRecognizer` has the `Recognizer` interface the callers use (`set_expected`, `begin`, `feed`,
  `partial`, `end`, `recognize`, `cmn`) plus `close()`. `feed()` never waits for the worker: messages
  go onto a queue that one sender thread per worker drains into the pipe (consecutive audio of a
  session is joined into one message). `end()` and `partial()` wait for the answer, with timeouts; call
  them from a worker thread or an executor, never from the event loop.
- A worker that dies (or answers no `end()` within `end_timeout_s`, and is then killed) fails the
  turns of its sessions with `AsrWorkerError` (a `RecognizerError`) and is replaced at once. The next
  turn of such a session opens it again on a live worker (same mode and expected phrases; the
  cepstral mean starts again from the phone `cmninit`).
- Parent-side cost: two threads per worker and a few microseconds per message. Worker cost (measured,
  docs/asr-pool.md): ~110 MB RSS idle with the LM and dictionary loaded, plus ~8 MB per session with
  menu (domain LM) turns only and ~63 MB per session once it has had an open (general-LM) turn; a
  closed session's decoders are handed back to the system (malloc_trim).

The "spawn" start method imports the parent's `__main__` in the child unless it is a package's
`__main__` (`python -m bridge`, `python -m bench`) or guarded by `if __name__ == "__main__"` (console
scripts, pytest, uvicorn): keep any other entry-point script guarded.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.util  # registers its atexit hook (terminate children) before ours: ours runs first
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from bridge.media.g711 import FRAME_BYTES_PCM8K
from bridge.metrics import METRICS
from bridge.speech.asr import RecognizerError, Transcript
from bridge.speech.asr_messages import (
    Answer,
    Begin,
    Close,
    End,
    Expect,
    Fatal,
    Feed,
    Log,
    Open,
    Partial,
    PartialText,
    Ready,
    Reply,
    Request,
    RequestFailed,
    Stop,
    TurnEnded,
)
from bridge.speech.models import PHONE_CMNINIT

if TYPE_CHECKING:
    from bridge.speech.asr import Recognizer

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
END_TIMEOUT_S = 15.0  # no transcript by then: the worker is considered wedged and is restarted
PARTIAL_TIMEOUT_S = 1.0  # a partial that takes longer is answered "" (the worker is left alone)
START_TIMEOUT_S = 60.0  # preload(): a worker that is not ready by then is reported, not waited for
STOP_TIMEOUT_S = 3.0
WORKER_NICENESS = 5  # decoding yields the CPU to the bridge's audio path when both want it
MAX_BATCH = 64  # messages per pipe write
# A turn whose worker died is recognised again on a live, ready worker from the audio kept for it (up to
# this much; a longer turn fails as before), waiting at most RERUN_TIMEOUT_S for the transcript.
RERUN_MAX_BYTES = 30 * 16000  # 30 s of 8 kHz PCM16
RERUN_TIMEOUT_S = 3.0


class AsrWorkerError(RecognizerError):
    """The speech worker process hosting this session died, was restarted, or did not answer in time."""


# ---------------------------------------------------------------------------------------------------
# worker process side


def _worker_main(conn: Connection, niceness: int) -> None:
    """Entry point of a worker process: host many sessions' recognizers, one message at a time."""
    with contextlib.suppress(OSError):
        os.nice(niceness)
    try:
        from bridge.speech.asr import Recognizer
        from bridge.speech.models import get_shared_models

        shared = get_shared_models()
        shared.sphinx()
        shared.pronunciations()
    except BaseException as exc:  # report why, then exit: the parent fails the sessions
        with contextlib.suppress(OSError):
            conn.send([Fatal(f"{type(exc).__name__}: {exc}")])
        return
    conn.send([Ready(os.getpid(), shared.load_report())])
    sessions: dict[int, _WorkerSession] = {}
    trim = _malloc_trim()
    while True:
        try:
            batch: list[Request] = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        replies: list[Reply] = []
        for msg in batch:
            match msg:
                case Stop():
                    with contextlib.suppress(OSError):
                        conn.send(replies)
                    return
                case Open(sid, mode):
                    try:
                        sessions[sid] = _WorkerSession(Recognizer(shared, mode=mode))
                    except Exception as exc:
                        sessions[sid] = _WorkerSession(None, f"recognizer unavailable: {exc}")
                case Close(sid):
                    if sessions.pop(sid, None) is not None:
                        trim()  # hand the freed decoders back to the system (glibc keeps them otherwise)
                case _:
                    session = sessions.get(msg.sid)
                    if session is None:
                        if isinstance(msg, (End, Partial)):
                            replies.append(RequestFailed(msg.req, f"unknown speech session {msg.sid}"))
                        continue
                    answer = session.handle(msg, replies)
                    if answer is not None:
                        replies.append(answer)
                        # answer at once: a waiting end() must not sit behind the rest of the batch
                        conn.send(replies)
                        replies = []
        if replies:
            conn.send(replies)


def _malloc_trim() -> Callable[[], int]:
    """glibc's malloc_trim(0), or a no-op where there is none."""
    try:
        import ctypes

        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return functools.partial(trim, 0)
    except (OSError, AttributeError):
        return lambda: 0


class _WorkerSession:
    """One session inside a worker: its Recognizer and the error (if any) of the current turn."""

    __slots__ = ("error", "rec")

    def __init__(self, rec: Recognizer | None, error: str | None = None) -> None:
        self.rec = rec
        self.error = error  # sticky when rec is None; otherwise cleared by Begin

    def handle(self, msg: Expect | Begin | Feed | Partial | End, logs: list[Reply]) -> Answer | None:
        rec = self.rec
        match msg:
            case Feed(_, pcm):
                if self.error is None and rec is not None:
                    try:
                        rec.feed(pcm)
                    except Exception as exc:
                        self.error = f"feed failed: {exc}"
            case Partial(_, req):
                text = ""
                if self.error is None and rec is not None:
                    with contextlib.suppress(Exception):
                        text = rec.partial()
                return PartialText(req, text)
            case End(_, req):
                return self._end(req)
            case Begin():
                if rec is not None:
                    self.error = None
                    try:
                        rec.begin()
                    except Exception as exc:
                        self.error = f"begin failed: {exc}"
            case Expect(sid, phrases):
                if rec is not None:
                    try:
                        rec.set_expected(phrases)
                    except Exception as exc:  # the turn goes on with the previous search, as in process
                        logs.append(Log(logging.WARNING, f"speech session {sid}: set_expected failed: {exc}"))
        return None

    def _end(self, req: int) -> Answer:
        rec = self.rec
        if rec is None or self.error is not None:
            error = self.error or "recognizer unavailable"
            if rec is not None:
                self.error = None
                with contextlib.suppress(Exception):
                    rec.end()
            return RequestFailed(req, error)
        try:
            t = rec.end()
        except Exception as exc:
            with contextlib.suppress(Exception):
                rec.end()
            return RequestFailed(req, f"{type(exc).__name__}: {exc}")
        return TurnEnded(req, t.text, t.search, t.in_grammar, t.audio_ms, rec.cmn())


# ---------------------------------------------------------------------------------------------------
# parent side


class _Worker:
    """One worker process as the parent sees it: a pipe, a sender thread, a reader thread, the
    requests waiting for an answer. A replacement after a crash is a new _Worker."""

    def __init__(self, pool: AsrPool, index: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pool = pool
        self.index = index
        self.sessions: set[int] = set()
        self.alive = True
        self.ready = threading.Event()
        self.failure = ""  # why it died (or failed to start)
        self.wedged = False  # killed by the pool for not answering (restart_worker), not died by itself
        self.load_report: dict[str, float] = {}
        self.started_at = time.monotonic()
        self._pending: dict[int, Future[Answer]] = {}
        self._pending_lock = threading.Lock()
        self._requests = itertools.count(1)
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self._conn = parent_conn
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, pool.niceness), name=f"ivr-asr-{index}", daemon=True
        )
        self.process.start()
        child_conn.close()  # so the reader sees EOF when the child exits
        assert self.process.pid is not None  # set by start()
        self.pid: int = self.process.pid
        self._sender = threading.Thread(target=self._send_loop, name=f"asr-pool-send-{index}", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"asr-pool-read-{index}", daemon=True)
        self._sender.start()
        self._reader.start()

    # -- messages ---------------------------------------------------------------------------------
    def send(self, msg: Request) -> None:
        """Queue one message for the worker; never blocks."""
        self._queue.put(msg)

    def request(self, make: type[Partial] | type[End], sid: int, timeout_s: float) -> PartialText | TurnEnded:
        """Send a request and wait for its answer. Raises AsrWorkerError (dead, or timed out: then
        `TimeoutError` is the cause) or RecognizerError (the worker reported a failure)."""
        req = next(self._requests)
        future: Future[Answer] = Future()
        with self._pending_lock:
            if not self.alive:
                raise AsrWorkerError(self.describe_failure())
            self._pending[req] = future
        self._queue.put(make(sid, req))
        try:
            answer = future.result(timeout_s)
        except FutureTimeout as exc:
            with self._pending_lock:
                self._pending.pop(req, None)
            raise AsrWorkerError(
                f"speech worker {self.index} (pid {self.pid}) gave no {make.__name__.lower()} answer "
                f"within {timeout_s:.1f} s"
            ) from exc
        if isinstance(answer, RequestFailed):
            raise RecognizerError(answer.reason)
        return answer

    def describe_failure(self) -> str:
        return f"speech worker {self.index} (pid {self.pid}) is gone: {self.failure or 'stopped'}"

    def _send_loop(self) -> None:
        get, get_nowait, conn = self._queue.get, self._queue.get_nowait, self._conn
        while True:
            item = get()
            batch: list[Request] = [item]
            while not isinstance(item, Stop) and len(batch) < MAX_BATCH:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                last = batch[-1]
                if isinstance(item, Feed) and isinstance(last, Feed) and last.sid == item.sid:
                    batch[-1] = Feed(item.sid, last.pcm + item.pcm)  # one session's audio, joined
                else:
                    batch.append(item)
            try:
                conn.send(batch)
            except (OSError, ValueError):
                return  # the worker is gone; the reader reports it
            if isinstance(item, Stop):
                return

    def _read_loop(self) -> None:
        conn = self._conn
        while True:
            try:
                batch: list[Reply] = conn.recv()
            except (EOFError, OSError):
                break
            for msg in batch:
                match msg:
                    case PartialText(req) | TurnEnded(req) | RequestFailed(req):
                        with self._pending_lock:
                            future = self._pending.pop(req, None)
                        if future is not None:
                            future.set_result(msg)
                    case Ready(pid, load_report):
                        self.load_report = load_report
                        self.ready.set()
                        log.info(
                            "speech worker %d ready (pid %d) in %.2f s",
                            self.index, pid, time.monotonic() - self.started_at,
                        )  # fmt: skip
                    case Fatal(reason):
                        self.failure = "could not start: " + reason
                    case Log(level, text):
                        log.log(level, "speech worker %d: %s", self.index, text)
        self.process.join(timeout=1.0)
        self._died()

    def _died(self) -> None:
        with self._pending_lock:
            self.alive = False
            if not self.failure:
                code = self.process.exitcode
                self.failure = "stopped" if code == 0 else f"exited with code {code}"
            pending, self._pending = self._pending, {}
        self._queue.put(Stop())  # let the sender thread end
        for future in pending.values():
            future.set_exception(AsrWorkerError(self.describe_failure()))
        # Close the pipe only once neither thread can touch it (a closed fd number may be reused at once).
        self._sender.join(timeout=2.0)
        if not self._sender.is_alive():
            with contextlib.suppress(OSError):
                self._conn.close()
        self.pool._worker_died(self)

    def stop(self) -> None:
        """Ask the worker to exit after what is queued; the reader thread notices the exit."""
        self._queue.put(Stop())

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()

    def rss_bytes(self) -> int:
        try:
            import psutil

            return int(psutil.Process(self.pid).memory_info().rss)
        except Exception:
            return 0


class AsrPool:
    """A pool of speech worker processes. Thread-safe. Started lazily; `close()` stops it, and later
    use starts it again."""

    def __init__(self, workers: int = DEFAULT_WORKERS, *, niceness: int = WORKER_NICENESS,
                 end_timeout_s: float = END_TIMEOUT_S) -> None:  # fmt: skip
        if workers < 1:
            raise RecognizerError(f"an ASR pool needs at least one worker, got {workers}")
        self.size = workers
        self.niceness = niceness
        self.end_timeout_s = end_timeout_s
        self._lock = threading.Lock()  # slots (held while a worker process is spawned)
        self._map_lock = threading.Lock()  # session -> worker map (held briefly: close() runs on loops)
        self._slots: list[_Worker | None] = [None] * workers
        self._session_worker: dict[int, _Worker] = {}
        self._sessions = itertools.count(1)
        self._users = 0
        self.restarts = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout_s: float = START_TIMEOUT_S) -> dict[str, float]:
        """Start every worker not running yet; with `wait`, until each has loaded its models.
        Returns the slowest worker's model load times (ms). Raises AsrWorkerError if one fails."""
        with self._lock:
            workers = [self._ensure(i) for i in range(self.size)]
        if not wait:
            return {}
        deadline = time.monotonic() + timeout_s
        report: dict[str, float] = {}
        for worker in workers:
            while not worker.ready.wait(0.05):
                if not worker.alive:
                    raise AsrWorkerError(worker.describe_failure())
                if time.monotonic() > deadline:
                    raise AsrWorkerError(f"speech worker {worker.index} not ready within {timeout_s:.0f} s")
            for name, ms in worker.load_report.items():
                report[name] = max(report.get(name, 0.0), ms)
        return report

    def acquire(self) -> None:
        """Count one user (an app's engine services). The last `release()` closes the pool, so one
        app shutting down never stops the workers under another app of the same process."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            last = self._users == 0
        if last:
            self.close()

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every worker (pending requests fail with AsrWorkerError)."""
        with self._lock:
            workers = [w for w in self._slots if w is not None]
            self._slots = [None] * self.size
            with self._map_lock:
                self._session_worker.clear()
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.kill()
                worker.process.join(1.0)

    def _ensure(self, index: int) -> _Worker:  # under self._lock
        worker = self._slots[index]
        if worker is None or not worker.alive:
            if worker is not None:  # died: replaced here when a session needs it before its reader did
                self._count_restart(worker)
            worker = self._slots[index] = _Worker(self, index)
        return worker

    def _count_restart(self, worker: _Worker) -> None:  # under self._lock, once per dead worker replaced
        if worker.ready.is_set():
            log.error("%s; starting a new one", worker.describe_failure())
            self.restarts += 1
            METRICS.speech_worker_restarts.inc(reason="wedged" if worker.wedged else "died")

    def _worker_died(self, worker: _Worker) -> None:
        """Reader thread of a dead worker: forget its sessions and replace it if it was serving."""
        with self._map_lock:
            for sid in worker.sessions:
                if self._session_worker.get(sid) is worker:
                    del self._session_worker[sid]
        with self._lock:
            if self._slots[worker.index] is not worker:
                return  # closed, or already replaced (and counted) by `_ensure`
            if not worker.ready.is_set():
                self._slots[worker.index] = None  # failed to start: the next session tries again
                log.error("%s", worker.describe_failure())
                return
            self._count_restart(worker)
            self._slots[worker.index] = _Worker(self, worker.index)

    def restart_worker(self, worker: _Worker, reason: str) -> None:
        """Kill a wedged worker; its reader thread fails its sessions and starts a replacement."""
        log.error("restarting speech worker %d (pid %d): %s", worker.index, worker.pid, reason)
        worker.failure = reason
        worker.wedged = True
        worker.kill()

    # -- sessions ---------------------------------------------------------------------------------
    def open_session(self, mode: str) -> tuple[int, _Worker]:
        """Pin a new session to the worker with the fewest sessions (starting workers as needed)."""
        sid = next(self._sessions)
        return sid, self.reopen_session(sid, mode)

    def reopen_session(self, sid: int, mode: str) -> _Worker:
        with self._lock:
            for i in range(self.size):
                self._ensure(i)
            live = [w for w in self._slots if w is not None]
            worker = min(live, key=lambda w: (not w.ready.is_set(), len(w.sessions)))
            with self._map_lock:
                worker.sessions.add(sid)
                self._session_worker[sid] = worker
        worker.send(Open(sid, mode))
        return worker

    def close_session(self, sid: int) -> None:
        """Free a session's decoders in its worker. Never waits for a spawn (safe on an event loop)."""
        with self._map_lock:
            worker = self._session_worker.pop(sid, None)
            if worker is not None:
                worker.sessions.discard(sid)
        if worker is not None and worker.alive:
            worker.send(Close(sid))

    # -- introspection ----------------------------------------------------------------------------
    def workers(self) -> list[_Worker]:
        with self._lock:
            return [w for w in self._slots if w is not None]

    def stats(self) -> list[dict[str, Any]]:
        """Per worker: index, pid, ready, sessions, rss_bytes (for logs and benchmarks)."""
        return [
            {"index": w.index, "pid": w.pid, "ready": w.ready.is_set(), "sessions": len(w.sessions),
             "rss_bytes": w.rss_bytes()}
            for w in self.workers()
        ]  # fmt: skip


class RemoteRecognizer:
    """A `Recognizer` whose decoders live in a pool worker. Not thread-safe: one thread per session,
    exactly like `Recognizer`. `end()`/`partial()` block (call them off the event loop)."""

    def __init__(self, pool: AsrPool | None = None, *, mode: str = "lm") -> None:
        if mode not in ("lm", "jsgf"):
            raise RecognizerError(f"unknown recognizer mode {mode!r}: expected 'lm' or 'jsgf'")
        self.mode = mode
        self._pool = pool or get_asr_pool()
        self._sid, self._worker = self._pool.open_session(mode)
        self._expected: tuple[str, ...] | None = None
        self._cmn = PHONE_CMNINIT
        self._turn_worker: _Worker | None = None  # set between begin() and end()
        self._turn_audio: list[bytes] | None = None  # the turn's audio, for a re-run if its worker dies
        self._turn_bytes = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, self._pool.close_session, self._sid)

    @property
    def worker_pid(self) -> int:
        return self._worker.pid

    def _live_worker(self) -> _Worker:
        if self._closed:
            raise RecognizerError("recognizer used after close()")
        if not self._worker.alive:  # the worker died between turns: open the session again
            self._worker = self._pool.reopen_session(self._sid, self.mode)
            if self._expected:
                self._worker.send(Expect(self._sid, self._expected))
        return self._worker

    def set_expected(self, phrases: Sequence[str] | None) -> None:
        """As `Recognizer.set_expected` (takes effect at the next begin()); built in the worker."""
        if self._turn_worker is not None:
            raise RecognizerError("set_expected() during a turn: call end() first")
        self._expected = tuple(phrases) if phrases else None
        self._live_worker().send(Expect(self._sid, self._expected))

    def begin(self) -> None:
        if self._turn_worker is not None:
            raise RecognizerError("begin() twice without end()")
        worker = self._live_worker()
        worker.send(Begin(self._sid))
        self._turn_worker = worker
        self._turn_audio, self._turn_bytes = [], 0

    def feed(self, pcm16_8k: bytes) -> None:
        """Queue audio for the worker; never waits. Audio for a dead worker is dropped (end() says so)."""
        worker = self._turn_worker
        if worker is None:
            raise RecognizerError("feed() outside a turn: call begin() first")
        if worker.alive and pcm16_8k:
            worker.send(Feed(self._sid, pcm16_8k))
        if self._turn_audio is not None:
            self._turn_bytes += len(pcm16_8k)
            if self._turn_bytes <= RERUN_MAX_BYTES:
                self._turn_audio.append(pcm16_8k)
            else:
                self._turn_audio = None  # too long to re-run: a death now fails the turn

    def partial(self) -> str:
        """The best hypothesis so far ("" outside a turn, or when the worker is slow or gone)."""
        worker = self._turn_worker
        if worker is None:
            return ""
        try:
            answer = worker.request(Partial, self._sid, PARTIAL_TIMEOUT_S)
        except RecognizerError:
            return ""
        return answer.text

    def end(self) -> Transcript:
        """Finish the turn and wait for its transcript. When the worker died during the turn, the turn
        is recognised again at once on a live, ready worker (the session moves there), from the audio
        kept for it. Raises AsrWorkerError when that is not possible (no ready worker, a turn longer
        than RERUN_MAX_BYTES, the re-run failed too) or when the worker gave no answer within the
        pool's `end_timeout_s` (it is then restarted)."""
        worker = self._turn_worker
        if worker is None:
            raise RecognizerError("end() without begin()")
        self._turn_worker = None
        audio, self._turn_audio = self._turn_audio, None
        start = time.perf_counter()
        try:
            answer = worker.request(End, self._sid, self._pool.end_timeout_s)
        except AsrWorkerError as exc:
            wedged = isinstance(exc.__cause__, FutureTimeout) and worker.alive
            if wedged:
                self._pool.restart_worker(worker, str(exc))
            elif audio is not None and (rerun := self._rerun(b"".join(audio), start)) is not None:
                METRICS.speech_turns_rerun.inc()
                return rerun
            METRICS.speech_turns_failed.inc()
            raise
        return self._transcript(worker, answer, start)

    def _rerun(self, pcm16_8k: bytes, start: float) -> Transcript | None:
        """The turn again on a live worker that is ready now (never waits for a spawn); None if none is
        or it fails too. The session stays on that worker (its cepstral mean restarts from cmninit)."""
        try:
            worker = self._live_worker()  # reopens the session on the readiest worker (Expect re-sent)
            if not worker.ready.is_set() or not worker.alive:
                return None
            worker.send(Begin(self._sid))
            if pcm16_8k:
                worker.send(Feed(self._sid, pcm16_8k))
            answer = worker.request(End, self._sid, min(RERUN_TIMEOUT_S, self._pool.end_timeout_s))
            transcript = self._transcript(worker, answer, start)
        except RecognizerError as exc:
            log.warning("re-running a turn after its speech worker died failed: %s", exc)
            return None
        log.info("a turn whose speech worker died was recognised again on worker %d", worker.index)
        return transcript

    def _transcript(self, worker: _Worker, answer: Answer, start: float) -> Transcript:
        if not isinstance(answer, TurnEnded):
            raise RecognizerError(f"speech worker {worker.index} answered end() with {type(answer).__name__}")
        self._cmn = answer.cmn
        return Transcript(
            text=answer.text,
            search=answer.search,
            elapsed_ms=(time.perf_counter() - start) * 1000.0,
            in_grammar=answer.in_grammar,
            audio_ms=answer.audio_ms,
        )

    def recognize(self, pcm16_8k: bytes, chunk_bytes: int = FRAME_BYTES_PCM8K) -> Transcript:
        """One whole turn in one call (begin, feed in 20 ms chunks, end)."""
        self.begin()
        for i in range(0, len(pcm16_8k), chunk_bytes):
            self.feed(pcm16_8k[i : i + chunk_bytes])
        return self.end()

    def cmn(self) -> str:
        """The cepstral mean the session's next turn starts from (as of the last end())."""
        return self._cmn

    def close(self) -> None:
        """Free the session's decoders in the worker (also done when the recognizer is collected)."""
        self._closed = True
        self._turn_worker = None
        self._finalizer()


# ---------------------------------------------------------------------------------------------------
# the process-wide pool

_pool: AsrPool | None = None
_pool_lock = threading.Lock()


def get_asr_pool() -> AsrPool:
    """The process-wide pool (created on first use; workers start on first session or preload)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = AsrPool()
                atexit.register(_pool.close)
    return _pool


__all__ = [
    "DEFAULT_WORKERS",
    "AsrPool",
    "AsrWorkerError",
    "RemoteRecognizer",
    "get_asr_pool",
]
