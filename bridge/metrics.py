"""The bridge's metrics, rendered in the Prometheus text exposition format (0.0.4) for GET /metrics.

A deliberately small registry (no dependency): counters, gauges and histograms with fixed label
names. Updates take a lock (the SIP leg updates from pyVoIP threads) and allocate nothing but the
label tuple; nothing here is meant for per-frame use on the audio path.

Use the process-wide `METRICS` (`from bridge.metrics import METRICS`) and `render()`; tests build
their own `BridgeMetrics()`.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DEFAULT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TURN_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# The stages of a turn's latency (`turn_stage_seconds{stage=...}`), in call order:
# caller stopped speaking (bridge VAD) -> upstream speech_stopped -> first audio delta ->
# first audio played at the caller (mark); "total" is caller stopped -> played.
TURN_STAGES = ("vad_to_upstream_stop", "upstream_stop_to_first_delta", "first_delta_to_played", "total")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labels:
            if not _LABEL_RE.match(label) or label == "le":
                raise ValueError(f"bad label name {label!r} for {name}")
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        try:
            return tuple(str(labels[name]) for name in self.label_names)
        except KeyError as exc:
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}") from exc

    def header(self) -> list[str]:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class _Values(_Metric):
    """A metric that is one number per label set (counters and gauges)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def _add(self, amount: float, labels: dict[str, str]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(self.label_names, k)} {_format_value(v)}" for k, v in items]


class Counter(_Values):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up")
        self._add(amount, labels)


class Gauge(_Values):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._add(-amount, labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS_S,
    ) -> None:
        super().__init__(name, help_text, labels)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds:
            raise ValueError(f"{name}: a histogram needs at least one finite bucket")
        self.bounds = (*bounds, math.inf)
        # per label set: [count per bucket (not cumulative)..., sum, count]
        self._values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = 0
        bounds = self.bounds
        while value > bounds[index]:
            index += 1
        with self._lock:
            row = self._values.get(key)
            if row is None:
                row = self._values[key] = [0.0] * (len(bounds) + 2)
            row[index] += 1
            row[-2] += value
            row[-1] += 1

    def count(self, **labels: str) -> int:
        row = self._values.get(self._key(labels))
        return 0 if row is None else int(row[-1])

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._values.items())
        lines: list[str] = []
        for key, row in items:
            cumulative = 0.0
            for bound, n in zip(self.bounds, row, strict=False):
                cumulative += n
                le = 'le="' + _format_value(bound) + '"'
                lines.append(
                    f"{self.name}_bucket{_labels_text(self.label_names, key, le)} {_format_value(cumulative)}"
                )
            lines.append(f"{self.name}_sum{_labels_text(self.label_names, key)} {_format_value(row[-2])}")
            lines.append(f"{self.name}_count{_labels_text(self.label_names, key)} {_format_value(row[-1])}")
        return lines


