"""The states a delivery moves through: the one spelling the queue, the retry policy, the admin
API, the dashboard and the metrics share.

    pending ──claim──▶ running ──▶ succeeded
       ▲                  │  └───▶ dead       (permanent error, or attempts used up)
       └──── retry ───────┘
    pending / dead ──cancel──▶ cancelled;  dead / cancelled ──retry (by hand)──▶ pending
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


# Active deliveries hold back later ones with the same ordering key.
ACTIVE: tuple[DeliveryState, ...] = (DeliveryState.PENDING, DeliveryState.RUNNING)
# Ended: nothing more happens to them unless an operator retries them.
ENDED: tuple[DeliveryState, ...] = (
    DeliveryState.SUCCEEDED,
    DeliveryState.DEAD,
    DeliveryState.CANCELLED,
)


class OutcomeKind(StrEnum):
    """What one attempt came to, as the attempt history, the logs and the metrics name it."""

    SUCCEEDED = DeliveryState.SUCCEEDED.value
    RETRY = "retry"
    DEAD = DeliveryState.DEAD.value
    PAUSED = "paused"
    HELD = "held"  # failed while the connector's circuit was open: no attempt spent


# Outcomes that wait rather than fail: the queue refunds their attempt.
REFUNDED: frozenset[str] = frozenset({OutcomeKind.PAUSED, OutcomeKind.HELD})
