"""Whisper in speech worker processes, with a CPU budget: live turns first, record transcripts after.

Two lanes, each one worker process (spawned, like the pocketsphinx workers of asr_pool.py) holding one
`WhisperRecognizer`, loaded when the lane is first needed, never at import or start-up:

- **live**: turns whose reply depends on what the caller said in free speech (an out-of-grammar answer,
  an open question). Runs at nice +5, like the pocketsphinx workers, with `LIVE_THREADS` threads.
- **record**: the `input_audio_transcription` text of turns the engine already answered (for call
  records and the client). Runs at nice +15 with one thread, so whenever a live job and a record job
  want the CPU at once the kernel gives the live one (and the bridge's audio path) nearly all of it.

Each lane runs one job at a time from its own bounded queue (one parent thread sends a job, waits for
its answer, sends the next). Nothing ever waits for Whisper without a bound:

- a live job is refused at once (`WhisperBusyError`) when the lane's estimated wait (jobs ahead times
  the measured mean job time, plus what is left of the running job) exceeds `live_wait_budget_s`, and
  dropped unrun when it has waited longer than that by the time its turn comes;
- a record job is refused at once when `record_queue_max` jobs are already waiting, and dropped unrun
  when older than `record_max_age_s`;
- a job that has no answer after `job_timeout_s` kills its worker (restarted for the next job).

Every refusal is answered: the engine then uses pocketsphinx's text for that turn. A lane whose model
cannot load (package missing, checksum mismatch) fails every job at once with `WhisperUnavailableError`
and tries again only after `RETRY_UNAVAILABLE_S`.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from bridge.speech.asr import RecognizerError
from bridge.speech.whisper import ComputeType, WhisperText, WhisperUnavailableError

log = logging.getLogger(__name__)

Priority = Literal["live", "record"]

# Chosen by measurement (bench/results/whisper.md, "compute type and threads").
LIVE_COMPUTE: ComputeType = "int8"
LIVE_THREADS = 2
RECORD_COMPUTE: ComputeType = "int8"
RECORD_THREADS = 1
LIVE_NICENESS = 5
RECORD_NICENESS = 15
LIVE_WAIT_BUDGET_S = 1.2  # a live job expected to wait longer is refused (pocketsphinx text instead)
RECORD_QUEUE_MAX = 16
RECORD_MAX_AGE_S = 60.0
JOB_TIMEOUT_S = 15.0
START_TIMEOUT_S = 60.0
RETRY_UNAVAILABLE_S = 60.0
INITIAL_JOB_S = 0.8  # the mean job time assumed before any job was measured


class WhisperBusyError(RecognizerError):
    """The lane is over its budget: the job was not run (the engine keeps pocketsphinx's text)."""


class WhisperWorkerError(RecognizerError):
    """The Whisper worker died or gave no answer in time."""


# ---------------------------------------------------------------------------------------------------
# pipe messages (module level so that a spawned worker unpickles them by name)


@dataclass(frozen=True, slots=True)
class WhisperJob:
    req: int
    pcm: bytes  # PCM16 8 kHz, the whole turn
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class WhisperDone:
    req: int
    result: WhisperText
    cpu_ms: float


@dataclass(frozen=True, slots=True)
class WhisperFailed:
    req: int
    reason: str


@dataclass(frozen=True, slots=True)
class WhisperReady:
    pid: int
    load_ms: float


@dataclass(frozen=True, slots=True)
class WhisperFatal:
    reason: str


def _whisper_main(
    conn: Connection, model_path: str | None, compute_type: ComputeType, threads: int, niceness: int
) -> None:
    """Entry point of a Whisper worker: load the pinned model, then answer jobs one at a time."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the model is a local directory anyway
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    with contextlib.suppress(OSError):
        os.nice(niceness)
    try:
        from bridge.speech.whisper import WhisperRecognizer

        rec = WhisperRecognizer(
            Path(model_path) if model_path else None, compute_type=compute_type, threads=threads
        )
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(WhisperFatal(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(WhisperReady(os.getpid(), rec.load_ms))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        cpu0 = time.process_time()
        try:
            result = rec.transcribe(job.pcm, prompt=job.prompt)
        except Exception as exc:
            conn.send(WhisperFailed(job.req, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(WhisperDone(job.req, result, (time.process_time() - cpu0) * 1000.0))


# ---------------------------------------------------------------------------------------------------
# parent side


@dataclass(slots=True)
class _Pending:
    job: WhisperJob
    future: Future[WhisperText]
    queued_at: float
    priority: Priority


@dataclass(slots=True)
class LaneStats:
    done: int = 0
    refused_busy: int = 0
    dropped_stale: int = 0
    failed: int = 0
    unavailable: int = 0
    restarts: int = 0
    job_ms: list[float] = field(default_factory=list)  # wall ms per job (last 200)
    cpu_ms: list[float] = field(default_factory=list)  # worker CPU ms per job (last 200)
    wait_ms: list[float] = field(default_factory=list)  # queue wait ms per job (last 200)


class WhisperLane:
    """One worker process and its bounded queue (see the module docstring). Thread-safe."""

    def __init__(
        self,
        name: Priority,
        *,
        compute_type: ComputeType,
        threads: int,
        niceness: int,
        model_path: Path | None = None,
        max_queue: int | None = None,
        max_wait_s: float | None = None,
        job_timeout_s: float = JOB_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.compute_type = compute_type
        self.threads = threads
        self.niceness = niceness
        self.model_path = model_path
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.job_timeout_s = job_timeout_s
        self.stats = LaneStats()
        self.load_ms: float | None = None
        self.pid: int | None = None
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._running: _Pending | None = None
        self._running_since = 0.0
        self._mean_job_s = INITIAL_JOB_S
        self._unavailable: tuple[float, str] | None = None  # (when, why)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ready = threading.Event()
        self._reqs = itertools.count(1)

    # -- public -----------------------------------------------------------------------------------
    def submit(self, pcm16_8k: bytes, *, prompt: str | None = None) -> Future[WhisperText]:
        """Queue a job; never blocks. The future fails with WhisperBusyError (over budget),
        WhisperUnavailableError (no model) or WhisperWorkerError (worker died / timed out)."""
        future: Future[WhisperText] = Future()
        now = time.monotonic()
        with self._cond:
            if self._unavailable is not None:
                when, why = self._unavailable
                if now - when < RETRY_UNAVAILABLE_S:
                    self.stats.unavailable += 1
                    future.set_exception(WhisperUnavailableError(why))
                    return future
                self._unavailable = None
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                self.stats.refused_busy += 1
                future.set_exception(
                    WhisperBusyError(f"whisper {self.name} lane: {self.max_queue} jobs waiting")
                )
                return future
            if self.max_wait_s is not None:
                wait_s = self.expected_wait_s(now)
                if wait_s > self.max_wait_s:
                    self.stats.refused_busy += 1
                    future.set_exception(
                        WhisperBusyError(f"whisper {self.name} lane: expected wait {wait_s:.1f} s")
                    )
                    return future
            job = WhisperJob(next(self._reqs), pcm16_8k, prompt)
            self._queue.append(_Pending(job, future, now, self.name))
            self._ensure_thread()
            self._cond.notify_all()
        return future

    def expected_wait_s(self, now: float | None = None) -> float:
        """How long a job submitted now would wait before it starts (an estimate)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            wait = len(self._queue) * self._mean_job_s
            if self._running is not None:
                wait += max(0.0, self._mean_job_s - (now - self._running_since))
            elif not self._ready.is_set():
                wait += 0.0 if self.load_ms is not None else 1.0  # the model still has to load
            return wait

    def start(self, *, wait: bool = True, timeout_s: float = START_TIMEOUT_S) -> float | None:
        """Start the worker (load the model) now; with `wait`, until it is ready. Returns the load ms."""
        with self._cond:
            self._ensure_thread()
        if wait:
            deadline = time.monotonic() + timeout_s
            while not self._ready.wait(0.05):
                with self._cond:
                    if self._unavailable is not None:
                        raise WhisperUnavailableError(self._unavailable[1])
                if time.monotonic() > deadline:
                    raise WhisperWorkerError(f"whisper {self.name} lane not ready within {timeout_s:.0f} s")
        return self.load_ms

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable[1] if self._unavailable else None

    def queued(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._running is not None else 0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for p in pending:
            _fail(p.future, WhisperWorkerError(f"whisper {self.name} lane closed"))
        thread = self._thread
        if thread is not None:
            thread.join(5.0)
        self._thread = None

    # -- the lane's thread ------------------------------------------------------------------------
    def _ensure_thread(self) -> None:  # under self._cond
        if self._closed:
            self._closed = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=f"whisper-{self.name}", daemon=True)
            self._thread.start()

    def _spawn(self) -> tuple[Any, Connection] | None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        args = (child, str(self.model_path) if self.model_path else None, self.compute_type, self.threads,
                self.niceness)  # fmt: skip
        proc = ctx.Process(target=_whisper_main, args=args, name=f"ivr-whisper-{self.name}", daemon=True)
        started = time.monotonic()
        proc.start()
        child.close()
        ok = parent.poll(START_TIMEOUT_S)
        msg = None
        if ok:
            with contextlib.suppress(EOFError, OSError):
                msg = parent.recv()
        if isinstance(msg, WhisperReady):
            self.load_ms = msg.load_ms
            self.pid = msg.pid
            self._ready.set()
            log.info(
                "whisper %s worker ready (pid %d, %s, %d threads) in %.2f s",
                self.name, msg.pid, self.compute_type, self.threads, time.monotonic() - started,
            )  # fmt: skip
            return proc, parent
        reason = msg.reason if isinstance(msg, WhisperFatal) else "the worker exited while loading the model"
        log.error("whisper %s worker could not start (pocketsphinx text used instead): %s", self.name, reason)
        with contextlib.suppress(Exception):
            proc.kill()
            proc.join(1.0)
        with contextlib.suppress(OSError):
            parent.close()
        with self._cond:
            self._unavailable = (time.monotonic(), reason)
            failed = list(self._queue)
            self._queue.clear()
        for p in failed:
            self.stats.unavailable += 1
            _fail(p.future, WhisperUnavailableError(reason))
        return None

    def _run(self) -> None:
        worker: tuple[Any, Connection] | None = None
        try:
            while True:
                if worker is None:
                    self._ready.clear()
                    worker = self._spawn()
                    if worker is None:
                        return  # unavailable; the next submit() after the retry delay starts a thread again
                proc, conn = worker
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    pending = self._queue.popleft()
                    if not pending.future.set_running_or_notify_cancel():
                        continue  # cancelled while queued (a record job promoted to the live lane)
                    now = time.monotonic()
                    waited = now - pending.queued_at
                    limit = self.max_wait_s if self.name == "live" else RECORD_MAX_AGE_S
                    if limit is not None and waited > limit:
                        self.stats.dropped_stale += 1
                        pending.future.set_exception(
                            WhisperBusyError(f"whisper {self.name} lane: waited {waited:.1f} s, dropped")
                        )
                        continue
                    self._running, self._running_since = pending, now
                    _keep(self.stats.wait_ms, waited * 1000.0)
                try:
                    conn.send(pending.job)
                    answered = conn.poll(self.job_timeout_s)
                    reply = conn.recv() if answered else None
                except (EOFError, OSError, ValueError):
                    reply = None
                    answered = True  # the worker died
                with self._cond:
                    self._running = None
                if isinstance(reply, WhisperDone):
                    elapsed = time.monotonic() - self._running_since
                    self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed
                    self.stats.done += 1
                    _keep(self.stats.job_ms, elapsed * 1000.0)
                    _keep(self.stats.cpu_ms, reply.cpu_ms)
                    pending.future.set_result(reply.result)
                    continue
                if isinstance(reply, WhisperFailed):
                    self.stats.failed += 1
                    pending.future.set_exception(WhisperWorkerError(reply.reason))
                    continue
                # died or wedged: kill it, fail this job, start a new worker for the next one
                reason = f"gave no answer within {self.job_timeout_s:.0f} s" if answered is False else "died"
                log.error("whisper %s worker (pid %s) %s; restarting it", self.name, self.pid, reason)
                self.stats.failed += 1
                self.stats.restarts += 1
                pending.future.set_exception(WhisperWorkerError(f"whisper {self.name} worker {reason}"))
                _stop(proc, conn)
                worker = None
        finally:
            if worker is not None:
                _stop(*worker)
            self._ready.clear()


def _fail(future: Future[WhisperText], exc: BaseException) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(exc)


def _stop(proc: Any, conn: Connection) -> None:
    with contextlib.suppress(Exception):
        conn.send(None)
    proc.join(2.0)
    if proc.is_alive():
        with contextlib.suppress(Exception):
            proc.kill()
            proc.join(1.0)
    with contextlib.suppress(OSError):
        conn.close()


def _keep(values: list[float], value: float, limit: int = 200) -> None:
    values.append(value)
    if len(values) > limit:
        del values[: len(values) - limit]


class WhisperLanes:
    """The live and record lanes. `transcribe(pcm, priority)` returns a Future (see WhisperLane.submit)."""

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        live_compute: ComputeType = LIVE_COMPUTE,
        live_threads: int = LIVE_THREADS,
        record_compute: ComputeType = RECORD_COMPUTE,
        record_threads: int = RECORD_THREADS,
        live_wait_budget_s: float = LIVE_WAIT_BUDGET_S,
        record_queue_max: int = RECORD_QUEUE_MAX,
    ) -> None:
        self.live = WhisperLane(
            "live", compute_type=live_compute, threads=live_threads, niceness=LIVE_NICENESS,
            model_path=model_path, max_wait_s=live_wait_budget_s,
        )  # fmt: skip
        self.record = WhisperLane(
            "record", compute_type=record_compute, threads=record_threads, niceness=RECORD_NICENESS,
            model_path=model_path, max_queue=record_queue_max,
        )  # fmt: skip

    def lane(self, priority: Priority) -> WhisperLane:
        return self.live if priority == "live" else self.record

    def transcribe(
        self, pcm16_8k: bytes, priority: Priority, *, prompt: str | None = None
    ) -> Future[WhisperText]:
        return self.lane(priority).submit(pcm16_8k, prompt=prompt)

    def warm(self, priority: Priority) -> None:
        """Start a lane's worker in the background (a session announced it will need it)."""
        self.lane(priority).start(wait=False)

    def load_report(self) -> dict[str, float]:
        return {f"whisper_{lane.name}": lane.load_ms for lane in (self.live, self.record) if lane.load_ms}

    def close(self) -> None:
        self.live.close()
        self.record.close()


_lanes: WhisperLanes | None = None
_lanes_lock = threading.Lock()


def get_whisper_lanes() -> WhisperLanes:
    """The process-wide lanes (workers start when a session first needs them)."""
    global _lanes
    if _lanes is None:
        with _lanes_lock:
            if _lanes is None:
                _lanes = WhisperLanes()
                atexit.register(_lanes.close)
    return _lanes


def future_callback(future: Future[WhisperText], fn: Callable[[WhisperText | None, str], None]) -> None:
    """Call fn(result, "") or fn(None, reason) when the future settles (on the settling thread)."""

    def done(f: Future[WhisperText]) -> None:
        exc = f.exception()
        if exc is None:
            fn(f.result(), "")
        else:
            fn(None, f"{type(exc).__name__}: {exc}")

    future.add_done_callback(done)


__all__ = [
    "WhisperBusyError",
    "WhisperLane",
    "WhisperLanes",
    "WhisperWorkerError",
    "future_callback",
    "get_whisper_lanes",
]
