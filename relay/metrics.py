"""Prometheus metrics, defined once for every part of relay to increment.

Counters and histograms live in the process that does the work (ingest in ``relay serve``,
attempts wherever the dispatcher runs). Queue gauges are read from the database when scraped,
so every process reports the same backlog whichever one Prometheus asks.

Label values are bounded: integrations are the configured ones (anything else is ``unknown``,
so a scanner posting to random URLs cannot grow the series), connectors are configured names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.wildix.views import EVENT_TYPES

__all__ = [
    "ATTEMPT_SECONDS",
    "CIRCUIT_TRANSITIONS",
    "CONFIG_RELOADS",
    "DELIVERIES",
    "EVENTS",
    "INGEST_SECONDS",
    "QUEUE",
    "SQS_DELETED",
    "SQS_RECEIVED",
    "SQS_REJECTED",
    "config_loaded",
]

disable_created_metrics()  # *_created samples double the output and no dashboard reads them

EVENTS = Counter(
    "relay_events_received",
    "Inbound events by integration, event type and outcome "
    "(accepted, duplicate, rejected, unavailable)",
    ["integration", "type", "outcome"],
)
INGEST_SECONDS = Histogram(
    "relay_ingest_seconds",
    "Time to route and durably store one verified event",
    ["transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DELIVERIES = Counter(
    "relay_deliveries",
    "Delivery attempts by connector and outcome (succeeded, retry, dead, paused)",
    ["connector", "outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "relay_attempt_seconds",
    "Duration of one delivery attempt",
    ["connector"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# The process that moved a connector's circuit breaker counts it (relay.dispatch.circuit_breaker,
# and the admin API or CLI for a circuit opened or closed by hand).
CIRCUIT_TRANSITIONS = Counter(
    "relay_circuit_transitions",
    "Circuit breaker transitions by connector and the state entered (open, half_open, closed)",
    ["connector", "to"],
)
# The SQS source increments these: received when a message is read, deleted once its event is
# committed (or it is dropped as invalid under on_invalid: delete), rejected when it fails checks.
SQS_RECEIVED = Counter(
    "relay_sqs_messages_received", "SQS messages received, by integration", ["integration"]
)
SQS_DELETED = Counter(
    "relay_sqs_messages_deleted", "SQS messages deleted from the queue", ["integration"]
)
SQS_REJECTED = Counter(
    "relay_sqs_messages_rejected",
    "SQS messages refused (bad signature, not a Wildix envelope), by integration",
    ["integration"],
)

# The config in force (relay.live_config): when it was loaded, its version, and the reloads.
CONFIG_LOADED = Gauge(
    "relay_config_loaded_timestamp_seconds", "When the configuration in force was loaded"
)
CONFIG_INFO = Gauge(
    "relay_config_info", "The version of the configuration in force (always 1)", ["version"]
)
CONFIG_RELOADS = Counter(
    "relay_config_reloads",
    "Configuration reloads by result (loaded, unchanged, refused)",
    ["result"],
)


def config_loaded(version: str, at: datetime) -> None:
    CONFIG_LOADED.set(at.timestamp())
    CONFIG_INFO.clear()  # one series: the version in force, not every version ever loaded
    CONFIG_INFO.labels(version).set(1)


def integration_label(integration_id: str | None, known: Iterable[str]) -> str:
    return integration_id if integration_id and integration_id in known else "unknown"


def type_label(event_type: str) -> str:
    """A Wildix event type relay knows, else ``other``: a label never takes a value chosen by
    whoever sends (each distinct value is a series kept for the life of the process)."""
    return event_type if event_type in EVENT_TYPES else "other"


_ATTEMPT_SERIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_attempt(connector: str, outcome: str, duration_ms: int) -> None:
    """Count one attempt; the labelled series are looked up once, as this runs per delivery."""
    series = _ATTEMPT_SERIES.get((connector, outcome))
    if series is None:
        series = (DELIVERIES.labels(connector, outcome), ATTEMPT_SECONDS.labels(connector))
        _ATTEMPT_SERIES[(connector, outcome)] = series
    series[0].inc()
    series[1].observe(duration_ms / 1000)


@dataclass(frozen=True)
class QueueSnapshot:
    at: datetime
    connectors: list[str]
    # Per connector, counted by the caller: the delivery states are the store's, above us.
    active: Mapping[str, int]  # deliveries pending or running
    dead: Mapping[str, int]
    oldest: Mapping[str, datetime]  # connector → created_at of its oldest unfinished delivery
    circuits: Mapping[str, str] = field(default_factory=dict)  # connector → its circuit's state


CIRCUIT_STATES = ("closed", "open", "half_open")


LABELS = ["connector"]


class QueueCollector(Collector):
    """Gauges from the last database snapshot; the /metrics handler refreshes it per scrape."""

    def __init__(self) -> None:
        self.snapshot: QueueSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:  # a process that does not serve /metrics (a worker's own exporter)
            return
        depth = GaugeMetricFamily(
            "relay_queue_depth", "Deliveries pending or running, per connector", labels=LABELS
        )
        oldest = GaugeMetricFamily(
            "relay_oldest_pending_seconds",
            "Age of the oldest pending or running delivery, per connector (0 when none)",
            labels=LABELS,
        )
        dead = GaugeMetricFamily(
            "relay_dead_deliveries", "Dead deliveries awaiting a human", labels=LABELS
        )
        names = sorted(set(snap.connectors) | set(snap.active) | set(snap.dead))
        for name in names:
            depth.add_metric([name], snap.active.get(name, 0))
            since = snap.oldest.get(name)
            oldest.add_metric([name], (snap.at - since).total_seconds() if since else 0.0)
            dead.add_metric([name], snap.dead.get(name, 0))
        circuit = GaugeMetricFamily(
            "relay_circuit_state",
            "1 for the state each connector's circuit breaker is in (closed, open, half_open)",
            labels=["connector", "state"],
        )
        for name in names:
            now = snap.circuits.get(name, "closed")
            for state in CIRCUIT_STATES:
                circuit.add_metric([name, state], 1.0 if state == now else 0.0)
        yield from (depth, oldest, dead, circuit)

    def describe(self) -> Iterator[Metric]:
        return iter(())


QUEUE = QueueCollector()
REGISTRY.register(QUEUE)


class IncidentCollector(Collector):
    """Open incidents by kind, from the /metrics handler's read of the store."""

    def __init__(self) -> None:
        self.snapshot: Mapping[str, int] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is None:
            return
        gauge = GaugeMetricFamily(
            "relay_open_incidents", "relay's own incidents open now, per kind", labels=["kind"]
        )
        for kind, n in sorted(self.snapshot.items()):
            gauge.add_metric([kind], n)
        yield gauge

    def describe(self) -> Iterator[Metric]:
        return iter(())


INCIDENTS = IncidentCollector()
REGISTRY.register(INCIDENTS)