class MetricsRegistry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labels)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS_S,
    ) -> Histogram:
        metric = Histogram(name, help_text, labels, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


class BridgeMetrics(MetricsRegistry):
    """Every metric the bridge exports. Label values are short, fixed vocabularies (never CallSids)."""

    def __init__(self) -> None:
        super().__init__()
        p = "ivr_bridge_"
        self.webhook_requests = self.counter(
            p + "webhook_requests_total", "Twilio webhook and stream-upgrade requests received.", ["route"]
        )
        self.webhook_rejections = self.counter(
            p + "webhook_rejections_total",
            "Twilio requests refused (bad or missing signature, bad token, oversized or non-form body, ...).",
            ["route", "reason"],
        )
        self.webhook_seconds = self.histogram(
            p + "webhook_duration_seconds", "Time to answer a Twilio webhook.", ["route"]
        )
        self.active_calls = self.gauge(p + "active_calls", "Calls in progress.", ["leg"])
        self.calls = self.counter(
            p + "calls_total", "Calls finished, by leg and outcome.", ["leg", "outcome"]
        )
        self.barge_ins = self.counter(p + "barge_ins_total", "Caller speech that stopped the bot.", ["leg"])
        self.upstream_errors = self.counter(
            p + "upstream_errors_total", "Realtime session failures.", ["provider", "kind"]
        )
        self.status_events = self.counter(
            p + "twilio_status_events_total", "Twilio call and stream status callbacks.", ["kind", "status"]
        )
        self.continuations = self.counter(
            p + "twilio_continuations_total", "Transfers and hang-ups handed to Twilio.", ["action", "path"]
        )
        self.sip_registered = self.gauge(
            p + "sip_registration_state", "1 while the SIP leg is registered with its server, else 0."
        )
        self.admission_rejections = self.counter(
            p + "admission_rejections_total",
            "Calls and engine sessions refused because a limit was reached (max_calls, max_engine_sessions,"
            " per-source rate).",
            ["leg", "reason"],
        )
        self.sip_untrusted = self.counter(
            p + "sip_untrusted_requests_total",
            "SIP requests from sources that are neither the registrar nor a trusted peer.",
            ["method", "action"],
        )
        self.engine_auth_failures = self.counter(
            p + "engine_auth_failures_total",
            "Embedded-engine connections refused for a missing or wrong token.",
        )
        self.egress_refusals = self.counter(
            p + "engine_egress_refusals_total",
            "Session events that tried to choose an outbound endpoint or key (refused).",
        )
        self.whisper_fallbacks = self.counter(
            p + "engine_whisper_fallbacks_total",
            "Engine turns that used pocketsphinx's text because Whisper could not answer"
            " (busy: over its CPU budget; unavailable: model package missing; failed).",
            ["reason"],
        )
        # Call records (bridge/records): writes never block a call; what could not be kept is counted.
        self.records_written = self.counter(p + "records_written_total", "Call-record rows stored.", ["kind"])
        self.records_lost = self.counter(
            p + "records_lost_total",
            "Call-record rows or recording audio given up (queue_full, rejected by the database,"
            " shutdown before the database came back, disk errors).",
            ["kind", "reason"],
        )
        self.records_write_retries = self.counter(
            p + "records_write_retries_total", "Record batches retried after a database error."
        )
        self.records_queue_depth = self.gauge(
            p + "records_queue_depth", "Call-record rows waiting to be written."
        )
        self.records_write_seconds = self.histogram(
            p + "records_write_seconds",
            "Time to store one batch of call-record rows (one transaction).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
        )
        self.records_commit_latency_seconds = self.histogram(
            p + "records_commit_latency_seconds",
            "Per call-record row: from being handed to the writer (enqueue) to its transaction's commit.",
            buckets=(
                0.0005,
                0.001,
                0.002,
                0.003,
                0.005,
                0.0075,
                0.01,
                0.015,
                0.02,
                0.03,
                0.05,
                0.075,
                0.1,
                0.15,
                0.2,
                0.3,
                0.5,
                0.75,
                1.0,
                1.5,
                2.0,
                3.0,
                5.0,
                10.0,
                30.0,
            ),
        )
        self.turn_stage_seconds = self.histogram(
            p + "turn_stage_seconds",
            "Agent turn latency by stage (vad_to_upstream_stop, upstream_stop_to_first_delta,"
            " first_delta_to_played, total).",
            ["stage"],
            buckets=TURN_BUCKETS_S,
        )
        # Resilience (docs/resilience.md): sessions lost and regained, failovers, rollovers, drops.
        self.upstream_drops = self.counter(p + "upstream_drops_total", "Realtime sessions lost mid-call.")
        self.upstream_reconnects = self.counter(
            p + "upstream_reconnects_total", "Realtime sessions regained after a loss, by plan.", ["plan"]
        )
        self.upstream_failovers = self.counter(
            p + "upstream_failovers_total", "Calls moved to their fallback provider."
        )
        self.upstream_rollovers = self.counter(
            p + "upstream_rollovers_total", "Realtime sessions replaced before the provider's session cap."
        )
        self.upstream_audio_dropped = self.counter(
            p + "upstream_audio_dropped_frames_total",
            "20 ms caller frames dropped because the realtime server was not reading (outbox full).",
        )
        self.drain_state = self.gauge(
            p + "draining", "1 while the process drains calls before exiting, else 0."
        )
        # Scale-out (docs/cluster.md): the shared state in Redis, and this instance's link to it.
        self.cluster_degraded = self.gauge(
            p + "cluster_degraded",
            "1 while BRIDGE_REDIS_URL is set but Redis is not usable (this instance runs on local state).",
        )
        self.cluster_errors = self.counter(
            p + "cluster_errors_total",
            "Redis operations that failed or timed out (each one degrades the instance to local state).",
            ["op"],
        )
        self.cluster_transitions = self.counter(
            p + "cluster_transitions_total", "Switches between shared and local (degraded) state.", ["to"]
        )
        self.cluster_control = self.counter(
            p + "cluster_control_messages_total",
            "Control messages between instances (forwarded status callbacks, hang-ups, transfers).",
            ["direction", "type"],
        )
        self.speech_worker_restarts = self.counter(
            p + "speech_worker_restarts_total",
            "Speech-recognition worker processes that died or were killed mid-run and were replaced, "
            "by reason (died: crashed or killed from outside; wedged: no answer in time).",
            ["reason"],
        )
        self.speech_turns_failed = self.counter(
            p + "speech_turns_failed_total",
            "Caller turns whose recognition failed because their speech worker died or was restarted.",
        )
        self.speech_turns_rerun = self.counter(
            p + "speech_turns_rerun_total",
            "Caller turns whose speech worker died mid-turn, recognised again at once on a live worker.",
        )


METRICS = BridgeMetrics()


def render() -> str:
    """The process-wide metrics in Prometheus text format."""
    return METRICS.render()
