"""The connector contract and the context every connector receives.

A connector is a class with a ``type`` name, a ``Config`` struct for its YAML block and an async
``deliver(event, ctx)``. The context carries what every connector needs so none reinvents it:
the shared HTTP client, a logger bound to the delivery, durable ``links`` and ``state``, a
sandboxed template renderer and per-account rate limiters.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import msgspec
from aiolimiter import AsyncLimiter

from relay import templates
from relay.errors import raise_for_response
from relay.store.backend import SharedBuckets

if TYPE_CHECKING:
    from relay.store.records import Store
    from relay.wildix import Event


class ConnectorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for a connector's YAML block; unknown keys are rejected with their path."""


class Connector(ABC):
    type: ClassVar[str]
    Config: ClassVar[type[ConnectorConfig]] = ConnectorConfig
    # True when only a call's newest state matters to this connector (a CRM record, a card that
    # is edited in place): pending deliveries of a call that a newer pending one makes pointless
    # are then marked ``superseded`` instead of sent (relay.store.states.COALESCE_TYPES says what
    # is newer). False (the default) sends every event of a call, in order.
    coalesce_calls: bool = False

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    async def start(self, ctx: ConnectorContext) -> None:  # noqa: B027 - optional hook
        """Called once per process before the first delivery."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown."""

    async def check(self, ctx: ConnectorContext) -> None:  # noqa: B027 - optional hook
        """Verify credentials/reachability (``relay check-config --online``); raise to fail."""

    @abstractmethod
    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        """Deliver one event; the outcome contract is in relay.errors."""


