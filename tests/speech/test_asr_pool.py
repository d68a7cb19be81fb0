"""Speech recognition in worker processes (bridge/speech/asr_pool.py): same transcripts as the
in-process Recognizer, sessions in parallel, a killed or wedged worker is reported and replaced, and
the point of it all: an event loop in this process keeps its 20 ms deadlines while a turn decodes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from bridge.metrics import METRICS
from bridge.speech.asr import Recognizer, RecognizerError, Transcript
from bridge.speech.asr_pool import AsrPool, AsrWorkerError, RemoteRecognizer
from tests.helpers.speech import chunks, phone_speech, silence

pytestmark = pytest.mark.slow

MENU = ["billing", "sales", "technical support", "operator", "cancel my account"]
ANSWERS = ["Technical support.", "I want to cancel my account.", "Four five six seven.", "Operator, please."]
OPEN_QUESTION = "I have a question about my last payment."


def say(text: str) -> bytes:
    return silence(300) + phone_speech(text) + silence(250)


@pytest.fixture(scope="module")
def pool() -> Iterator[AsrPool]:
    pool = AsrPool(2)
    pool.start()
    yield pool
    pool.close()


def wait_ready(pool: AsrPool, gone_pid: int = 0, timeout_s: float = 30.0) -> None:
    """Until every worker is up and ready (and `gone_pid` is no longer one of them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = pool.workers()
        up = len(workers) == pool.size and all(w.alive and w.ready.is_set() for w in workers)
        if up and gone_pid not in [w.pid for w in workers]:
            return
        time.sleep(0.05)
    raise AssertionError(f"pool not ready again: {pool.stats()}")


def run_turns(rec: Recognizer | RemoteRecognizer, sentences: list[str]) -> list[Transcript]:
    rec.set_expected(MENU)
    results = [rec.recognize(say(s)) for s in sentences]
    rec.set_expected(None)
    results.append(rec.recognize(say(OPEN_QUESTION)))
    return results


def test_pool_transcripts_equal_the_in_process_recognizer(pool: AsrPool) -> None:
    local = run_turns(Recognizer(), ANSWERS)
    remote_rec = RemoteRecognizer(pool)
    remote = run_turns(remote_rec, ANSWERS)
    remote_rec.close()
    assert [(t.text, t.search, t.in_grammar, t.audio_ms) for t in remote] == [
        (t.text, t.search, t.in_grammar, t.audio_ms) for t in local
    ]
    assert "technical support" in remote[0].text
    assert "question" in remote[-1].text


def test_partials_and_turn_order(pool: AsrPool) -> None:
    rec = RemoteRecognizer(pool)
    with pytest.raises(RecognizerError):
        rec.feed(silence(20))
    with pytest.raises(RecognizerError):
        rec.end()
    rec.set_expected(["billing", "sales"])
    rec.begin()
    with pytest.raises(RecognizerError):
        rec.set_expected(["x"])
    with pytest.raises(RecognizerError):
        rec.begin()
    partials = []
    for i, chunk in enumerate(chunks(say("Billing, please."), 20)):
        rec.feed(chunk)
        if i % 10 == 9:
            partials.append(rec.partial())
    result = rec.end()
    assert any("billing" in p for p in partials), partials
    assert "billing" in result.text
    assert rec.cmn() != ""
    rec.close()
    with pytest.raises(RecognizerError):
        rec.begin()


def test_two_sessions_in_parallel_on_both_workers(pool: AsrPool) -> None:
    wait_ready(pool)
    recs = [RemoteRecognizer(pool), RemoteRecognizer(pool)]
    assert recs[0].worker_pid != recs[1].worker_pid  # spread over the workers
    spoken = [["Billing.", "Operator."], ["Sales.", "Technical support."]]
    audio = [[say(s) for s in turns] for turns in spoken]
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def session(i: int) -> None:
        try:
            recs[i].set_expected(MENU)
            results[i] = [recs[i].recognize(pcm).text for pcm in audio[i]]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert "billing" in results[0][0], results
    assert "operator" in results[0][1], results
    assert "sales" in results[1][0], results
    assert "technical support" in results[1][1], results
    for rec in recs:
        rec.close()


def test_killed_worker_is_replaced_and_its_turn_rerun_at_once_on_a_live_worker(pool: AsrPool) -> None:
    wait_ready(pool)
    victim, bystander = RemoteRecognizer(pool), RemoteRecognizer(pool)
    assert victim.worker_pid != bystander.worker_pid
    old_pid = victim.worker_pid
    restarts = pool.restarts
    died, failed = METRICS.speech_worker_restarts.value(reason="died"), METRICS.speech_turns_failed.value()
    rerun = METRICS.speech_turns_rerun.value()
    victim.set_expected(MENU)
    bystander.set_expected(MENU)
    victim.begin()
    for chunk in chunks(say("Billing."), 20):
        victim.feed(chunk)
    os.kill(old_pid, signal.SIGKILL)
    started = time.monotonic()
    # The turn is not lost: recognised again from its audio on the live worker, without waiting for
    # the replacement to load its models (with the same expected phrases).
    text = victim.end().text
    took = time.monotonic() - started
    assert "billing" in text, text
    assert took < 3.0, f"the re-run took {took:.2f} s"
    assert victim.worker_pid == bystander.worker_pid
    assert METRICS.speech_turns_rerun.value() == rerun + 1
    assert METRICS.speech_turns_failed.value() == failed
    wait_ready(pool, gone_pid=old_pid)
    assert pool.restarts == restarts + 1
    assert METRICS.speech_worker_restarts.value(reason="died") == died + 1
    assert old_pid not in [w.pid for w in pool.workers()]
    # the other session never noticed; the victim's next turn runs on a live worker
    assert "operator" in bystander.recognize(say("Operator.")).text
    assert "sales" in victim.recognize(say("Sales.")).text
    assert victim.worker_pid != old_pid


def test_killed_worker_with_no_other_ready_worker_fails_the_turn_at_once() -> None:
    pool = AsrPool(1)
    try:
        pool.start()
        rec = RemoteRecognizer(pool)
        rec.set_expected(MENU)
        old_pid = rec.worker_pid
        failed, rerun = METRICS.speech_turns_failed.value(), METRICS.speech_turns_rerun.value()
        rec.begin()
        for chunk in chunks(say("Billing."), 20):
            rec.feed(chunk)
        os.kill(old_pid, signal.SIGKILL)
        started = time.monotonic()
        # Nothing ready to re-run it on (the replacement is still loading): the turn fails now, so the
        # engine answers with its fallback instead of waiting for a worker.
        with pytest.raises(AsrWorkerError, match=f"pid {old_pid}"):
            rec.end()
        assert time.monotonic() - started < 1.0
        assert METRICS.speech_turns_failed.value() == failed + 1
        assert METRICS.speech_turns_rerun.value() == rerun
        wait_ready(pool, gone_pid=old_pid)
        assert "sales" in rec.recognize(say("Sales.")).text
    finally:
        pool.close()


def test_wedged_worker_times_out_and_is_replaced() -> None:
    pool = AsrPool(1, end_timeout_s=1.5)
    try:
        pool.start()
        rec = RemoteRecognizer(pool)
        rec.set_expected(MENU)
        assert "billing" in rec.recognize(say("Billing.")).text
        pid = rec.worker_pid
        wedged = METRICS.speech_worker_restarts.value(reason="wedged")
        os.kill(pid, signal.SIGSTOP)  # alive but never answers
        rec.begin()
        rec.feed(say("Sales."))
        started = time.monotonic()
        with pytest.raises(AsrWorkerError, match=r"within 1\.5 s"):
            rec.end()
        assert time.monotonic() - started < 10
        wait_ready(pool, gone_pid=pid)
        assert METRICS.speech_worker_restarts.value(reason="wedged") == wedged + 1
        assert "sales" in rec.recognize(say("Sales.")).text
    finally:
        pool.close()


async def _max_lateness_ms_while(work: threading.Thread) -> float:
    """Tick on absolute 20 ms deadlines (like the RTP and Twilio pacers) until `work` ends."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    worst = 0.0
    n = 0
    work.start()
    while work.is_alive():
        n += 1
        deadline = start + n * 0.020
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        worst = max(worst, time.perf_counter() - deadline)
    await loop.run_in_executor(None, work.join)
    return worst * 1000.0


async def test_event_loop_keeps_its_deadlines_while_the_pool_decodes(pool: AsrPool) -> None:
    sentences = [*ANSWERS, OPEN_QUESTION]
    audio = {s: say(s) for s in sentences}  # synthesized before measuring

    def turns(rec: Recognizer | RemoteRecognizer) -> threading.Thread:
        def run() -> None:
            rec.set_expected(MENU)
            for s in ANSWERS:
                rec.recognize(audio[s])
            rec.set_expected(None)
            rec.recognize(audio[OPEN_QUESTION])

        return threading.Thread(target=run)

    # warm both (general decoder built, grammar searches built) so only decoding is measured
    local, remote = Recognizer(), RemoteRecognizer(pool)
    for rec in (local, remote):
        run_turns(rec, ANSWERS[:1])
    local_ms = await _max_lateness_ms_while(turns(local))
    remote_ms = await _max_lateness_ms_while(turns(remote))
    remote.close()
    message = (
        f"20 ms ticker max lateness: {remote_ms:.1f} ms with the pool, {local_ms:.1f} ms with the "
        "in-process Recognizer"
    )
    print(message)
    assert remote_ms < 30.0, message


def test_last_user_release_stops_the_workers() -> None:
    pool = AsrPool(1)
    try:
        pool.acquire()
        pool.acquire()  # two apps in one process
        pool.start()
        worker = pool.workers()[0]
        pool.release()  # one app shuts down: the other's sessions keep their worker
        assert worker.alive
        assert worker.process.is_alive()
        restarts = pool.restarts
        pool.release()
        assert not worker.process.is_alive()
        assert pool.workers() == []
        worker._reader.join(5)  # its exit has been seen: a stopped pool does not replace it
        assert pool.restarts == restarts
        assert pool.workers() == []
        rec = RemoteRecognizer(pool)  # later use starts it again
        assert rec.recognize(silence(300)).text == ""
    finally:
        pool.close()
