"""The Prometheus text registry: exposition format, labels, histograms."""

from __future__ import annotations

import re
import threading

import pytest

from bridge.metrics import CONTENT_TYPE, METRICS, BridgeMetrics, MetricsRegistry, render

_SAMPLE_RE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9.e+-]+|Inf|NaN))$"
)


def _samples(text: str) -> dict[str, float]:
    """Every sample line as `name{labels}` -> value; fails on any line that is not valid 0.0.4."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in {"counter", "gauge", "histogram"}
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE_RE.match(line)
        assert match, line
        base = re.sub(r"_(bucket|sum|count)$", "", match["name"])
        assert match["name"] in typed or base in typed, line
        key = match["name"] + ("{" + match["labels"] + "}" if match["labels"] else "")
        samples[key] = float(match["value"].replace("Inf", "inf"))
    return samples


def test_counters_gauges_and_escaping() -> None:
    registry = MetricsRegistry()
    requests = registry.counter("t_requests_total", "Requests.\nTwo lines.", ["route", "reason"])
    active = registry.gauge("t_active", "Active things.")
    requests.inc(route="/twilio/voice", reason="ok")
    requests.inc(2, route="/twilio/voice", reason="ok")
    requests.inc(route='/a"b\\c\nd', reason="bad")
    active.set(3)
    active.dec()
    text = registry.render()
    assert "# HELP t_requests_total Requests.\\nTwo lines." in text
    samples = _samples(text)
    assert samples['t_requests_total{route="/twilio/voice",reason="ok"}'] == 3
    assert samples['t_requests_total{route="/a\\"b\\\\c\\nd",reason="bad"}'] == 1
    assert samples["t_active"] == 2
    assert requests.value(route="/twilio/voice", reason="ok") == 3


def test_histogram_buckets_are_cumulative() -> None:
    registry = MetricsRegistry()
    hist = registry.histogram("t_seconds", "Latency.", ["route"], buckets=[0.01, 0.1, 1])
    for value in (0.005, 0.01, 0.05, 0.5, 3.0):
        hist.observe(value, route="v")
    samples = _samples(registry.render())
    assert samples['t_seconds_bucket{route="v",le="0.01"}'] == 2  # le is inclusive
    assert samples['t_seconds_bucket{route="v",le="0.1"}'] == 3
    assert samples['t_seconds_bucket{route="v",le="1"}'] == 4
    assert samples['t_seconds_bucket{route="v",le="+Inf"}'] == 5
    assert samples['t_seconds_count{route="v"}'] == 5
    assert samples['t_seconds_sum{route="v"}'] == pytest.approx(3.565)
    assert hist.count(route="v") == 5


def test_misuse_is_refused() -> None:
    registry = MetricsRegistry()
    counter = registry.counter("t_total", "T.", ["leg"])
    with pytest.raises(ValueError, match="labels"):
        counter.inc(route="x")
    with pytest.raises(ValueError, match="labels"):
        counter.inc()
    with pytest.raises(ValueError, match="only go up"):
        counter.inc(-1, leg="sip")
    with pytest.raises(ValueError, match="twice"):
        registry.counter("t_total", "again")
    with pytest.raises(ValueError, match="name"):
        registry.gauge("bad-name", "x")
    with pytest.raises(ValueError, match="label"):
        registry.histogram("t_h", "x", ["le"])


def test_concurrent_increments_are_not_lost() -> None:
    registry = MetricsRegistry()
    counter = registry.counter("t_total", "T.", ["leg"])

    def work() -> None:
        for _ in range(5000):
            counter.inc(leg="sip")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value(leg="sip") == 20000


def test_bridge_metrics_render() -> None:
    metrics = BridgeMetrics()
    metrics.webhook_requests.inc(route="/twilio/voice")
    metrics.webhook_rejections.inc(route="/twilio/voice", reason="bad_signature")
    metrics.webhook_seconds.observe(0.004, route="/twilio/voice")
    metrics.active_calls.inc(leg="twilio")
    metrics.calls.inc(leg="twilio", outcome="completed")
    metrics.barge_ins.inc(leg="sip")
    metrics.upstream_errors.inc(provider="local", kind="closed")
    metrics.status_events.inc(kind="call", status="completed")
    metrics.continuations.inc(action="transfer", path="action")
    metrics.sip_registered.set(1)
    samples = _samples(metrics.render())
    assert samples['ivr_bridge_webhook_rejections_total{route="/twilio/voice",reason="bad_signature"}'] == 1
    assert samples['ivr_bridge_webhook_duration_seconds_count{route="/twilio/voice"}'] == 1
    assert samples['ivr_bridge_active_calls{leg="twilio"}'] == 1
    assert samples["ivr_bridge_sip_registration_state"] == 1
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_process_wide_registry_renders() -> None:
    assert isinstance(METRICS, BridgeMetrics)
    assert "# TYPE ivr_bridge_webhook_requests_total counter" in render()
    _samples(render())
