"""The states a delivery moves through: the one spelling the queue, the retry policy, the admin
API, the dashboard and the metrics share.

    pending ──claim──▶ running ──▶ succeeded
       ▲                  │  └───▶ dead       (permanent error, or attempts used up)
       └──── retry ───────┘
    pending ──a newer state of its call is pending too──▶ superseded   (coalescing connectors)
    pending / dead ──cancel──▶ cancelled
    dead / cancelled / superseded ──retry (by hand)──▶ pending
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"
    # a coalescing connector got a newer state of the call instead: neither failed nor lost
    SUPERSEDED = "superseded"


# Active deliveries hold back later ones with the same ordering key.
ACTIVE: tuple[DeliveryState, ...] = (DeliveryState.PENDING, DeliveryState.RUNNING)
# Ended: nothing more happens to them unless an operator retries them.
ENDED: tuple[DeliveryState, ...] = (
    DeliveryState.SUCCEEDED,
    DeliveryState.DEAD,
    DeliveryState.CANCELLED,
    DeliveryState.SUPERSEDED,
)

# What coalescing (``Connector.coalesce_calls``) compares, by event type; the queue's
# ``supersede`` statement spells them from here. A final record carries the whole call, so it
# supersedes any live event of it, and a newer final record an older one; a live snapshot (the
# call as it stands, its flows with their own times) supersedes an older snapshot. Any other type
# never supersedes: the live end carries no numbers (only a final record supersedes it), and the
# legacy generation carries no times, so its first event's time is the call's start (none of its
# events may be left out).
COALESCE_TYPES: dict[str, tuple[str, ...]] = {
    "final": ("call:completed",),
    "snapshot": ("call:live:progress",),
    "live_end": ("call:live:completed",),
}


class OutcomeKind(StrEnum):
    """What one attempt came to, as the attempt history, the logs and the metrics name it."""

    SUCCEEDED = DeliveryState.SUCCEEDED.value
    RETRY = "retry"
    DEAD = DeliveryState.DEAD.value
    PAUSED = "paused"
    HELD = "held"  # failed while the connector's circuit was open: no attempt spent


# Outcomes that wait rather than fail: the queue refunds their attempt.
REFUNDED: frozenset[str] = frozenset({OutcomeKind.PAUSED, OutcomeKind.HELD})
