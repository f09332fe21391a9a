"""Connector instances: what the dispatcher and ``check-config --online`` run connectors with."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx

from relay.config import ConfigError, ConnectorInstance, DeliveryPolicy, Settings
from relay.connector import Connector, ConnectorContext, DeliveryContext, Limiters
from relay.store.queue import Claim
from relay.store.records import Store

log = logging.getLogger("relay.dispatch")


class Connectors:
    """The live connector instances of one process, with the facilities they share."""

    def __init__(self, settings: Settings, store: Store, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.limiters = Limiters(store)  # cluster-wide on PostgreSQL
        self.instances: dict[str, Connector] = {
            name: inst.cls(name, inst.options) for name, inst in settings.connectors.items()
        }
        self.policies: dict[str, DeliveryPolicy] = {
            name: inst.policy for name, inst in settings.connectors.items()
        }
        # Each connector's long-lived context; a delivery's context is derived from it.
        self.contexts: dict[str, ConnectorContext] = {
            name: self.context(name, settings.connectors[name]) for name in self.instances
        }
        self._integration_names = {iid: i.name for iid, i in settings.integrations.items()}

    def context(self, name: str, inst: ConnectorInstance | None = None) -> ConnectorContext:
        inst = inst or self.settings.connectors[name]
        return ConnectorContext(
            name=name,
            http=self.http,
            store=self.store,
            limiters=self.limiters,
            rate_group=inst.rate_group,
        )

    def delivery_context(self, claim: Claim) -> DeliveryContext:
        return DeliveryContext(
            self.contexts[claim.connector],
            attempt=claim.attempt,
            delivery_id=claim.delivery_id,
            event_id=claim.event_id,
            integration_id=claim.integration_id,
            integration_name=self._integration_names.get(claim.integration_id),
        )

    async def start(self) -> None:
        await _start(self.instances, self.contexts)

    async def close(self) -> None:
        await close_all(self.instances)

    async def apply(self, settings: Settings) -> Changes:
        """Start the connectors a reloaded config adds or changes, then swap them in.

        A connector that cannot be built raises :class:`ConfigError`, before anything changed.
        Every mapping is replaced whole, never edited: a claim round iterating the old ones
        finishes over them. The instances this retires are returned, still open: their
        attempts in flight finish with them before the caller closes them.
        """
        old, new = self.settings.connectors, settings.connectors
        changes = Changes(
            added=[n for n in new if n not in old],
            removed=[n for n in old if n not in new],
            changed=[n for n in new if n in old and _differs(old[n], new[n])],
        )
        fresh: dict[str, Connector] = {}
        for n in (*changes.added, *changes.changed):
            try:
                fresh[n] = new[n].cls(n, new[n].options)
            except Exception as exc:  # nothing swapped yet: the reload is refused whole
                raise ConfigError(f"$.connectors.{n}", f"cannot be set up: {exc}") from exc
        contexts = {n: self.context(n, new[n]) for n in fresh}
        await _start(fresh, contexts)
        changes.retired = {n: self.instances[n] for n in (*changes.removed, *changes.changed)}
        self.instances = {n: fresh.get(n) or self.instances[n] for n in new}
        self.contexts = {n: contexts.get(n) or self.contexts[n] for n in new}
        self.policies = {n: inst.policy for n, inst in new.items()}
        self._integration_names = {iid: i.name for iid, i in settings.integrations.items()}
        self.settings = settings
        return changes


@dataclass
class Changes:
    """Connector names a reload added, removed and changed; the instances it retired."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    retired: dict[str, Connector] = field(default_factory=dict)


def _differs(a: ConnectorInstance, b: ConnectorInstance) -> bool:
    return (a.type, a.raw, a.policy, a.rate_group) != (b.type, b.raw, b.policy, b.rate_group)


async def _start(instances: dict[str, Connector], contexts: dict[str, ConnectorContext]) -> None:
    for name, connector in instances.items():
        try:
            await connector.start(contexts[name])
        except Exception:  # its deliveries will fail and retry; the others must still run
            log.exception("connector failed to start", extra={"connector": name})


async def close_all(instances: dict[str, Connector]) -> None:
    for name, connector in instances.items():
        try:
            await connector.close()
        except Exception:
            log.exception("connector failed to close", extra={"connector": name})
