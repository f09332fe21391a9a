"""Tables. Retry state lives on the delivery row (the procrastinate way); attempts are history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from relay.store.states import DeliveryState

# Autoincrement must be INTEGER PRIMARY KEY on SQLite to be a rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("integration_id", "body_sha256"),
        Index(None, "call_id"),
        Index(None, "integration_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    integration_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(100))
    subject_id: Mapped[str] = mapped_column(String(255))
    call_id: Mapped[str | None] = mapped_column(String(255))
    body_sha256: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    transport: Mapped[str] = mapped_column(String(16))
    transport_meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        # the claim walks this index in due order and stops at its limit
        Index(None, "state", "connector", "next_attempt_at", "id"),
        Index(None, "ordering_key", "id"),
        Index(None, "event_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    integration_id: Mapped[str] = mapped_column(String(64))
    connector: Mapped[str] = mapped_column(String(100))
    ordering_key: Mapped[str] = mapped_column(String(500))
    # a DeliveryState (relay.store.states has its diagram)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class AttemptRow(Base):
    __tablename__ = "attempts"
    # the dashboard's charts read a time window of attempts from this index alone
    __table_args__ = (
        Index(None, "delivery_id"),
        Index(None, "started_at", "delivery_id", "outcome", "duration_ms"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    duration_ms: Mapped[int] = mapped_column(Integer)
    # succeeded | retry | dead | paused
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(100))


class ManualRetryRow(Base):
    """An operator's retry: a dead delivery's budget starts afresh, its attempt numbers do not.

    Attempts recorded after it (id above ``after_attempt_id``) are numbered from
    ``number_base`` on (the queue counts the fresh budget from 1)."""

    __tablename__ = "manual_retries"
    __table_args__ = (Index(None, "delivery_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    requested_at: Mapped[datetime]
    requested_by: Mapped[str | None] = mapped_column(String(100))
    after_attempt_id: Mapped[int | None] = mapped_column(BigId)
    number_base: Mapped[int] = mapped_column(Integer)


class LinkRow(Base):
    """A connector's durable map, e.g. Wildix call id → CRM record id."""

    __tablename__ = "links"

    connector: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class ConnectorStateRow(Base):
    """Per connector: its own state (OAuth tokens...) and a pause for quota exhaustion."""

    __tablename__ = "connector_state"

    connector: Mapped[str] = mapped_column(String(100), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    paused_until: Mapped[datetime | None]
    pause_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class CircuitRow(Base):
    """Per connector: its circuit breaker, shared by every process (relay.store.circuits)."""

    __tablename__ = "circuits"

    connector: Mapped[str] = mapped_column(String(100), primary_key=True)
    # closed | open | half_open (relay.store.circuits.CircuitState)
    state: Mapped[str] = mapped_column(String(16))
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive, blaming the target
    cool_down: Mapped[float] = mapped_column(Float, default=0.0)  # seconds, the current one
    opened_at: Mapped[datetime | None]
    probe_at: Mapped[datetime | None]  # when the next probe may go (open)
    probe_by: Mapped[str | None] = mapped_column(String(100))
    probe_until: Mapped[datetime | None]  # the probe slot's lease (half_open)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)  # opened by hand: no probes
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class CircuitTransitionRow(Base):
    """A circuit's history: each change of state, and each probe sent."""

    __tablename__ = "circuit_transitions"
    __table_args__ = (Index(None, "connector", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connector: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(100))


class RejectionRow(Base):
    """An inbound request or message we refused, kept for inspection (never the secret)."""

    __tablename__ = "rejections"
    __table_args__ = (Index(None, "received_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime]
    transport: Mapped[str] = mapped_column(String(16))
    integration_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(255))
    status_code: Mapped[int | None] = mapped_column(Integer)
    remote: Mapped[str | None] = mapped_column(String(255))
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    body_excerpt: Mapped[bytes | None] = mapped_column(LargeBinary)
    transport_meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EventNumberRow(Base):
    """Phone numbers an event mentions (digits only), for search and data-subject erasure."""

    __tablename__ = "event_numbers"
    __table_args__ = (Index(None, "event_id"),)

    number: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )


class RateBucketRow(Base):
    """A token bucket shared by every process on PostgreSQL (relay.store.sql/rate.*.sql): when
    its next token is due, as the database's clock in epoch seconds (GCRA's theoretical arrival
    time). SQLite's single process keeps its buckets in memory and leaves this table empty."""

    __tablename__ = "rate_buckets"

    connector: Mapped[str] = mapped_column(String(100), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(255), primary_key=True)
    tat: Mapped[float] = mapped_column(Double())


class IncidentRow(Base):
    """Something wrong with relay itself (relay.store.incidents): opened once, resolved when its
    condition clears. At most one open incident per (kind, subject): the partial unique index is
    what keeps several processes of a cluster from opening it twice."""

    __tablename__ = "incidents"
    __table_args__ = (
        Index(
            "uq_incidents_open",
            "kind",
            "subject",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index(None, "opened_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    summary: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


events = EventRow.__table__
deliveries = DeliveryRow.__table__
attempts = AttemptRow.__table__
manual_retries = ManualRetryRow.__table__
links = LinkRow.__table__
connector_state = ConnectorStateRow.__table__
rejections = RejectionRow.__table__
circuits = CircuitRow.__table__
circuit_transitions = CircuitTransitionRow.__table__
event_numbers = EventNumberRow.__table__
rate_buckets = RateBucketRow.__table__
incidents = IncidentRow.__table__


def utcnow() -> datetime:
    return datetime.now(UTC)
