"""``CrmConnector``: one CRM activity per call, whatever order and how often events arrive.

A CRM plugin subclasses it and implements the adapter methods (search people, create/update an
activity, find one by its marker); the lifecycle, idempotency, matching and owner mapping live
here, once. Per call the connector keeps one ``links`` entry (``call:<integration>:<call id>``):
the merged ``Facts`` of each activity, the CRM record id, and what was last written.

Idempotency, in order of defence:
1. deliveries of one call run one at a time (the dispatcher's ordering key), so two events of a
   call never race;
2. the CRM id is written to ``links`` right after the create, and later events update it;
3. an *intent* is written to ``links`` just before the create; if the process dies between the
   create and step 2, the next attempt sees the intent and looks for its own record by the marker
   it wrote (``relay.crm.content.marker``) before it would create another. Without an intent no
   create can have happened, so no search is spent;
4. every write is rendered from the merged snapshot and skipped when its fingerprint equals the
   last one written: duplicates and stale events write nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

import msgspec

from relay.connector import Connector, ConnectorContext, DeliveryContext
from relay.crm.content import Activity, build_activity
from relay.crm.facts import EXTERNAL, Facts, merge, sources, wanted
from relay.crm.http import CrmHttp
from relay.crm.options import CrmConfig
from relay.crm.owners import OwnerMapper
from relay.crm.phones import Person, PhoneMatcher, pick, to_e164
from relay.errors import AuthError, DeliveryError, PermanentError, RetryableError
from relay.wildix import Event

T = TypeVar("T")


class ActivityState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One activity's entry in the call's link: what is known, what exists, what was written."""

    facts: Facts
    id: str | None = None  # the CRM record id, once created
    intent: float | None = None  # epoch seconds: a create was sent and its outcome not recorded
    sent: str | None = None  # fingerprint of the last write
    person: Person | None = None
    person_intent: float | None = None
    owner: str | None = None
    skipped: str | None = None  # why this call is not logged (internal, no match)


class CallLink(msgspec.Struct, kw_only=True):
    acts: dict[str, ActivityState] = {}


