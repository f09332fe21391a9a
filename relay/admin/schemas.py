"""What the admin API, the dashboard and the CLI show: plain msgspec structs.

Queries return these directly, so the API's OpenAPI schema, the dashboard's templates and the
CLI's ``--json`` output describe one shape. None of them carries a secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from relay.store.states import DeliveryState

# The enum itself is the API's type: the OpenAPI schema lists its values as one component.
STATES: tuple[DeliveryState, ...] = tuple(DeliveryState)

_Id = Annotated[int, msgspec.Meta(ge=1)]


class Out(msgspec.Struct, kw_only=True):
    pass


class EventSummary(Out):
    id: int
    integration_id: str
    type: str
    call_id: str | None
    subject_id: str
    occurred_at: datetime
    received_at: datetime
    transport: str
    delivery_states: dict[str, int]  # state → count of its deliveries


class Attempt(Out):
    number: int
    started_at: datetime
    duration_ms: int
    outcome: str  # succeeded | retry | dead | paused
    status_code: int | None
    error: str | None
    worker: str | None


class ManualRetry(Out):
    """An operator's retry: the delivery's budget started afresh there, its numbering did not."""

    requested_at: datetime
    requested_by: str | None  # dashboard, API, CLI (user); None for retries before this was kept
    after_attempts: int  # how many of ``history`` came before it


class Delivery(Out):
    id: int
    event_id: int
    integration_id: str
    connector: str
    state: DeliveryState
    attempts: int  # all attempts so far, manual retries included
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    event_type: str
    call_id: str | None
    history: list[Attempt] | None = None  # filled for a single delivery or an event's detail
    manual_retries: list[ManualRetry] | None = None  # filled with ``history``


class EventDetail(EventSummary):
    raw: Any  # the body as Wildix sent it (JSON), or its text if it is not JSON
    normalized: dict[str, Any]  # the normalized view connectors read (call / presence / sms)
    numbers: list[str]  # phone numbers found in it (digits only)
    deliveries: list[Delivery]


class Rejection(Out):
    id: int
    received_at: datetime
    transport: str
    integration_id: str | None
    reason: str
    status_code: int | None
    remote: str | None
    body_excerpt: str | None  # the start of the body, as text
    body_size: int | None = None  # bytes the client sent (rows recorded before it: unknown)


class EventPage(Out):
    items: list[EventSummary]
    next_cursor: str | None


class DeliveryPage(Out):
    items: list[Delivery]
    next_cursor: str | None


class RejectionPage(Out):
    items: list[Rejection]
    next_cursor: str | None


class Route(Out):
    connector: str
    events: list[str]
    where: dict[str, Any] | None


class Integration(Out):
    id: str
    name: str | None
    transport: str
    retention_seconds: float | None
    routes: list[Route]


class ConnectorStatus(Out):
    name: str
    type: str
    counts: dict[str, int]  # state → count
    oldest_pending_seconds: float | None
    last_error: str | None
    last_error_at: datetime | None
    paused_until: datetime | None
    pause_reason: str | None
    # False: a reload removed it; its deliveries wait, pending, until it is configured again.
    configured: bool = True


class ConfigVersion(Out):
    version: str  # the first 12 hex digits of the file's SHA-256
    loaded_at: datetime
    path: str


class IntegrationActivity(Out):
    id: str
    name: str | None
    last_hour: int
    last_day: int


class Overview(Out):
    generated_at: datetime
    integrations: list[IntegrationActivity]
    connectors: list[ConnectorStatus]
    rejections_last_day: int


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which stored events to deliver again; ``connector`` targets one connector, else routing."""

    event_id: _Id | None = None
    integration: str | None = None
    type: str | None = None  # glob, e.g. call:*
    call_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    connector: str | None = None
    dry_run: bool = False


class ReplayResult(Out):
    dry_run: bool
    events: int  # events matched by the filter
    deliveries: int  # deliveries created (or that would be)
    by_connector: dict[str, int]
    skipped: int  # events of integrations no longer configured, or that no route matches now


class Problem(Out):
    """An error the caller can act on."""

    detail: str


class Incident(Out):
    """One of relay's own incidents (relay.admin.watcher): opened once, resolved once."""

    id: int
    kind: str  # circuit_open, quota_paused, auth_revoked, dead_letters, sqs_consumer, store
    subject: str  # the connector (or integration) it is about
    summary: str
    state: str  # open | resolved
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