class _Bound(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class Links:
    """A durable map per connector, e.g. Wildix call id → CRM record id."""

    def __init__(self, store: Store, connector: str) -> None:
        self._store, self._connector = store, connector

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self._store.get_link(self._connector, key)
        return default if value is None else value

    async def set(self, key: str, value: Any) -> None:
        await self._store.set_link(self._connector, key, value)

    async def delete(self, key: str) -> None:
        await self._store.delete_link(self._connector, key)


class State:
    """A connector's own durable state (an OAuth token and its expiry, a cursor...)."""

    def __init__(self, store: Store, connector: str) -> None:
        self._store, self._connector = store, connector

    async def get(self) -> dict[str, Any]:
        return await self._store.get_state(self._connector)

    async def set(self, value: dict[str, Any]) -> None:
        await self._store.set_state(self._connector, value)

    async def update(self, **changes: Any) -> dict[str, Any]:
        value = await self.get() | changes
        await self.set(value)
        return value


class SharedLimiter:
    """``async with`` it to take a token of a bucket every process of the cluster shares.

    The database says how long to wait for the token (one statement per take); waiting happens
    here. The bucket is ``rate`` tokens per ``period``: evenly spaced, with at most ``rate`` at
    once, as aiolimiter's ``AsyncLimiter(rate, period)`` is in one process.
    """

    def __init__(
        self, buckets: SharedBuckets, connector: str, key: str, rate: float, period: float
    ) -> None:
        self._take = buckets.take_token
        self.connector, self.key = connector, key
        self.interval = period / rate  # seconds between two tokens
        self.burst = max(int(rate), 1)

    async def acquire(self) -> None:
        wait = await self._take(self.connector, self.key, self.interval, self.burst)
        if wait > 0:
            await asyncio.sleep(wait)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None


Limiter = AsyncLimiter | SharedLimiter


class Limiters:
    """Token buckets keyed by connector and account/endpoint/channel: in the database when the
    store shares them between processes (PostgreSQL), else in this process (SQLite, tests)."""

    def __init__(self, store: Store | None = None) -> None:
        backend = store.backend if store is not None else None
        self._shared = backend if isinstance(backend, SharedBuckets) else None
        self._buckets: dict[tuple[str, str], Limiter] = {}

    def get(self, connector: str, key: str, rate: float, period: float) -> Limiter:
        if rate <= 0 or period <= 0:
            raise ValueError(f"a rate limit needs a positive rate and period, not {rate}/{period}")
        key = _bucket_key(key)
        found = self._buckets.get((connector, key))  # the first rate asked for a key holds
        if found is None:
            found = (
                SharedLimiter(self._shared, connector, key, rate, period)
                if self._shared is not None
                else AsyncLimiter(rate, period)
            )
            self._buckets[(connector, key)] = found
        return found


def _bucket_key(key: str) -> str:
    """At most 255 characters (the database column): a longer key, e.g. made of something a
    remote service answered, is replaced by its digest."""
    if len(key) <= 255:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class ConnectorContext:
    def __init__(
        self,
        *,
        name: str,
        http: httpx.AsyncClient,
        store: Store,
        limiters: Limiters,
        log: logging.LoggerAdapter | None = None,  # type: ignore[type-arg]
        rate_group: str | None = None,
    ) -> None:
        self.name = name
        self.http = http
        self.state = State(store, name)
        self.links = Links(store, name)
        self.log = log or _Bound(logging.getLogger(f"relay.connector.{name}"), {"connector": name})
        self._limiters = limiters
        self._buckets_of = rate_group or name  # connectors of one `rate_group` share buckets

    def limiter(self, key: str, rate: float, period: float = 1.0) -> Limiter:
        """``async with ctx.limiter("search", 5): ...`` — at most 5 per second, per connector (or
        its ``rate_group``) and key, for the whole cluster on PostgreSQL (every process takes from
        one bucket)."""
        return self._limiters.get(self._buckets_of, key, rate, period)

    def render(self, source: str, /, *, html: bool = False, **context: Any) -> str:
        return templates.render(source, html=html, **context)


class DeliveryContext(ConnectorContext):
    """One attempt's context: its connector's long-lived context plus the delivery's ids.

    Made once per attempt, so it holds a reference to the connector's context and forwards what
    connectors read to it (anything a connector put on that context in ``start()`` included)
    instead of copying it; the bound logger is made only when a connector logs.
    """

    attempt: int
    delivery_id: int
    event_id: int
    integration_id: str
    integration_name: str | None
    status_code: int | None

    def __init__(
        self,
        context: ConnectorContext | None = None,
        /,
        *,
        attempt: int,
        delivery_id: int,
        event_id: int,
        integration_id: str,
        integration_name: str | None,
        **kwargs: Any,
    ) -> None:
        """``context`` is the connector's own; without one, ``kwargs`` build it (in tests)."""
        # The base class's __init__ is not called: its attributes are read from ``context``.
        self.context = context if context is not None else ConnectorContext(**kwargs)
        self.attempt = attempt
        self.delivery_id = delivery_id
        self.event_id = event_id
        self.integration_id = integration_id
        self.integration_name = integration_name
        self.status_code = None
        self._log: logging.LoggerAdapter | None = None  # type: ignore[type-arg]

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.context.name

    @property
    def http(self) -> httpx.AsyncClient:  # type: ignore[override]
        return self.context.http

    @property
    def state(self) -> State:  # type: ignore[override]
        return self.context.state

    @property
    def links(self) -> Links:  # type: ignore[override]
        return self.context.links

    def __getattr__(self, attr: str) -> Any:
        """Whatever else a connector keeps on its context, e.g. a client made in ``start()``."""
        if attr == "context":  # not set yet: no recursion through the lookup below
            raise AttributeError(attr)
        return getattr(self.context, attr)

    def limiter(self, key: str, rate: float, period: float = 1.0) -> Limiter:
        return self.context.limiter(key, rate, period)

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg, override]
        """The connector's logger with this delivery's ids on every line."""
        bound = self._log
        if bound is None:
            bound = self._log = _Bound(self.context.log.logger, self.log_fields())
        return bound

    @log.setter
    def log(self, value: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self._log = value

    def log_fields(self) -> dict[str, Any]:
        """The ids every log line about this delivery carries."""
        return {
            "connector": self.name,
            "delivery_id": self.delivery_id,
            "event_id": self.event_id,
            "integration": self.integration_id,
            "attempt": self.attempt,
        }

    def check_response(self, response: httpx.Response, what: str = "") -> httpx.Response:
        """Record the status for the attempt history, then apply the outcome contract."""
        self.status_code = response.status_code
        return raise_for_response(response, what)