class CrmConnector(CrmHttp, Connector):
    """Base class of CRM call-logging connectors (HubSpot, Pipedrive, and third-party ones)."""

    Config: ClassVar[type[CrmConfig]] = CrmConfig
    config: CrmConfig
    # False: a record cannot be changed once created (Pipedrive's call logs); it is then created
    # once, from the final data (``create_at: record``) or at the live end (``create_at: end``).
    updates: ClassVar[bool] = True
    # one record per call, rendered from the merged snapshot: a newer state of the call makes
    # an older pending delivery pointless (the queue marks it superseded)
    coalesce_calls = True

    def __init__(self, name: str, config: CrmConfig) -> None:
        super().__init__(name, config)
        self.matcher = PhoneMatcher(config.match_cache_ttl)
        self.owners = OwnerMapper(
            config.owners,
            config.default_owner,
            lookup=config.owner_lookup,
            ttl=config.match_cache_ttl,
        )

    # -- the CRM adapter: what a CRM plugin implements -------------------------------------------

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[Person]:
        """Candidates for an E.164 number (broad is fine: matches are confirmed locally)."""
        raise NotImplementedError(f"{type(self).__name__} must implement search_people()")

    async def create_person(self, number: str, facts: Facts, ctx: ConnectorContext) -> Person:
        """For ``on_no_match: create_contact``."""
        raise PermanentError(f"{self.vendor} connector cannot create contacts")

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        """The CRM user id for a Wildix user's email (owner lookup); None if unknown."""
        return None

    async def create_activity(self, activity: Activity, ctx: DeliveryContext) -> str:
        """Create the CRM record; return its id (written to links at once)."""
        raise NotImplementedError(f"{type(self).__name__} must implement create_activity()")

    async def update_activity(
        self, record_id: str, activity: Activity, ctx: DeliveryContext
    ) -> None:
        """Only called when ``updates`` is True; a CRM that cannot update keeps this."""
        raise PermanentError(f"{self.vendor} connector cannot update a record")

    async def find_activity(self, activity: Activity, ctx: DeliveryContext) -> str | None:
        """The id of a record carrying ``activity.marker``, if one exists (crash recovery)."""
        return None

    def fingerprint(self, activity: Activity, *, create: bool = False) -> str:
        """What a write is compared by (equal: skipped); ``create``: what the create wrote. A CRM
        whose writes do more than the content adds that here (Dynamics completes the phone call
        with the final data, which its create cannot do: an update follows it)."""
        return activity.fingerprint()

    def skip_reason(self, facts: Facts) -> str | None:
        """Why a call ready to be created is not logged at all (a CRM's own option, such as which
        calls open a ticket); None logs it. Decided once, before the create."""
        return None

    # -- the lifecycle ---------------------------------------------------------------------------

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:  # type: ignore[override]
        call = event.call
        if call is None:
            return
        key = f"call:{event.integration_id}:{call.id}"
        stored = await ctx.links.get(key)
        link = msgspec.convert(stored, CallLink) if stored else CallLink()
        pairs = sources(call, self.config.per_leg)
        if not pairs and self.config.per_leg:  # the live end names no legs: it ends them all
            pairs = [(k, None) for k in link.acts]
        for act_key, leg in pairs:
            state = link.acts.get(act_key)
            if state is None:
                facts = Facts(call_id=call.id, leg=leg.index if leg is not None else None)
                state = link.acts[act_key] = ActivityState(facts=facts)
            state.facts = merge(state.facts, call, leg, event.time)
            await self._advance(event, ctx, key, link, state)
        if msgspec.to_builtins(link) != stored:
            await self._save(ctx, key, link)

    async def _save(self, ctx: DeliveryContext, key: str, link: CallLink) -> None:
        await ctx.links.set(key, msgspec.to_builtins(link))

    def _ready_to_create(self, facts: Facts) -> bool:
        """``create_at``: at the first routed event, once the call has ended, or from the data
        nothing better will follow (the final record, a legacy end)."""
        at = self.config.create_at
        return at == "start" or (facts.ended and (at == "end" or facts.final))

    async def _advance(
        self, event: Event, ctx: DeliveryContext, key: str, link: CallLink, state: ActivityState
    ) -> None:
        """Bring the CRM record of one activity up to date with its merged facts."""
        if state.skipped:
            return
        want = wanted(state.facts, self.config.log_internal)
        if want is None:
            return  # direction not known yet: a later event will tell
        if not want:
            state.skipped = "internal call"
            return
        if state.id is None:
            if not self._ready_to_create(state.facts):
                return
            state.skipped = self.skip_reason(state.facts)
            if state.skipped:
                return
            await self._create(event, ctx, key, link, state)
            if state.id is None or not self.updates:
                return
        elif not self.updates:
            return
        activity = self._activity(event, state)
        fingerprint = self.fingerprint(activity)
        if fingerprint != state.sent:
            await self.update_activity(state.id, activity, ctx)
            state.sent = fingerprint

    async def _create(
        self, event: Event, ctx: DeliveryContext, key: str, link: CallLink, state: ActivityState
    ) -> None:
        if state.person is None:
            person = await self._match(ctx, key, link, state)
            if state.skipped:
                return
            state.person = person
        if state.owner is None:
            state.owner = await self._owner(state, ctx)
        activity = self._activity(event, state)
        state.id = await self._once(
            ctx,
            key,
            link,
            state,
            "intent",
            find=lambda: self.find_activity(activity, ctx),
            create=lambda: self.create_activity(activity, ctx),
        )
        state.sent = self.fingerprint(activity, create=True) if state.sent is None else state.sent
        await self._save(ctx, key, link)  # right after the create: the id is what matters most

    async def _once(
        self,
        ctx: DeliveryContext,
        key: str,
        link: CallLink,
        state: ActivityState,
        intent_field: str,
        *,
        find: Callable[[], Awaitable[T | None]],
        create: Callable[[], Awaitable[T]],
    ) -> T:
        """Create exactly once across crashes: an intent in links first, a marker search after."""
        since = getattr(state, intent_field)
        if since is not None:  # an earlier attempt sent a create and did not record the outcome
            found = await find()
            if found is not None:
                setattr(state, intent_field, None)
                if intent_field == "intent":
                    state.sent = ""  # what that attempt wrote is unknown: update it once
                return found
            wait = since + self.config.index_lag - time.time()
            if wait > 0:  # the CRM's search may not show a record that new yet
                raise RetryableError(
                    f"{self.vendor}: an earlier attempt may have created this record; "
                    f"searching again in {wait:.0f}s before creating it",
                    retry_after=wait,
                )
        setattr(state, intent_field, time.time())
        await self._save(ctx, key, link)
        try:
            created = await create()
        except DeliveryError as exc:
            if exc.status_code is not None and exc.status_code < 500:
                # the CRM answered with a refusal (4xx, 429): nothing was created, so the next
                # attempt need not search for it
                setattr(state, intent_field, None)
                await self._save(ctx, key, link)
            raise
        setattr(state, intent_field, None)
        return created

    async def _match(
        self, ctx: DeliveryContext, key: str, link: CallLink, state: ActivityState
    ) -> Person | None:
        facts = state.facts
        region = self.config.default_region
        external = facts.direction in EXTERNAL
        number = to_e164(facts.remote_number, region) if external else None
        if number is None:
            if external and self.config.on_no_match == "skip":
                state.skipped = "no usable remote number"
            return None

        async def search(n: str) -> list[Person]:
            return await self.search_people(n, ctx)

        person = await self.matcher.match(number, search, region)
        if person is not None or not external:
            return person
        if self.config.on_no_match == "skip":
            state.skipped = f"no contact matches {number}"
            return None
        if self.config.on_no_match == "log_unlinked":
            return None

        async def find_created() -> Person | None:
            return pick(number, await self.search_people(number, ctx), region)

        created = await self._once(
            ctx,
            key,
            link,
            state,
            "person_intent",
            find=find_created,
            create=lambda: self.create_person(number, facts, ctx),
        )
        self.matcher.remember(number, created)
        state.person = created
        await self._save(ctx, key, link)
        return created

    async def _owner(self, state: ActivityState, ctx: DeliveryContext) -> str | None:
        async def find(email: str) -> str | None:
            try:
                return await self.find_user(email, ctx)
            except (PermanentError, AuthError) as exc:
                # e.g. a missing scope (Zoho's is a 401): log the call without owner; credentials
                # rejected outright fail the record's own request next, which holds the connector
                ctx.log.warning("owner lookup failed, using the default owner: %s", exc)
                return None

        return await self.owners.owner_for(state.facts.local, find)

    def _activity(self, event: Event, state: ActivityState) -> Activity:
        return build_activity(
            state.facts,
            title=self.config.title,
            notes=self.config.notes,
            recording_url=self.config.recording_url,
            integration_id=event.integration_id,
            person=state.person,
            owner=state.owner,
        )
