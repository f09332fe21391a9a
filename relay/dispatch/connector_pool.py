"""Connector instances: what the dispatcher and ``check-config --online`` run connectors with."""

from __future__ import annotations

import logging

import httpx

from relay.config import DeliveryPolicy, Settings
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
            name: self.context(name) for name in self.instances
        }
        self._integration_names = {iid: i.name for iid, i in settings.integrations.items()}

    def context(self, name: str) -> ConnectorContext:
        return ConnectorContext(name=name, http=self.http, store=self.store, limiters=self.limiters)

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
        for name, connector in self.instances.items():
            try:
                await connector.start(self.contexts[name])
            except Exception:  # its deliveries will fail and retry; the others must still run
                log.exception("connector failed to start", extra={"connector": name})

    async def close(self) -> None:
        for name, connector in self.instances.items():
            try:
                await connector.close()
            except Exception:
                log.exception("connector failed to close", extra={"connector": name})
